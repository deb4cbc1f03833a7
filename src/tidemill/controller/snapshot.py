"""Builds the scheduler's pure inputs from store rows."""

from __future__ import annotations

from tidemill.api.cluster import NodeSpec, QueueSpec
from tidemill.api.job import TrainingJob
from tidemill.api.status import ConditionType
from tidemill.controller.elastic import UNPLACED, missing_indexes, surplus, unplaced
from tidemill.scheduler.specs import node_of, queue_of, seconds
from tidemill.scheduler.types import (
    Extended,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    ResourceVector,
    RunningJob,
    TopologyRequest,
)
from tidemill.store.tables import JobRow, NodeRow, QueueRow, ReplicaRow


def node_info(row: NodeRow) -> NodeInfo:
    return node_of(NodeSpec.model_validate(row.spec), row.schedulable)


def queue_info(row: QueueRow) -> QueueInfo:
    return queue_of(QueueSpec.model_validate(row.spec))


def _pod(name: str, job: TrainingJob, index: int, optional: bool) -> PodRequest:
    resources = job.spec.roles[name].resources
    asked = job.spec.roles[name].topology
    return PodRequest(
        role=name,
        index=index,
        cpu_millis=resources.cpu_millis,
        memory_bytes=resources.memory,
        gpu=resources.gpu,
        gpu_model=resources.gpu_model,
        optional=optional,
        extended=_extended(resources.extended),
        spread=job.spec.roles[name].runs_ps_server,
        topology=None if asked is None else TopologyRequest(asked.pack_within, asked.required),
    )


def _extended(amounts: dict[str, int]) -> Extended:
    """The scheduler's form: (name, amount) pairs sorted by name, zero amounts left out."""
    return tuple(sorted((name, amount) for name, amount in amounts.items() if amount > 0))


def job_request(row: JobRow, job: TrainingJob) -> JobRequest:
    """The gang to place: fixed roles in full, elastic roles at their minimum, plus
    optional replicas up to the desired size."""
    pods = []
    for name, role in sorted(job.spec.roles.items()):
        desired = row.desired.get(name, role.replicas)
        required = role.min_bound if role.is_elastic else desired
        pods += [_pod(name, job, i, optional=i >= required) for i in range(max(desired, required))]
    return JobRequest(
        key=row.key,
        queue=row.queue,
        priority=row.priority,
        sequence=row.id,
        pods=tuple(pods),
        waiting_since=waiting_since(row),
        runtime_s=seconds(job.spec.active_deadline_seconds),
    )


def waiting_since(row: JobRow) -> float:
    """When a pending job last joined its queue: at submission, or when it was preempted
    (only then are its conditions read: a backlog of new jobs costs no extra query)."""
    if row.scheduled_at is None:
        return row.created_at
    for condition in row.conditions:
        if condition["type"] == ConditionType.PENDING.value and condition["status"]:
            return float(condition["last_transition_time"])
    return row.scheduled_at


def grow_request(row: JobRow, job: TrainingJob) -> JobRequest | None:
    """Optional replicas a running elastic job lacks to reach its desired size."""
    pods = [
        _pod(name, job, index, optional=True)
        for name, role in sorted(job.spec.roles.items())
        if role.is_elastic
        for index in missing_indexes(row.replicas, name, row.desired.get(name, role.max_bound))
    ]
    return _growth(row, pods, replaces=False)


def replace_request(row: JobRow, job: TrainingJob) -> JobRequest | None:
    """The replicas a running job lost with their node, to place again."""
    pods = [_pod(r.role, job, r.index, optional=True) for r in unplaced(row.replicas)]
    return _growth(row, pods, replaces=True)


def _growth(row: JobRow, pods: list[PodRequest], replaces: bool) -> JobRequest | None:
    if not pods:
        return None
    return JobRequest(
        key=row.key,
        queue=row.queue,
        priority=row.priority,
        sequence=row.id,
        pods=tuple(pods),
        grow=True,
        replaces=replaces,
    )


def running_job(
    row: JobRow, job: TrainingJob, runtime_estimate_s: float | None = None
) -> RunningJob:
    """What a running job holds. Replica rows do not record extended resources: a
    replica holds what its role asks (the master's role is not in the spec: none).

    It is expected to end at its deadline (``activeDeadlineSeconds`` after it first
    ran), else ``runtime_estimate_s`` (its queue's) after it was bound."""
    roles = job.spec.roles
    placements = tuple(
        Placement(
            role=r.role,
            index=r.index,
            node=r.node,
            cpu_millis=r.cpu_millis,
            memory_bytes=r.memory_bytes,
            gpu_ids=tuple(r.gpu_ids),
            gpu_share=r.gpu_share,
            extended=_extended(roles[r.role].resources.extended) if r.role in roles else (),
        )
        for r in row.replicas
        if r.node != UNPLACED
    )
    shrinkable = tuple(
        (r.role, r.index)
        for name, role in sorted(job.spec.roles.items())
        if role.is_elastic
        for r in surplus(row.replicas, name, role.min_bound)
    )
    bound_at = row.scheduled_at
    first_ran = row.started_at if row.started_at is not None else bound_at
    deadline_s = job.spec.active_deadline_seconds
    expected_end = None
    if deadline_s is not None and first_ran is not None:
        expected_end = first_ran + deadline_s
    elif runtime_estimate_s is not None and bound_at is not None:
        expected_end = bound_at + runtime_estimate_s
    return RunningJob(
        key=row.key,
        queue=row.queue,
        priority=row.priority,
        sequence=row.id,
        placements=placements,
        shrinkable=shrinkable,
        started_at=bound_at,
        expected_end=expected_end,
    )


def replica_usage(replica: ReplicaRow) -> ResourceVector:
    """What one placed replica holds (shared GPUs count their share)."""
    return ResourceVector(
        replica.cpu_millis, replica.memory_bytes, replica.gpu_share * len(replica.gpu_ids)
    )
