"""The scheduler's view of a declared cluster: nodes and queues from their specs.

One conversion for the controller (specs stored as rows) and the simulator (a cluster
file read directly), so a simulated cluster is scheduled exactly as a served one. The
scheduling modules themselves never import this: they see only ``types``.
"""

from __future__ import annotations

from tidemill.api.cluster import ClusterSpec, NodeSpec, QueueSpec
from tidemill.api.scheduler_settings import SchedulerSettings
from tidemill.scheduler.types import (
    ClusterState,
    NodeInfo,
    NumaNode,
    PodType,
    QueueInfo,
    ResourceVector,
    SchedulerConfig,
)


def cluster_of(spec: ClusterSpec) -> ClusterState:
    """The declared cluster with nothing running: nodes, queues, topology levels and
    the expected pod mix."""
    return ClusterState(
        nodes=tuple(node_of(node) for node in spec.all_nodes()),
        queues={queue.name: queue_of(queue) for queue in spec.queues},
        topology=tuple(spec.topology.levels),
        workload=workload_of(spec.scheduler),
    )


def config_of(settings: SchedulerSettings) -> SchedulerConfig:
    """The policy a cluster file's ``scheduler`` section asks for."""
    return SchedulerConfig(
        preemption=settings.preemption,
        strict_fifo=settings.strict_fifo,
        reserve_after_s=seconds(settings.reserve_after_seconds),
        max_reservations=settings.max_reservations,
        reclaim=settings.reclaim,
        scoring=settings.scoring,
        score_nodes=settings.score_nodes,
        recent_use_half_life_s=float(settings.recent_use_half_life_seconds),
    )


def workload_of(settings: SchedulerSettings) -> tuple[PodType, ...]:
    """The declared pod mix (empty: the scheduler takes what is pending and running)."""
    return tuple(
        PodType(round(pod.cpu * 1000), pod.memory, pod.gpu, pod.weight, pod.gpu_model)
        for pod in settings.workload
    )


def node_of(spec: NodeSpec, schedulable: bool = True) -> NodeInfo:
    return NodeInfo(
        name=spec.name,
        cpu_millis=round(spec.cpu * 1000),
        memory_bytes=spec.memory,
        gpus=spec.gpus,
        gpu_model=spec.gpu_model,
        labels=dict(spec.labels),
        schedulable=schedulable,
        extended=dict(spec.extended),
        numa=numa_layout(spec),
    )


def numa_layout(spec: NodeSpec) -> tuple[NumaNode, ...]:
    """The node's declared NUMA layout in the scheduler's form (empty: none declared)."""
    return tuple(NumaNode(cpus=n.cpu_ids, gpus=tuple(n.gpus)) for n in spec.numa)


def queue_of(spec: QueueSpec) -> QueueInfo:
    guaranteed, limit = spec.guaranteed, spec.max
    return QueueInfo(
        name=spec.name,
        weight=spec.weight,
        guaranteed=ResourceVector(
            round((guaranteed.cpu or 0) * 1000), guaranteed.memory or 0, guaranteed.gpu or 0.0
        ),
        max_cpu_millis=None if limit.cpu is None else round(limit.cpu * 1000),
        max_memory_bytes=limit.memory,
        max_gpu=limit.gpu,
        runtime_estimate_s=seconds(spec.runtime_estimate_seconds),
        reserve_after_s=seconds(spec.reserve_after_seconds),
    )


def seconds(value: int | None) -> float | None:
    return None if value is None else float(value)
