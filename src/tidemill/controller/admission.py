"""Checks a job against the cluster before it is queued.

The spec validated on its own; here we refuse what could never run on *this* cluster
(an unknown queue, a replica larger than every node, a gang larger than all nodes
together, a gang beyond a queue's max), so the user hears about it at submit time
instead of waiting forever. The gang is each role at its minimum size: what must run
at once for the job to start.

Extended resources (``resources.extended``) are checked per replica and node by node;
queue maxes do not limit them.

A role's ``topology.packWithin`` must name a level of the cluster that some node
carries; a required packing must fit one domain of that level when it is empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from tidemill.api.cluster import NodeSpec, QueueSpec
from tidemill.api.errors import FieldError, SpecError, from_validation_error
from tidemill.api.job import RoleSpec, TrainingJob
from tidemill.api.quantity import format_cpu, format_memory
from tidemill.api.topology import ClusterTopology


@dataclass(frozen=True)
class Admission:
    queue: str
    priority: int
    create_queue: bool
    """True when the namespace's own queue is used for the first time."""


def admit(
    job: TrainingJob,
    nodes: Sequence[NodeSpec],
    queues: Mapping[str, QueueSpec],
    priority_classes: Mapping[str, int],
    topology: ClusterTopology | None = None,
) -> Admission:
    """Return where the job queues and at what priority, or raise SpecError."""
    errors: list[FieldError] = []
    queue = job.queue_name
    if job.spec.queue is not None and queue not in queues:
        known = ", ".join(sorted(queues)) or "none yet"
        errors.append(
            FieldError(
                "spec.queue",
                f"queue '{queue}' does not exist (known queues: {known}); declare it in the "
                f"cluster file or leave spec.queue out to use the namespace's queue "
                f"'{job.metadata.namespace}'",
            )
        )
    priority = job.spec.priority
    class_name = job.spec.priority_class_name
    if class_name is not None:
        if class_name in priority_classes:
            priority = priority_classes[class_name]
        else:
            known = ", ".join(f"{k}={v}" for k, v in sorted(priority_classes.items()))
            errors.append(
                FieldError(
                    "spec.priorityClassName",
                    f"unknown priority class '{class_name}' (known: {known or 'none'}); "
                    "declare priorityClasses in the cluster file or set spec.priority",
                )
            )
    errors.extend(capacity_problems(job, nodes))
    if not errors:
        errors.extend(topology_problems(job, nodes, (topology or ClusterTopology()).levels))
    if not errors and queue in queues:
        errors.extend(_within_queue_max(job, queues[queue]))
    if errors:
        raise SpecError(errors)
    return Admission(queue=queue, priority=priority, create_queue=queue not in queues)


def capacity_problems(job: TrainingJob, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    """Why the job could never run on ``nodes`` (all of them free), or nothing.

    Each replica must fit some node; then the gang must fit all nodes together, per
    resource, and each role's replicas must find enough room node by node (whole GPUs
    and cores do not split across nodes).
    """
    errors: list[FieldError] = []
    for name, role in job.spec.roles.items():
        if role.max_bound > 0:
            errors.extend(_fits_some_node(f"spec.roles.{name}.resources", role, nodes))
    if errors:
        return errors
    errors.extend(_gang_within_cluster(job, nodes))
    if errors:
        return errors
    for name, role in job.spec.roles.items():
        errors.extend(_role_finds_room(name, role, nodes))
    return errors


def _fits_some_node(path: str, role: RoleSpec, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    res = role.resources
    usable = [n for n in nodes if res.gpu == 0 or n.gpus > 0]
    if res.gpu_model is not None and res.gpu > 0:
        models = sorted({n.gpu_model for n in nodes if n.gpu_model})
        usable = [n for n in usable if n.gpu_model == res.gpu_model]
        if not usable:
            return [
                FieldError(
                    f"{path}.gpuModel",
                    f"no node has gpu model '{res.gpu_model}' "
                    f"(models here: {', '.join(models) or 'none'})",
                )
            ]
    if not nodes:
        return [FieldError(path, "the cluster has no nodes")]
    errors: list[FieldError] = []
    largest_cpu = max(nodes, key=lambda n: n.cpu)
    largest_memory = max(nodes, key=lambda n: n.memory)
    largest_gpu = max(nodes, key=lambda n: n.gpus)
    if res.cpu > largest_cpu.cpu:
        errors.append(
            FieldError(
                f"{path}.cpu",
                f"asks {res.cpu:g} cpu per replica; the largest node has "
                f"{largest_cpu.cpu:g} ({largest_cpu.name})",
            )
        )
    if res.memory > largest_memory.memory:
        errors.append(
            FieldError(
                f"{path}.memory",
                f"asks {format_memory(res.memory)} per replica; the largest node has "
                f"{format_memory(largest_memory.memory)} ({largest_memory.name})",
            )
        )
    if res.gpu > largest_gpu.gpus:
        errors.append(
            FieldError(
                f"{path}.gpu",
                f"asks {res.gpu:g} gpu per replica; the largest node has "
                f"{largest_gpu.gpus} ({largest_gpu.name})",
            )
        )
    errors.extend(_extended_offered(f"{path}.extended", role, nodes))
    if errors:
        return errors
    if not any(
        res.cpu <= n.cpu and res.memory <= n.memory and res.gpu <= n.gpus and _has_extended(n, role)
        for n in usable
    ):
        extended = "".join(f", {amount} {name}" for name, amount in res.extended.items() if amount)
        return [
            FieldError(
                path,
                f"no single node has {format_cpu(res.cpu_millis)} cpu, "
                f"{format_memory(res.memory)} memory and {res.gpu:g} gpu{extended} together",
            )
        ]
    return []


def _extended_offered(path: str, role: RoleSpec, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    """Each extended resource the role asks must be offered by some node, enough of it."""
    errors: list[FieldError] = []
    for name, asked in role.resources.extended.items():
        if asked == 0:
            continue
        largest = max(nodes, key=lambda n: n.extended.get(name, 0))
        most = largest.extended.get(name, 0)
        if most >= asked:
            continue
        offer = (
            f"the largest node offers {most} ({largest.name})" if most else f"no node offers {name}"
        )
        errors.append(
            FieldError(
                path,
                f"asks {asked} {name} per replica; {offer}: ask for at most {most}, or add "
                f"nodes offering it (extended: in the cluster file; on Kubernetes, "
                f"tidemill server --extended-resource {name})",
            )
        )
    return errors


def _has_extended(node: NodeSpec, role: RoleSpec) -> bool:
    return all(node.extended.get(name, 0) >= n for name, n in role.resources.extended.items())


def _within_queue_max(job: TrainingJob, queue: QueueSpec) -> list[FieldError]:
    """A gang bigger than its queue's max would wait forever: refuse it now."""
    gang = [role for role in job.spec.roles.values()]
    cpu = sum(r.resources.cpu * r.min_bound for r in gang)
    memory = sum(r.resources.memory * r.min_bound for r in gang)
    gpu = sum(r.resources.gpu * r.min_bound for r in gang)
    limits = queue.max
    errors: list[FieldError] = []
    for name, need, cap in (
        ("cpu", cpu, limits.cpu),
        ("memory", memory, limits.memory),
        ("gpu", gpu, limits.gpu),
    ):
        if cap is not None and need > cap + 1e-9:
            errors.append(
                FieldError(
                    "spec.queue",
                    f"the job needs {_amount(name, need)} {name} in all; queue '{queue.name}' "
                    f"may hold at most {_amount(name, cap)}",
                )
            )
    return errors


def _amount(resource: str, value: float) -> str:
    return format_memory(int(value)) if resource == "memory" else f"{value:g}"


def _gang(job: TrainingJob) -> list[tuple[str, RoleSpec]]:
    return [(name, role) for name, role in job.spec.roles.items() if role.min_bound > 0]


def _gang_within_cluster(job: TrainingJob, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    """Per resource, the gang's sum against every node's capacity together."""
    gang = _gang(job)
    errors: list[FieldError] = []
    need_cpu = sum(role.resources.cpu_millis * role.min_bound for _, role in gang)
    have_cpu = sum(round(node.cpu * 1000) for node in nodes)
    if need_cpu > have_cpu:
        errors.append(_short("cpu", format_cpu(need_cpu), format_cpu(have_cpu), gang, nodes))
    need_memory = sum(role.resources.memory * role.min_bound for _, role in gang)
    have_memory = sum(node.memory for node in nodes)
    if need_memory > have_memory:
        errors.append(
            _short("memory", format_memory(need_memory), format_memory(have_memory), gang, nodes)
        )
    gpu_roles = [(name, role) for name, role in gang if role.resources.gpu > 0]
    models = sorted({r.resources.gpu_model for _, r in gpu_roles if r.resources.gpu_model})
    gpu_errors: list[FieldError] = []
    for model in [*models, None]:
        if model is None and gpu_errors:
            break  # a model already short says more than the total
        asking = [(n, r) for n, r in gpu_roles if model is None or r.resources.gpu_model == model]
        offering = [n for n in nodes if model is None or n.gpu_model == model]
        need_gpu = sum(role.resources.gpu * role.min_bound for _, role in asking)
        have_gpu = sum(node.gpus for node in offering)
        if need_gpu > have_gpu + 1e-9:
            what = "gpu" if model is None else f"{model} gpu"
            gpu_errors.append(_short(what, f"{need_gpu:g}", str(have_gpu), asking, offering))
    return errors + gpu_errors


def _short(
    resource: str,
    need: str,
    have: str,
    gang: Sequence[tuple[str, RoleSpec]],
    nodes: Sequence[NodeSpec],
) -> FieldError:
    """Says e.g. "needs 3 cpu as a gang (3 worker x 1 cpu); the cluster has 2 cpu in all"."""
    parts = " + ".join(
        f"{role.min_bound} {name} x {_per_replica(resource, role)}" for name, role in gang
    )
    count = f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}"
    return FieldError(
        "spec.roles",
        f"needs {need} {resource} as a gang ({parts}); the cluster has {have} {resource} in "
        f"all ({count}), so the job could never start: ask for less or fewer replicas, "
        "or add nodes",
    )


def _per_replica(resource: str, role: RoleSpec) -> str:
    res = role.resources
    if resource == "cpu":
        return f"{format_cpu(res.cpu_millis)} cpu"
    if resource == "memory":
        return format_memory(res.memory)
    return f"{res.gpu:g} gpu"


def _role_finds_room(name: str, role: RoleSpec, nodes: Sequence[NodeSpec]) -> list[FieldError]:
    """Whether the role's gang replicas fit node by node (sums can hide fragmentation)."""
    wanted = role.min_bound
    if wanted == 0:
        return []
    holds = {node.name: _replicas_on(node, role, wanted) for node in nodes}
    room = sum(holds.values())
    if room >= wanted:
        return []
    res = role.resources
    field = "minReplicas" if role.is_elastic else "replicas"
    used = ", ".join(f"{count} on {node}" for node, count in holds.items() if count)
    return [
        FieldError(
            f"spec.roles.{name}.{field}",
            f"the gang needs {wanted} {name} replicas at once ({format_cpu(res.cpu_millis)} "
            f"cpu, {format_memory(res.memory)}, {res.gpu:g} gpu each); replicas do not split "
            f"across nodes and the nodes hold at most {room} ({used or 'none'}): ask for "
            f"at most {room}, or less per replica",
        )
    ]


def _replicas_on(node: NodeSpec, role: RoleSpec, cap: int) -> int:
    """How many of ``role``'s replicas an empty ``node`` holds, up to ``cap``."""
    res = role.resources
    fits = [cap]
    if res.cpu_millis > 0:
        fits.append(round(node.cpu * 1000) // res.cpu_millis)
    if res.memory > 0:
        fits.append(node.memory // res.memory)
    if res.gpu > 0:
        if res.gpu_model is not None and node.gpu_model != res.gpu_model:
            return 0
        per_device = math.floor(1 / res.gpu + 1e-9) if res.gpu < 1 else 0
        fits.append(node.gpus * per_device if per_device else node.gpus // int(res.gpu))
    for name, asked in res.extended.items():
        if asked > 0:
            fits.append(node.extended.get(name, 0) // asked)
    return min(fits)


def topology_problems(
    job: TrainingJob, nodes: Sequence[NodeSpec], levels: Sequence[str]
) -> list[FieldError]:
    """Packings that could never be honoured: an undeclared level, one no node carries,
    or a required one larger than the largest domain of its level. A cluster that
    declares no levels ignores packings (the scheduler notes it), so the job file that
    runs on the shared cluster also runs on this machine."""
    errors: list[FieldError] = []
    if not levels:
        return errors
    for name, role in job.spec.roles.items():
        asked = role.topology
        if asked is None or role.max_bound == 0:
            continue
        path = f"spec.roles.{name}.topology"
        level = asked.pack_within
        if level not in levels:
            errors.append(
                FieldError(
                    f"{path}.packWithin",
                    f"'{level}' is not a topology level of this cluster (levels: "
                    f"{', '.join(levels) or 'none declared'}); use one of them, or declare it "
                    "under topology.levels in the cluster file",
                )
            )
            continue
        domains: dict[tuple[str | None, ...], list[NodeSpec]] = {}
        for node in nodes:
            if level in node.labels:
                key = tuple(node.labels.get(lv) for lv in levels[levels.index(level) :])
                domains.setdefault(key, []).append(node)
        if not domains:
            keys = ", ".join(sorted({k for n in nodes for k in n.labels})) or "none"
            errors.append(
                FieldError(
                    f"{path}.packWithin",
                    f"no node carries the label '{level}' (node labels here: {keys}); label "
                    "the nodes with it, or pack within another level",
                )
            )
            continue
        wanted = role.min_bound
        if not asked.required or wanted == 0:
            continue
        holds = {
            key: sum(_replicas_on(n, role, wanted) for n in members)
            for key, members in domains.items()
        }
        best = max(holds, key=lambda key: holds[key])
        if holds[best] < wanted:
            res = role.resources
            errors.append(
                FieldError(
                    path,
                    f"needs {wanted} {name} replicas within one {level} "
                    f"({format_cpu(res.cpu_millis)} cpu, {format_memory(res.memory)}, "
                    f"{res.gpu:g} gpu each); the largest {level} holds {holds[best]} "
                    f"({best[0]}, {len(domains[best])} node(s)): set required: false, pack "
                    "within a larger level, or ask for fewer replicas",
                )
            )
    return errors


@dataclass(frozen=True)
class Oversubscription:
    """``tidemill run --oversubscribe``: this machine pretending to hold a gang it cannot."""

    node: NodeSpec
    """The machine's node, enlarged to the gang's need."""
    message: str
    """What the machine has and what the job asked (the Warning event's text)."""


def oversubscribe(node: NodeSpec, job: TrainingJob) -> Oversubscription | None:
    """``node`` enlarged so the job's gang fits it alone, or None if it fits already.

    Raises SpecError when no single node could be declared large enough (a request
    beyond the hard limits, or GPUs of two models).
    """
    if not capacity_problems(job, [node]):
        return None
    gang = _gang(job)
    cpu_millis = sum(role.resources.cpu_millis * role.min_bound for _, role in gang)
    memory = sum(role.resources.memory * role.min_bound for _, role in gang)
    gpus = sum(_devices(role) for _, role in gang)
    models = {r.resources.gpu_model for _, r in gang if r.resources.gpu and r.resources.gpu_model}
    try:
        enlarged = NodeSpec.model_validate(
            {
                **node.model_dump(),
                "cpu": max(node.cpu, cpu_millis / 1000),
                "memory": max(node.memory, memory),
                "gpus": max(node.gpus, gpus),
                "gpu_model": models.pop() if len(models) == 1 else node.gpu_model,
            }
        )
    except ValidationError as exc:
        raise SpecError(
            [
                FieldError("spec.roles", f"too large to run even with --oversubscribe: {problem}")
                for problem in from_validation_error(exc, set()).errors
            ]
        ) from None
    problems = capacity_problems(job, [enlarged])
    if problems:
        raise SpecError(problems)
    asked = " + ".join(
        f"{role.min_bound} {name} x {format_cpu(role.resources.cpu_millis)} cpu, "
        f"{format_memory(role.resources.memory)}, {role.resources.gpu:g} gpu"
        for name, role in gang
    )
    message = (
        f"this machine has {_node_amounts(node)}; the job asks {format_cpu(cpu_millis)} cpu, "
        f"{format_memory(memory)} memory and {gpus} gpu as a gang ({asked}); running it anyway "
        "(--oversubscribe): replicas share what the machine has and may run slowly or "
        "out of memory"
    )
    return Oversubscription(enlarged, message)


def _devices(role: RoleSpec) -> int:
    """GPU devices the role's gang replicas take on one node (shared ones packed)."""
    gpu = role.resources.gpu
    if gpu == 0:
        return 0
    if gpu >= 1:
        return int(gpu) * role.min_bound
    return math.ceil(role.min_bound / math.floor(1 / gpu + 1e-9))


def _node_amounts(node: NodeSpec) -> str:
    return (
        f"{format_cpu(round(node.cpu * 1000))} cpu, {format_memory(node.memory)} memory "
        f"and {node.gpus} gpu"
    )
