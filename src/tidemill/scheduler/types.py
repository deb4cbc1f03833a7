"""The scheduler's inputs and outputs: plain frozen dataclasses, no I/O.

``schedule(ClusterState, pending, SchedulerConfig) -> Decisions`` is a pure function of
these values. The controller builds a ``ClusterState`` from the store each cycle and
applies the ``Decisions`` it gets back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResourceVector:
    """An amount of the three scheduled resources."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    gpu: float = 0.0

    def __add__(self, other: ResourceVector) -> ResourceVector:
        return ResourceVector(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.gpu + other.gpu,
        )

    def __sub__(self, other: ResourceVector) -> ResourceVector:
        return ResourceVector(
            self.cpu_millis - other.cpu_millis,
            self.memory_bytes - other.memory_bytes,
            self.gpu - other.gpu,
        )


@dataclass(frozen=True)
class NodeInfo:
    """A node's capacity. GPUs are devices ``0 .. gpus-1``."""

    name: str
    cpu_millis: int
    memory_bytes: int
    gpus: int = 0
    gpu_model: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    schedulable: bool = True


@dataclass(frozen=True)
class QueueInfo:
    """A tenant queue. ``max`` fields set to None are unlimited."""

    name: str
    weight: float = 1.0
    guaranteed: ResourceVector = ResourceVector()
    max_cpu_millis: int | None = None
    max_memory_bytes: int | None = None
    max_gpu: float | None = None


@dataclass(frozen=True)
class PodRequest:
    """One replica of a gang. ``gpu`` is a whole count, or a fraction below 1 (shared)."""

    role: str
    index: int
    cpu_millis: int
    memory_bytes: int
    gpu: float = 0.0
    gpu_model: str | None = None

    @property
    def vector(self) -> ResourceVector:
        return ResourceVector(self.cpu_millis, self.memory_bytes, self.gpu)


@dataclass(frozen=True)
class JobRequest:
    """A pending job: every pod in ``pods`` is placed, or none is (gang)."""

    key: str
    queue: str
    priority: int
    sequence: int
    pods: tuple[PodRequest, ...]

    @property
    def total(self) -> ResourceVector:
        total = ResourceVector()
        for pod in self.pods:
            total = total + pod.vector
        return total


@dataclass(frozen=True)
class Placement:
    """Where one pod runs. ``gpu_share`` is taken from each device in ``gpu_ids``."""

    role: str
    index: int
    node: str
    cpu_millis: int
    memory_bytes: int
    gpu_ids: tuple[int, ...] = ()
    gpu_share: float = 0.0


@dataclass(frozen=True)
class RunningJob:
    """A job holding resources; a preemption candidate if ``preemptible``."""

    key: str
    queue: str
    priority: int
    sequence: int
    placements: tuple[Placement, ...]
    preemptible: bool = True

    @property
    def total(self) -> ResourceVector:
        total = ResourceVector()
        for p in self.placements:
            gpu = p.gpu_share * len(p.gpu_ids)
            total = total + ResourceVector(p.cpu_millis, p.memory_bytes, gpu)
        return total


@dataclass(frozen=True)
class ClusterState:
    """A snapshot of the cluster: the only thing the scheduler looks at."""

    nodes: tuple[NodeInfo, ...]
    queues: dict[str, QueueInfo]
    running: tuple[RunningJob, ...] = ()


@dataclass(frozen=True)
class SchedulerConfig:
    """Policy switches; the scheduler reads no globals."""

    preemption: bool = True
    strict_fifo: bool = False
    """If True a queue's head that does not fit blocks the jobs behind it."""


@dataclass(frozen=True)
class Bind:
    job: str
    placements: tuple[Placement, ...]


@dataclass(frozen=True)
class Preemption:
    victim: str
    preemptor: str
    message: str


@dataclass(frozen=True)
class Reason:
    """Why a job stays pending: a stable ``code`` and a message with numbers."""

    code: str
    message: str


@dataclass
class Decisions:
    """Apply preemptions first (stop the victims), then binds."""

    binds: list[Bind] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    pending: dict[str, Reason] = field(default_factory=dict)
