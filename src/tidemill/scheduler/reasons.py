"""Why a job stays pending: stable codes and messages with numbers.

Codes are part of the public contract (``tidemill describe`` shows them, alerts match on
them); messages are for people and may be reworded. Every message is built from sorted
per-resource pieces, so the same situation always reads the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from tidemill.api.quantity import format_cpu, format_memory
from tidemill.scheduler.types import (
    JobRequest,
    Placement,
    PodRequest,
    Reason,
    Reclaim,
    Reservation,
    ResourceVector,
    RunningJob,
    usage,
)

RESOURCES = ("cpu", "gpu", "memory")
"""Resource names in the order messages list them; extended resources follow, by name."""


class Code(StrEnum):
    INSUFFICIENT_CPU = "InsufficientCPU"
    INSUFFICIENT_MEMORY = "InsufficientMemory"
    INSUFFICIENT_GPU = "InsufficientGPU"
    INSUFFICIENT_EXTENDED_RESOURCE = "InsufficientExtendedResource"
    GANG_DOES_NOT_FIT = "GangDoesNotFit"
    NO_NODE_LARGE_ENOUGH = "NoNodeLargeEnough"
    NO_MATCHING_GPU_MODEL = "NoMatchingGPUModel"
    QUEUE_AT_MAX = "QueueAtMax"
    UNKNOWN_QUEUE = "UnknownQueue"
    BLOCKED_BY_QUEUE_HEAD = "BlockedByQueueHead"
    INVALID_REQUEST = "InvalidRequest"
    TOPOLOGY_DOES_NOT_FIT = "TopologyDoesNotFit"
    TOPOLOGY_DOMAIN_TOO_SMALL = "TopologyDomainTooSmall"
    NO_TOPOLOGY_DOMAIN = "NoTopologyDomain"
    RESERVED = "Reserved"


_SHORT_OF = {
    "cpu": Code.INSUFFICIENT_CPU,
    "memory": Code.INSUFFICIENT_MEMORY,
    "gpu": Code.INSUFFICIENT_GPU,
}


@dataclass(frozen=True)
class Shortfall:
    """What stopped one pod: the resource it lacked and the most any node had free.

    ``best`` is whole free devices for whole-GPU pods and the largest free share of one
    device for shared pods. ``among`` names the resources the compared nodes did have
    enough of, when that narrowed the comparison.
    """

    pod: PodRequest
    resource: str
    best: float
    node: str
    among: tuple[str, ...] = ()


def amount(resource: str, value: float) -> str:
    """Render ``value`` of ``resource`` as people write it ("4 cpu", "32Gi memory",
    "2 rdma/hca")."""
    if resource == "cpu":
        return f"{format_cpu(round(value))} cpu"
    if resource == "memory":
        return f"{format_memory(round(value))} memory"
    if resource == "gpu":
        return f"{value:g} gpu"
    return f"{round(value)} {resource}"


def pieces(vector: ResourceVector) -> str:
    """The non-zero parts of ``vector``, sorted by resource ("4 cpu, 2 gpu")."""
    values = _by_resource(vector)
    parts = [amount(r, values[r]) for r in RESOURCES if values[r] > 0]
    return ", ".join(parts) if parts else "nothing"


def pod_pieces(pod: PodRequest) -> str:
    """What ``pod`` asks, extended resources included ("4 cpu, 2 gpu, 2 rdma/hca")."""
    base = pieces(pod.vector)
    extra = [amount(name, held) for name, held in sorted(pod.extended) if held > 0]
    if not extra:
        return base
    return ", ".join(extra) if base == "nothing" else ", ".join([base, *extra])


def pod_name(pod: PodRequest) -> str:
    return f"{pod.role}-{pod.index}"


def unknown_queue(job: JobRequest, known: Iterable[str]) -> Reason:
    names = ", ".join(sorted(known)) or "none"
    return Reason(
        Code.UNKNOWN_QUEUE.value,
        f"queue {job.queue!r} does not exist; known queues: {names}. "
        "Set spec.queue to one of them or add the queue to the cluster file",
    )


def queue_at_max(queue: str, over: Sequence[tuple[str, float, float]]) -> Reason:
    """``over`` holds (resource, what the queue would hold, its max) per exceeded resource."""
    ordered = sorted(over, key=lambda item: RESOURCES.index(item[0]))
    would = ", ".join(amount(r, after) for r, after, _ in ordered)
    limit = ", ".join(amount(r, most) for r, _, most in ordered)
    return Reason(Code.QUEUE_AT_MAX.value, f"queue {queue} would hold {would}; its max is {limit}")


def blocked_by_head(queue: str, head: str, head_reason: Reason) -> Reason:
    return Reason(
        Code.BLOCKED_BY_QUEUE_HEAD.value,
        f"queue {queue} admits jobs strictly in order and its head {head} is pending "
        f"({head_reason.code})",
    )


def no_required_pods(job: JobRequest) -> Reason:
    if not job.pods:
        message = "job has no pods; give at least one role at least one replica"
    else:
        message = (
            f"job has {len(job.pods)} optional pods and no required ones; "
            "an elastic role needs minReplicas of at least 1"
        )
    return Reason(Code.INVALID_REQUEST.value, message)


def invalid_request(pod: PodRequest, problem: str) -> Reason:
    return Reason(Code.INVALID_REQUEST.value, f"pod {pod_name(pod)} {problem}")


def no_matching_gpu_model(pod: PodRequest, offered: Mapping[str, int]) -> Reason:
    if offered:
        listed = ", ".join(
            f"{model} ({count} node{'s' if count != 1 else ''})"
            for model, count in sorted(offered.items())
        )
        offer = f"schedulable nodes offer {listed}"
    else:
        offer = "no schedulable node declares a gpu model"
    return Reason(
        Code.NO_MATCHING_GPU_MODEL.value,
        f"pod {pod_name(pod)} asks gpu model {pod.gpu_model}; {offer}",
    )


def no_node_large_enough(
    pod: PodRequest, largest: Sequence[tuple[str, float, str]], schedulable: int
) -> Reason:
    """``largest`` holds (resource, biggest node capacity, that node) per resource too big.

    Empty ``largest`` means every resource fits some node, just never all on one.
    """
    name = pod_name(pod)
    if schedulable == 0:
        message = f"pod {name} asks {pod_pieces(pod)}; no node is schedulable"
    elif largest:
        ordered = sorted(largest, key=lambda item: _listed(item[0]))
        message = "; ".join(
            f"pod {name} asks {amount(r, _value(pod, r))}; "
            f"the largest node has {amount(r, most)} ({node})"
            for r, most, node in ordered
        )
    else:
        message = (
            f"pod {name} asks {pod_pieces(pod)}; no single schedulable node has all of that at once"
        )
    return Reason(Code.NO_NODE_LARGE_ENOUGH.value, message)


def does_not_fit(job: JobRequest, placed: int, shortfall: Shortfall) -> Reason:
    """A gang that fits no current free space: which pod, which resource, by how much."""
    pod = shortfall.pod
    gang = job.gang
    wanted = _asked(pod, shortfall.resource)
    where = _largest_free(shortfall)
    if placed == 0:
        same = sum(
            1
            for p in gang
            if p.role == pod.role and p.vector == pod.vector and p.extended == pod.extended
        )
        plural = "s" if same != 1 else ""
        return Reason(
            _short_of(shortfall.resource).value,
            f"needs {same} {pod.role} pod{plural} x {wanted}; largest free block is {where}",
        )
    return Reason(
        Code.GANG_DOES_NOT_FIT.value,
        f"{placed} of {len(gang)} pods fit; pod {pod_name(pod)} needs {wanted}, "
        f"largest free block left is {where}",
    )


def cannot_grow(shortfall: Shortfall) -> Reason:
    """A running job's optional pod that found no idle room."""
    pod = shortfall.pod
    return Reason(
        _short_of(shortfall.resource).value,
        f"cannot add {pod_name(pod)}: it needs {_asked(pod, shortfall.resource)}; "
        f"largest free block is {_largest_free(shortfall)}",
    )


def with_preemption_note(reason: Reason, guarded: str | None = None) -> Reason:
    """Tell the reader preemption was tried, so they do not wait for it; ``guarded``
    names the queue whose guarantee it would have broken, when that was the obstacle."""
    if guarded is not None:
        return Reason(
            reason.code,
            f"{reason.message}; preempting lower-priority jobs would take queue {guarded} "
            "below its guarantee",
        )
    return Reason(
        reason.code,
        f"{reason.message}; preempting lower-priority jobs would not make room",
    )


def preemption_message(victim: RunningJob, preemptor: JobRequest) -> str:
    nodes = ", ".join(sorted({p.node for p in victim.placements})) or "no node"
    return (
        f"preempted for {preemptor.key} (priority {preemptor.priority} > {victim.priority}); "
        f"frees {pieces(victim.total)} on {nodes}"
    )


def shrink_message(job: RunningJob, removed: Sequence[Placement], preemptor: JobRequest) -> str:
    """What a shrink takes, per role, and for whom: the event the shrunk job shows."""
    return (
        f"shrunk {_shrunk(job, removed)} to make room for {preemptor.key} "
        f"(priority {preemptor.priority} > {job.priority})"
    )


def reserved(reason: Reason, reservation: Reservation, waited_s: float, bound_s: float) -> Reason:
    """A job that waited past its bound: what is held for it, where, and from when."""
    nodes = ", ".join(sorted({p.node for p in reservation.placements}))
    if reservation.due is None:
        start = (
            "its start is unknown: a job there has no activeDeadlineSeconds and its queue "
            "no runtimeEstimateSeconds"
        )
    else:
        start = f"expected to start at {timestamp(reservation.due)}"
    return Reason(
        Code.RESERVED.value,
        f"waited {duration(waited_s)}, past the {duration(bound_s)} bound: "
        f"{pieces(usage(reservation.placements))} held for it on {nodes} as it frees; "
        f"{start}; only jobs that end before then may use that room ({reason.message})",
    )


def with_reservation_note(reason: Reason, held: Sequence[Reservation]) -> Reason:
    """Tell the reader that free-looking room is held for jobs that waited too long."""
    jobs = ", ".join(r.job for r in held[:3]) + (
        f" and {len(held) - 3} more" if len(held) > 3 else ""
    )
    dues = [r.due for r in held if r.due is not None]
    if dues:
        rule = f"a job that ends by {timestamp(min(dues))} may use it"
    else:
        rule = "no job may use it until their start is known"
    return Reason(reason.code, f"{reason.message}; room reserved for {jobs} is left out ({rule})")


def reclaim_message(victim: RunningJob, preemptor: JobRequest, claim: Reclaim) -> str:
    """The event a job stopped to give a queue back its guarantee shows."""
    nodes = ", ".join(sorted({p.node for p in victim.placements})) or "no node"
    return (
        f"preempted for {preemptor.key}: {_guarantee(claim)}; "
        f"queue {victim.queue} is over its own; frees {pieces(victim.total)} on {nodes}"
    )


def reclaim_shrink_message(
    job: RunningJob, removed: Sequence[Placement], preemptor: JobRequest, claim: Reclaim
) -> str:
    """The event a job shrunk to give a queue back its guarantee shows."""
    return (
        f"shrunk {_shrunk(job, removed)} to make room for {preemptor.key}: "
        f"{_guarantee(claim)}; queue {job.queue} is over its own"
    )


def duration(seconds: float) -> str:
    """``seconds`` as people say it: "45s", "12m", "3h 5m", "326h"."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, hours = whole // 60 % 60, whole // 3600
    if hours == 0:
        return f"{minutes}m"
    return f"{hours}h {minutes}m" if minutes else f"{hours}h"


def timestamp(epoch_s: float) -> str:
    """An epoch time in UTC, to the second ("2026-12-04 15:00:00 UTC")."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _shrunk(job: RunningJob, removed: Sequence[Placement]) -> str:
    """Per role, its size before and after and the pods removed."""
    parts = []
    for role in sorted({p.role for p in removed}):
        names = [f"{p.role}-{p.index}" for p in removed if p.role == role]
        size = sum(1 for p in job.placements if p.role == role)
        parts.append(f"{role} {size}→{size - len(names)} (removes {', '.join(names)})")
    return ", ".join(parts)


def _guarantee(claim: Reclaim) -> str:
    return (
        f"queue {claim.queue} reclaims its guarantee of {pieces(claim.guaranteed)} "
        f"(it held {pieces(claim.held)})"
    )


def _short_of(resource: str) -> Code:
    return _SHORT_OF.get(resource, Code.INSUFFICIENT_EXTENDED_RESOURCE)


def _listed(resource: str) -> tuple[int, str]:
    """Sort key: cpu, gpu, memory, then extended resources by name."""
    if resource in RESOURCES:
        return RESOURCES.index(resource), ""
    return len(RESOURCES), resource


def _asked(pod: PodRequest, resource: str) -> str:
    text = amount(resource, _value(pod, resource))
    return f"{text} (shared)" if resource == "gpu" and 0 < pod.gpu < 1 else text


def _largest_free(shortfall: Shortfall) -> str:
    among = f" among nodes with enough {' and '.join(shortfall.among)}" if shortfall.among else ""
    if shortfall.best <= 0:
        return f"none: no node has any {shortfall.resource} free{among}"
    block = amount(shortfall.resource, shortfall.best)
    if shortfall.resource == "gpu" and 0 < shortfall.pod.gpu < 1:
        block = f"{block} on one device"
    return f"{block} on {shortfall.node}{among}"


def _value(pod: PodRequest, resource: str) -> float:
    """What ``pod`` asks of ``resource``, extended resources included."""
    if resource in RESOURCES:
        return _by_resource(pod.vector)[resource]
    return float(dict(pod.extended).get(resource, 0))


def _by_resource(vector: ResourceVector) -> dict[str, float]:
    return {"cpu": vector.cpu_millis, "memory": vector.memory_bytes, "gpu": vector.gpu}


def topology_does_not_fit(need: str, level: str, block: str, domain: str) -> Reason:
    """A required packing no domain's free room holds now ("needs 16 gpu within one
    rack (8 worker x 2 gpu); the largest free rack block is 12 gpu on r2")."""
    where = f"the largest free {level} block is {block} on {domain}" if domain else "none is free"
    return Reason(Code.TOPOLOGY_DOES_NOT_FIT.value, f"needs {need} within one {level}; {where}")


def topology_domain_too_small(need: str, level: str, size: str, domain: str) -> Reason:
    """A required packing larger than any domain even when empty: waiting will not help."""
    return Reason(
        Code.TOPOLOGY_DOMAIN_TOO_SMALL.value,
        f"needs {need} within one {level}; the largest {level} has {size} in all ({domain}): "
        f"set topology.required: false or packWithin a larger level, or ask for less",
    )


def no_topology_domain(pod: PodRequest, level: str, levels: Sequence[str]) -> Reason:
    """A required packing at a level that is not declared, or that no schedulable node
    is labelled with."""
    if level in levels:
        why = f"no schedulable node carries the label {level}"
    else:
        declared = ", ".join(levels) or "none"
        why = f"{level} is not a topology level of this cluster (levels: {declared})"
    return Reason(
        Code.NO_TOPOLOGY_DOMAIN.value,
        f"pod {pod_name(pod)} must be packed within one {level}; {why}",
    )


def cannot_grow_within(pod: PodRequest, domains: str, block: str, node: str) -> Reason:
    """A running job's optional pod that found no room in its role's topology domain."""
    return Reason(
        Code.TOPOLOGY_DOES_NOT_FIT.value,
        f"cannot add {pod_name(pod)}: it needs {pod_pieces(pod)} within {domains}, beside its "
        f"role's pods; largest free block there is {block} on {node}",
    )


NO_LEVELS_NOTE = "packWithin ignored: this cluster declares no topology levels"
"""A bind's note when a job asks for packing on a cluster without levels."""


def spread_note(role_names: str, need: str, level: str, block: str, domain: str, where: str) -> str:
    """What a bind says when a preferred packing fell back to a larger domain or a spread."""
    best = f"the largest free {level} block is {block} on {domain}" if domain else "none is free"
    return f"{role_names}: no {level} holds {need}; {best}; {where}"
