"""Store rows rendered as the REST API's views."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tidemill.api.cluster import NodeSpec, QueueSpec
from tidemill.api.status import (
    Condition,
    DataInsightView,
    EventView,
    GpuUsageView,
    JobPhase,
    JobSummary,
    JobView,
    NodeView,
    PendingReason,
    PSInsightView,
    QueueView,
    ReplicaPhase,
    ReplicaView,
    ResourceView,
    UsageView,
    saved_insight,
)
from tidemill.controller.snapshot import replica_usage
from tidemill.engines.usage import ReplicaUsage
from tidemill.scheduler.ordering import dominant_share
from tidemill.scheduler.types import ResourceVector
from tidemill.store.store import JobListing
from tidemill.store.tables import EventRow, JobRow, NodeRow, QueueRow


def replica_counts(desired: dict[str, int], running: dict[str, int]) -> dict[str, str]:
    """role -> 'running/desired' as people read it in `tidemill jobs`."""
    return {role: f"{running.get(role, 0)}/{count}" for role, count in sorted(desired.items())}


def job_summary(job: JobListing, running: dict[str, int]) -> JobSummary:
    return JobSummary(
        name=job.name,
        namespace=job.namespace,
        queue=job.queue,
        priority=job.priority,
        phase=JobPhase(job.phase),
        replicas=replica_counts(job.desired, running),
        created_at=job.created_at,
        message=job.message,
        pending_reason=pending_reason(job),
    )


def pending_reason(job: JobListing | JobRow) -> PendingReason | None:
    """Why the job waits, while it is Pending and the scheduler has said."""
    if not job.pending_code or job.phase != JobPhase.PENDING.value:
        return None
    return PendingReason(code=job.pending_code, message=job.pending_message or "")


def job_view(job: JobRow, usage: Mapping[str, ReplicaUsage] | None = None) -> JobView:
    """The job as REST shows it; ``usage``: replica name -> what it uses now, where known."""
    usage = usage or {}
    return JobView(
        name=job.name,
        namespace=job.namespace,
        uid=job.uid,
        queue=job.queue,
        priority=job.priority,
        mode=str(job.spec["spec"].get("mode", "allreduce")),
        phase=JobPhase(job.phase),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        message=job.message,
        desired=dict(job.desired),
        pending_reason=pending_reason(job),
        conditions=[Condition.model_validate(c) for c in job.conditions],
        replicas=[
            ReplicaView(
                role=r.role,
                index=r.index,
                phase=ReplicaPhase(r.phase),
                node=r.node,
                gpus=[str(g) for g in r.gpu_ids],
                pid=r.pid,
                pod=pod_of(r.handle),
                restarts=r.restarts,
                exit_code=r.exit_code,
                started_at=r.started_at,
                finished_at=r.finished_at,
                message=r.message,
                usage=usage_view(usage.get(r.replica_name)),
            )
            for r in job.replicas
        ],
        data=saved_insight(job.master_state, "data_insight", DataInsightView),
        ps=saved_insight(job.master_state, "ps_insight", PSInsightView),
        spec=job.spec,
    )


def pod_of(handle: dict[str, Any] | None) -> str | None:
    """The pod a Kubernetes replica runs in (as its handle records it), else None."""
    if not handle or handle.get("engine") != "kubernetes":
        return None
    pod = (handle.get("data") or {}).get("pod")
    return None if pod is None else str(pod)


def usage_view(usage: ReplicaUsage | None) -> UsageView | None:
    if usage is None:
        return None
    return UsageView(
        cpu_cores=usage.cpu_cores,
        memory_bytes=usage.memory_bytes,
        gpus=[
            GpuUsageView(
                index=g.index,
                utilization_percent=g.utilization_percent,
                memory_bytes=g.memory_bytes,
            )
            for g in usage.gpus
        ],
    )


def event_view(row: EventRow) -> EventView:
    return EventView(
        id=row.id,
        time=row.time,
        job=row.job,
        type=row.type,
        reason=row.reason,
        message=row.message,
        replica=row.replica,
    )


def _resources(vector: ResourceVector) -> ResourceView:
    return ResourceView(
        cpu=vector.cpu_millis / 1000, memory=vector.memory_bytes, gpu=round(vector.gpu, 4)
    )


def node_views(nodes: Iterable[NodeRow], holding: Iterable[JobRow]) -> list[NodeView]:
    used: dict[str, ResourceVector] = {}
    gpu_used: dict[str, dict[int, float]] = {}
    for job in holding:
        for r in job.replicas:
            used[r.node] = used.get(r.node, ResourceVector()) + replica_usage(r)
            for gpu in r.gpu_ids:
                per_device = gpu_used.setdefault(r.node, {})
                per_device[gpu] = per_device.get(gpu, 0.0) + r.gpu_share
    views = []
    for row in nodes:
        spec = NodeSpec.model_validate(row.spec)
        devices = gpu_used.get(spec.name, {})
        views.append(
            NodeView(
                name=spec.name,
                capacity=ResourceView(cpu=spec.cpu, memory=spec.memory, gpu=spec.gpus),
                allocated=_resources(used.get(spec.name, ResourceVector())),
                gpu_model=spec.gpu_model,
                gpu_used=[round(devices.get(i, 0.0), 4) for i in range(spec.gpus)],
                labels=dict(spec.labels),
                schedulable=row.schedulable,
            )
        )
    return views


def capacity_of(nodes: Iterable[NodeView]) -> ResourceVector:
    """What ``nodes`` offer together, as the scheduler counts it."""
    nodes = list(nodes)
    return ResourceVector(
        round(sum(n.capacity.cpu for n in nodes) * 1000),
        sum(n.capacity.memory for n in nodes),
        sum(n.capacity.gpu for n in nodes),
    )


def queue_views(
    queues: Iterable[QueueRow],
    holding: Iterable[JobRow],
    counts: Mapping[tuple[str, str], int],
    capacity: ResourceVector,
) -> list[QueueView]:
    """``holding``: the jobs that hold resources (their replicas are summed per queue);
    ``counts``: (queue, phase) -> jobs, as ``Tx.job_counts`` gives it."""
    allocated: dict[str, ResourceVector] = {}
    running: dict[str, int] = {}
    for job in holding:
        running[job.queue] = running.get(job.queue, 0) + 1
        for r in job.replicas:
            allocated[job.queue] = allocated.get(job.queue, ResourceVector()) + replica_usage(r)
    pending = {q: n for (q, phase), n in counts.items() if phase == JobPhase.PENDING.value}
    suspended = {q: n for (q, phase), n in counts.items() if phase == JobPhase.SUSPENDED.value}
    views = []
    for row in queues:
        spec = QueueSpec.model_validate(row.spec)
        held = allocated.get(spec.name, ResourceVector())
        views.append(
            QueueView(
                name=spec.name,
                weight=spec.weight,
                guaranteed=ResourceView(
                    cpu=spec.guaranteed.cpu or 0.0,
                    memory=spec.guaranteed.memory or 0,
                    gpu=spec.guaranteed.gpu or 0.0,
                ),
                max={"cpu": spec.max.cpu, "memory": spec.max.memory, "gpu": spec.max.gpu},
                allocated=_resources(held),
                dominant_share=round(dominant_share(held, capacity) / spec.weight, 6),
                pending=pending.get(spec.name, 0),
                running=running.get(spec.name, 0),
                suspended=suspended.get(spec.name, 0),
            )
        )
    return views
