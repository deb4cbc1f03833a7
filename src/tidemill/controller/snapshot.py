"""Builds the scheduler's pure inputs from store rows."""

from __future__ import annotations

from tidemill.api.cluster import NodeSpec, QueueSpec
from tidemill.api.job import TrainingJob
from tidemill.scheduler.types import (
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    ResourceVector,
    RunningJob,
)
from tidemill.store.tables import JobRow, NodeRow, QueueRow, ReplicaRow


def node_info(row: NodeRow) -> NodeInfo:
    spec = NodeSpec.model_validate(row.spec)
    return NodeInfo(
        name=spec.name,
        cpu_millis=round(spec.cpu * 1000),
        memory_bytes=spec.memory,
        gpus=spec.gpus,
        gpu_model=spec.gpu_model,
        labels=dict(spec.labels),
        schedulable=row.schedulable,
    )


def queue_info(row: QueueRow) -> QueueInfo:
    spec = QueueSpec.model_validate(row.spec)
    guaranteed = spec.guaranteed
    limit = spec.max
    return QueueInfo(
        name=spec.name,
        weight=spec.weight,
        guaranteed=ResourceVector(
            round((guaranteed.cpu or 0) * 1000), guaranteed.memory or 0, guaranteed.gpu or 0.0
        ),
        max_cpu_millis=None if limit.cpu is None else round(limit.cpu * 1000),
        max_memory_bytes=limit.memory,
        max_gpu=limit.gpu,
    )


def job_request(row: JobRow, job: TrainingJob) -> JobRequest:
    """The gang to place: every replica of every role at its current size."""
    pods = [
        PodRequest(
            role=name,
            index=i,
            cpu_millis=role.resources.cpu_millis,
            memory_bytes=role.resources.memory,
            gpu=role.resources.gpu,
            gpu_model=role.resources.gpu_model,
        )
        for name, role in sorted(job.spec.roles.items())
        for i in range(role.replicas)
    ]
    return JobRequest(
        key=row.key, queue=row.queue, priority=row.priority, sequence=row.id, pods=tuple(pods)
    )


def running_job(row: JobRow) -> RunningJob:
    placements = tuple(
        Placement(
            role=r.role,
            index=r.index,
            node=r.node,
            cpu_millis=r.cpu_millis,
            memory_bytes=r.memory_bytes,
            gpu_ids=tuple(r.gpu_ids),
            gpu_share=r.gpu_share,
        )
        for r in row.replicas
    )
    return RunningJob(
        key=row.key,
        queue=row.queue,
        priority=row.priority,
        sequence=row.id,
        placements=placements,
    )


def replica_usage(replica: ReplicaRow) -> ResourceVector:
    """What one placed replica holds (shared GPUs count their share)."""
    return ResourceVector(
        replica.cpu_millis, replica.memory_bytes, replica.gpu_share * len(replica.gpu_ids)
    )
