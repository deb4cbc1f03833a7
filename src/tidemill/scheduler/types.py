"""The scheduler's inputs and outputs: plain frozen dataclasses, no I/O.

``schedule(ClusterState, pending, SchedulerConfig) -> Decisions`` is a pure function of
these values. The controller builds a ``ClusterState`` from the store each cycle and
applies the ``Decisions`` it gets back.

Elastic jobs use three optional fields, all off by default: ``PodRequest.optional``
(replicas above a role's minimum, placed only in idle room), ``JobRequest.grow`` (add
optional replicas to a running job) and ``RunningJob.shrinkable`` (replicas that may be
taken back for a higher-priority job instead of stopping the whole job).

Extended resources (``rdma/hca``, ``example.com/fpga``: whole counts a node offers) are
``NodeInfo.extended``, ``PodRequest.extended`` and ``Placement.extended``: a pod fits a
node only with enough of each it asks free there. ``ResourceVector`` leaves them out, so
DRF shares, queue quotas and the preemption search weigh cpu, memory and GPU only (a
preemption plan is still checked against extended resources before it is taken).

Time is data too: ``ClusterState.now`` with each pending job's ``waiting_since`` and each
running job's ``expected_end`` let a job that waited past its bound get a
``Reservation``; the reservations come back in ``Decisions.reservations`` and go into
the next cycle's ``ClusterState``, so they last without the scheduler keeping state.
Each queue's recent use (``recent_use.RecentUse``) travels the same way in
``Decisions.recent_use``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

from tidemill.scheduler.recent_use import RecentUse

Extended = tuple[tuple[str, int], ...]
"""Extended resources as (name, whole amount) pairs sorted by name; hashable, so pod
shapes with them can key caches."""


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
class NumaNode:
    """One NUMA node of a machine: the CPU ids and GPU devices attached to it."""

    cpus: tuple[int, ...]
    gpus: tuple[int, ...] = ()


@dataclass(frozen=True)
class TopologyRequest:
    """A role's ask to run its gang pods inside one domain of a topology level.

    ``level`` is a node label key the cluster declares as a level (``rack``). Pods of a
    job asking the same level share one domain. ``required``: wait rather than spread;
    otherwise a gang that fits no domain is spread, with a note in its bind."""

    level: str
    required: bool = False


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
    extended: dict[str, int] = field(default_factory=dict)
    """Extended resources the node offers, by name (``{"rdma/hca": 4}``)."""
    numa: tuple[NumaNode, ...] = ()
    """Its NUMA layout, if declared: a pod's GPUs are taken from one NUMA node when
    they fit in one."""


@dataclass(frozen=True)
class QueueInfo:
    """A tenant queue. ``max`` fields set to None are unlimited."""

    name: str
    weight: float = 1.0
    guaranteed: ResourceVector = ResourceVector()
    max_cpu_millis: int | None = None
    max_memory_bytes: int | None = None
    max_gpu: float | None = None
    runtime_estimate_s: float | None = None
    """How long this queue's jobs run, for those that set no deadline: who may backfill
    ahead of a reservation, and when a running job is expected to end."""
    reserve_after_s: float | None = None
    """A job waiting this long gets a reservation (None: ``SchedulerConfig``'s bound)."""


@dataclass(frozen=True)
class PodRequest:
    """One replica of a gang. ``gpu`` is a whole count, or a fraction below 1 (shared)."""

    role: str
    index: int
    cpu_millis: int
    memory_bytes: int
    gpu: float = 0.0
    gpu_model: str | None = None
    optional: bool = False
    """An elastic extra (an index at or above the role's minReplicas): placed after the
    gang, only in idle room, never by preempting; its job starts without it."""
    extended: Extended = ()
    """Extended resources it needs on its node, e.g. ``(("rdma/hca", 2),)``."""
    spread: bool = False
    """Placed before the gang's other pods, each on a node no other spread pod of the gang
    has when the cluster allows (parameter servers: one shard per node's memory and NIC)."""
    topology: TopologyRequest | None = None
    """Pack this pod with the job's other pods asking the same level into one domain."""

    @property
    def vector(self) -> ResourceVector:
        return ResourceVector(self.cpu_millis, self.memory_bytes, self.gpu)


@dataclass(frozen=True)
class JobRequest:
    """A pending job: every required pod is placed, or none is (gang).

    Optional pods are then placed in the order given, as many as fit in idle room; a
    role's optional pods stop at its first one that does not fit, so its indexes stay
    contiguous.
    """

    key: str
    queue: str
    priority: int
    sequence: int
    pods: tuple[PodRequest, ...]
    grow: bool = False
    """Add pods to the running job ``key`` (every pod is then treated as optional).

    Growth is tried after every regular pending job of the cycle and never preempts;
    what did not fit is explained in ``Decisions.unmet_grows``, not as a pending reason."""
    replaces: bool = False
    """With ``grow``: pods the running job lost with their node. They are placed before
    any pending job (still only in idle room, never preempting), so the job gets back
    what it held before new work takes the room."""
    waiting_since: float | None = None
    """When it last started waiting (submitted, or put back by a preemption)."""
    runtime_s: float | None = None
    """The most it runs once started (its ``activeDeadlineSeconds``), if it says."""

    @property
    def gang(self) -> tuple[PodRequest, ...]:
        """The required pods: all placed together or none."""
        if self.grow:
            return ()
        return tuple(pod for pod in self.pods if not pod.optional)

    @property
    def extras(self) -> tuple[PodRequest, ...]:
        """The optional pods, in the order they are tried."""
        if self.grow:
            return self.pods
        return tuple(pod for pod in self.pods if pod.optional)

    @property
    def total(self) -> ResourceVector:
        """What every pod, required or optional, asks for together."""
        return _sum(self.pods)

    @property
    def gang_total(self) -> ResourceVector:
        """What the required pods ask for together: what queue max and preemption weigh."""
        return _sum(self.gang)


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
    extended: Extended = ()
    """Extended resources held on ``node``, as the pod asked them."""


@dataclass(frozen=True)
class RunningJob:
    """A job holding resources; a preemption candidate if ``preemptible``."""

    key: str
    queue: str
    priority: int
    sequence: int
    placements: tuple[Placement, ...]
    preemptible: bool = True
    shrinkable: tuple[tuple[str, int], ...] = ()
    """(role, index) of placements a higher-priority job may take back without stopping
    this one (elastic replicas above minReplicas), in the order they should go: a
    shrink removes a prefix of this tuple. Pairs naming no placement are ignored."""
    started_at: float | None = None
    """When it was bound; a reclaim stops the most recently started first."""
    expected_end: float | None = None
    """When it should end (its deadline or its queue's runtime estimate); None: unknown."""

    @property
    def total(self) -> ResourceVector:
        return usage(self.placements)


@dataclass(frozen=True)
class Reservation:
    """Room held for a job that waited past its bound, as running jobs free it.

    Only jobs that end before ``due`` may use the room meanwhile (backfill)."""

    job: str
    placements: tuple[Placement, ...]
    """Where the gang will run: every pod of it, on nodes that may still be busy."""
    due: float | None
    """When the room is expected to be free (epoch seconds); None when a job in the way
    has no expected end, and then nothing backfills."""


@dataclass(frozen=True)
class PodType:
    """One kind of pod the cluster expects, and how common it is: what fragmentation-aware
    placement keeps room for. ``gpu`` is a whole count or a share below 1, as in
    ``PodRequest``."""

    cpu_millis: int
    memory_bytes: int
    gpu: float
    weight: float = 1.0
    """Relative popularity (a count or a share; only ratios between types matter)."""
    gpu_model: str | None = None

    def __post_init__(self) -> None:
        if self.cpu_millis < 0 or self.memory_bytes < 0 or self.gpu < 0:
            raise ValueError(
                f"PodType: cpu_millis={self.cpu_millis}, memory_bytes={self.memory_bytes}, "
                f"gpu={self.gpu:g}; every amount must be zero or more"
            )
        if self.gpu >= 1 and self.gpu != int(self.gpu):
            raise ValueError(
                f"PodType.gpu: {self.gpu:g}; a whole count (1, 2, ...) or a share below 1"
            )
        if not self.weight > 0:
            raise ValueError(f"PodType.weight: {self.weight:g}; must be above 0")


@dataclass(frozen=True)
class ClusterState:
    """A snapshot of the cluster: the only thing the scheduler looks at."""

    nodes: tuple[NodeInfo, ...]
    queues: dict[str, QueueInfo]
    running: tuple[RunningJob, ...] = ()
    topology: tuple[str, ...] = ()
    """Node label keys that name topology domains, smallest level first
    (``("nvlink-domain", "rack", "zone")``)."""
    now: float | None = None
    """The cycle's time (epoch seconds); None: no job waits long enough for a reservation."""
    reservations: tuple[Reservation, ...] = ()
    """What the previous cycle's ``Decisions.reservations`` held."""
    workload: tuple[PodType, ...] = ()
    """The pod mix the cluster expects, for fragmentation-aware placement; empty: the
    pods pending in the call stand for it."""
    recent_use: RecentUse = field(default_factory=RecentUse)
    """What the previous cycle's ``Decisions.recent_use`` held: each queue's recent use,
    which orders queues whose shares are equal."""


Scoring = Literal["fragmentation", "best-fit"]
"""How placement picks a node among those a pod fits (``SchedulerConfig.scoring``)."""


@dataclass(frozen=True)
class SchedulerConfig:
    """Policy switches; the scheduler reads no globals."""

    preemption: bool = True
    strict_fifo: bool = False
    """If True a queue's head that does not fit blocks the jobs behind it."""
    reserve_after_s: float | None = 3600.0
    """A job waiting longer gets a reservation, unless its queue sets its own bound
    (None: only queues that set one reserve)."""
    max_reservations: int = 4
    """At most this many jobs hold reservations at once, the longest waiting first."""
    reclaim: bool = True
    """A queue below its guarantee may stop or shrink jobs of queues over theirs, at any
    priority (needs ``preemption``); and a higher-priority job never preempts another
    queue below its guarantee, so the two never undo each other."""
    scoring: Scoring = "fragmentation"
    """``fragmentation``: the node where the pod leaves the least GPU that the expected
    pod mix (``ClusterState.workload``) could not use (FGD, Weng et al., ATC'23);
    ``best-fit``: the node left with the fewest whole GPUs, then least cpu and memory."""
    score_nodes: int | None = 128
    """Fragmentation scoring looks at no more than this many of the nodes a pod fits:
    those best fit ranks first (as kube-scheduler bounds the nodes it scores on large
    clusters), so scoring a pod does not grow with the cluster. None: every node."""
    recent_use_half_life_s: float = 3600.0
    """A queue's recent use (which orders queues whose shares are equal) halves over
    this long."""

    def __post_init__(self) -> None:
        if self.scoring not in get_args(Scoring):
            choices = " or ".join(repr(s) for s in get_args(Scoring))
            raise ValueError(f"SchedulerConfig.scoring: {self.scoring!r}; use {choices}")
        if not self.recent_use_half_life_s > 0:
            raise ValueError(
                "SchedulerConfig.recent_use_half_life_s: "
                f"{self.recent_use_half_life_s:g}; must be above 0"
            )
        if self.score_nodes is not None and self.score_nodes < 1:
            raise ValueError(
                f"SchedulerConfig.score_nodes: {self.score_nodes}; use at least 1, or None "
                "to score every node"
            )


@dataclass(frozen=True)
class Bind:
    job: str
    placements: tuple[Placement, ...]
    note: str = ""
    """How the placement departs from what the job preferred (a gang spread because no
    domain of its ``packWithin`` level held it), for the bind's event."""


@dataclass(frozen=True)
class Reclaim:
    """Why a job was stopped or shrunk at any priority: ``queue`` took back its guarantee."""

    queue: str
    guaranteed: ResourceVector
    held: ResourceVector
    """What ``queue`` held before, below ``guaranteed``."""


@dataclass(frozen=True)
class Shrink:
    """Remove ``pods`` (role, index) of running ``job`` so ``preemptor`` fits; the job runs on.

    ``pods`` is a prefix of the job's ``shrinkable``, in that order.
    """

    job: str
    pods: tuple[tuple[str, int], ...]
    preemptor: str
    message: str
    reclaim: Reclaim | None = None


@dataclass(frozen=True)
class Preemption:
    victim: str
    preemptor: str
    message: str
    reclaim: Reclaim | None = None
    """Set when the victim was stopped to give a queue back its guarantee."""


@dataclass(frozen=True)
class Reason:
    """Why a job stays pending: a stable ``code`` and a message with numbers."""

    code: str
    message: str


@dataclass
class Decisions:
    """Apply shrinks and preemptions first (stop the pods they free), then binds, then grows.

    A job may be shrunk for one preemptor and stopped whole for a later one in the same
    cycle; it is never grown in a cycle that shrinks or stops it.
    """

    binds: list[Bind] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)
    pending: dict[str, Reason] = field(default_factory=dict)
    shrinks: list[Shrink] = field(default_factory=list)
    grows: list[Bind] = field(default_factory=list)
    """Pods added to running jobs (``JobRequest.grow``), one entry per job that got any."""
    unmet_grows: dict[str, Reason] = field(default_factory=dict)
    """Why a growth request got fewer pods than it asked for (the first pod left out)."""
    reservations: list[Reservation] = field(default_factory=list)
    """The reservations to pass in the next cycle's ``ClusterState``."""
    recent_use: RecentUse = field(default_factory=RecentUse)
    """Each queue's recent use at this cycle, to pass in the next cycle's ``ClusterState``."""


def usage(placements: Iterable[Placement]) -> ResourceVector:
    """What ``placements`` hold together (a shared GPU counts its share)."""
    cpu_millis = memory_bytes = 0
    gpu = 0.0
    for p in placements:
        cpu_millis += p.cpu_millis
        memory_bytes += p.memory_bytes
        gpu += p.gpu_share * len(p.gpu_ids)
    return ResourceVector(cpu_millis, memory_bytes, gpu)


def _sum(pods: Iterable[PodRequest]) -> ResourceVector:
    total = ResourceVector()
    for pod in pods:
        total = total + pod.vector
    return total
