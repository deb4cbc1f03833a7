"""Small builders so a scheduler test reads like the situation it sets up.

    decide(nodes=[node("n1").gpus(8)], jobs=[job("a").pods(2).gpus(4)])

Elastic jobs: ``job("a").pods(6).min_pods(2)`` asks workers 0-1 as the gang and 2-5 as
optional; ``job("a").pods(3).first_index(2).grows()`` asks running ``a`` for workers
2-4; ``running("a").on(...)...keep(2)`` lets a preemptor take back every worker from
index 2 up, highest first.

Extended resources: ``node("n1").offers("rdma/hca", 4)``, ``job("a").extended("rdma/hca", 2)``
(per pod) and ``running("b").on("n1", extended={"rdma/hca": 1})``.

Topology: ``node("n1").label("rack", "r1")``, ``node("n1").gpus(8).numa((0, 1), (2, 3))``
(GPUs per NUMA node; CPUs follow), ``job("a").pack("rack", required=True)`` and
``decide(..., levels=("nvlink-domain", "rack"))``.

Time: ``job("a").waiting_since(0).runtime(600)`` (waiting since t=0, runs at most ten
minutes), ``running("b").started(0).ends(3600)``, ``queue("q").runtime_estimate(600)``,
and ``decide(..., now=7200)``.

Builders are immutable: every call returns a new one, so a shared base is safe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from tidemill.scheduler import (
    ClusterState,
    Decisions,
    JobRequest,
    NodeInfo,
    NumaNode,
    Placement,
    PodRequest,
    QueueInfo,
    Reservation,
    ResourceVector,
    RunningJob,
    SchedulerConfig,
    TopologyRequest,
    schedule,
)

GIB = 2**30


@dataclass(frozen=True)
class node:  # lower-case on purpose: node("n1").gpus(8) reads as a sentence
    name: str
    cpu_cores: float = 64
    memory_gib: float = 512
    gpu_count: int = 0
    gpu_model: str | None = None
    schedulable: bool = True
    extended_amounts: tuple[tuple[str, int], ...] = ()
    label_items: tuple[tuple[str, str], ...] = ()
    numa_gpus: tuple[tuple[int, ...], ...] = ()

    def gpus(self, count: int) -> node:
        return replace(self, gpu_count=count)

    def cpu(self, cores: float) -> node:
        return replace(self, cpu_cores=cores)

    def memory(self, gib: float) -> node:
        return replace(self, memory_gib=gib)

    def model(self, name: str) -> node:
        return replace(self, gpu_model=name)

    def cordoned(self) -> node:
        return replace(self, schedulable=False)

    def offers(self, name: str, count: int) -> node:
        """``count`` of the extended resource ``name``."""
        return replace(self, extended_amounts=(*self.extended_amounts, (name, count)))

    def label(self, key: str, value: str) -> node:
        return replace(self, label_items=(*self.label_items, (key, value)))

    def numa(self, *gpus: tuple[int, ...]) -> node:
        """One NUMA node per argument, holding those GPUs; the cores split evenly."""
        return replace(self, numa_gpus=gpus)

    def build(self) -> NodeInfo:
        per = int(self.cpu_cores) // max(len(self.numa_gpus), 1)
        layout = tuple(
            NumaNode(cpus=tuple(range(i * per, (i + 1) * per)), gpus=gpus)
            for i, gpus in enumerate(self.numa_gpus)
        )
        return NodeInfo(
            name=self.name,
            cpu_millis=round(self.cpu_cores * 1000),
            memory_bytes=round(self.memory_gib * GIB),
            gpus=self.gpu_count,
            gpu_model=self.gpu_model,
            schedulable=self.schedulable,
            extended=dict(self.extended_amounts),
            labels=dict(self.label_items),
            numa=layout,
        )


@dataclass(frozen=True)
class _Role:
    name: str
    count: int
    gpu: float
    cpu_cores: float
    memory_gib: float
    gpu_model: str | None
    required: int | None = None
    """Pods of this role in the gang; the rest are optional (None: all required)."""
    first: int = 0
    extended: tuple[tuple[str, int], ...] = ()
    spread: bool = False
    topology: TopologyRequest | None = None


@dataclass(frozen=True)
class job:
    key: str
    queue_name: str = "default"
    priority_value: int = 0
    sequence: int | None = None
    main: _Role = _Role("worker", 1, 0.0, 1, 1, None)
    extra: tuple[_Role, ...] = ()
    growth: bool = False
    replacing: bool = False
    since: float | None = None
    runtime_s: float | None = None

    def pods(self, count: int) -> job:
        return replace(self, main=replace(self.main, count=count))

    def min_pods(self, count: int) -> job:
        """Elastic: the first ``count`` pods are the gang, the rest optional."""
        return replace(self, main=replace(self.main, required=count))

    def first_index(self, index: int) -> job:
        """Number the main role's pods from ``index`` (growth adds the next indexes)."""
        return replace(self, main=replace(self.main, first=index))

    def grows(self) -> job:
        """A growth request for the running job of the same key."""
        return replace(self, growth=True)

    def replaces(self) -> job:
        """A request to place again pods the running job of the same key lost with
        their node."""
        return replace(self, growth=True, replacing=True)

    def gpus(self, per_pod: float) -> job:
        return replace(self, main=replace(self.main, gpu=per_pod))

    def cpu(self, cores: float) -> job:
        return replace(self, main=replace(self.main, cpu_cores=cores))

    def memory(self, gib: float) -> job:
        return replace(self, main=replace(self.main, memory_gib=gib))

    def model(self, name: str) -> job:
        return replace(self, main=replace(self.main, gpu_model=name))

    def extended(self, name: str, per_pod: int) -> job:
        """Each pod of the main role also needs ``per_pod`` of ``name``."""
        amounts = tuple(sorted({**dict(self.main.extended), name: per_pod}.items()))
        return replace(self, main=replace(self.main, extended=amounts))

    def pack(self, level: str, required: bool = False) -> job:
        """The main role's gang pods go into one domain of ``level``."""
        return replace(self, main=replace(self.main, topology=TopologyRequest(level, required)))

    def role(self, name: str) -> job:
        return replace(self, main=replace(self.main, name=name))

    def plus(
        self,
        role: str,
        count: int,
        gpu: float = 0.0,
        cpu: float = 1,
        memory: float = 1,
        spread: bool = False,
        pack: TopologyRequest | None = None,
    ) -> job:
        """Another role in the same gang (e.g. parameter servers beside workers;
        ``spread``: tidemill's PS servers, placed first, one per node when possible)."""
        extra = _Role(role, count, gpu, cpu, memory, None, spread=spread, topology=pack)
        return replace(self, extra=(*self.extra, extra))

    def queue(self, name: str) -> job:
        return replace(self, queue_name=name)

    def priority(self, value: int) -> job:
        return replace(self, priority_value=value)

    def seq(self, value: int) -> job:
        return replace(self, sequence=value)

    def waiting_since(self, at: float) -> job:
        return replace(self, since=at)

    def runtime(self, seconds: float) -> job:
        """At most this long once started (its activeDeadlineSeconds)."""
        return replace(self, runtime_s=seconds)

    def build(self, default_sequence: int = 0) -> JobRequest:
        pods = tuple(
            PodRequest(
                role=r.name,
                index=r.first + i,
                cpu_millis=round(r.cpu_cores * 1000),
                memory_bytes=round(r.memory_gib * GIB),
                gpu=r.gpu,
                gpu_model=r.gpu_model,
                optional=self.growth or (r.required is not None and i >= r.required),
                extended=r.extended,
                spread=r.spread,
                topology=r.topology,
            )
            for r in (self.main, *self.extra)
            for i in range(r.count)
        )
        sequence = default_sequence if self.sequence is None else self.sequence
        return JobRequest(
            self.key,
            self.queue_name,
            self.priority_value,
            sequence,
            pods,
            grow=self.growth,
            replaces=self.replacing,
            waiting_since=self.since,
            runtime_s=self.runtime_s,
        )


@dataclass(frozen=True)
class running:
    key: str
    queue_name: str = "default"
    priority_value: int = 0
    sequence: int = 0
    placements: tuple[Placement, ...] = ()
    preemptible: bool = True
    shrinkable: tuple[tuple[str, int], ...] = ()
    started_at: float | None = None
    expected_end: float | None = None

    def on(
        self,
        node_name: str,
        gpu_ids: Sequence[int] = (),
        share: float = 1.0,
        cpu: float = 1,
        memory: float = 1,
        extended: dict[str, int] | None = None,
    ) -> running:
        """One more pod of this job, on ``node_name`` using devices ``gpu_ids``."""
        placement = Placement(
            role="worker",
            index=len(self.placements),
            node=node_name,
            cpu_millis=round(cpu * 1000),
            memory_bytes=round(memory * GIB),
            gpu_ids=tuple(gpu_ids),
            gpu_share=share if gpu_ids else 0.0,
            extended=tuple(sorted((extended or {}).items())),
        )
        return replace(self, placements=(*self.placements, placement))

    def queue(self, name: str) -> running:
        return replace(self, queue_name=name)

    def priority(self, value: int) -> running:
        return replace(self, priority_value=value)

    def seq(self, value: int) -> running:
        return replace(self, sequence=value)

    def started(self, at: float) -> running:
        return replace(self, started_at=at)

    def ends(self, at: float) -> running:
        """Expected to end at ``at``."""
        return replace(self, expected_end=at)

    def not_preemptible(self) -> running:
        return replace(self, preemptible=False)

    def keep(self, minimum: int) -> running:
        """Elastic: workers from index ``minimum`` up may be taken back, highest first."""
        indexes = sorted((p.index for p in self.placements if p.index >= minimum), reverse=True)
        return self.shrink_order(*indexes)

    def shrink_order(self, *indexes: int) -> running:
        """Elastic: these workers may be taken back, in this order."""
        return replace(self, shrinkable=tuple(("worker", i) for i in indexes))

    def build(self) -> RunningJob:
        return RunningJob(
            self.key,
            self.queue_name,
            self.priority_value,
            self.sequence,
            self.placements,
            self.preemptible,
            self.shrinkable,
            self.started_at,
            self.expected_end,
        )


@dataclass(frozen=True)
class queue:
    name: str
    weight_value: float = 1.0
    max_gpu_value: float | None = None
    max_cpu_cores: float | None = None
    max_memory_gib: float | None = None
    guaranteed_gpu: float = 0.0
    runtime_estimate_s: float | None = None
    reserve_after_s: float | None = None

    def weight(self, value: float) -> queue:
        return replace(self, weight_value=value)

    def max_gpu(self, value: float) -> queue:
        return replace(self, max_gpu_value=value)

    def max_cpu(self, cores: float) -> queue:
        return replace(self, max_cpu_cores=cores)

    def max_memory(self, gib: float) -> queue:
        return replace(self, max_memory_gib=gib)

    def guarantee_gpu(self, value: float) -> queue:
        return replace(self, guaranteed_gpu=value)

    def runtime_estimate(self, seconds: float) -> queue:
        return replace(self, runtime_estimate_s=seconds)

    def reserve_after(self, seconds: float) -> queue:
        return replace(self, reserve_after_s=seconds)

    def build(self) -> QueueInfo:
        return QueueInfo(
            name=self.name,
            weight=self.weight_value,
            guaranteed=ResourceVector(gpu=self.guaranteed_gpu),
            max_cpu_millis=None if self.max_cpu_cores is None else round(self.max_cpu_cores * 1000),
            max_memory_bytes=None
            if self.max_memory_gib is None
            else round(self.max_memory_gib * GIB),
            max_gpu=self.max_gpu_value,
            runtime_estimate_s=self.runtime_estimate_s,
            reserve_after_s=self.reserve_after_s,
        )


def state_of(
    nodes: Iterable[node],
    running_jobs: Iterable[running] = (),
    queues: Iterable[queue] = (),
    levels: Sequence[str] = (),
    now: float | None = None,
    reservations: Iterable[Reservation] = (),
) -> ClusterState:
    """A snapshot; with no queues given there is one queue, ``default``."""
    infos = [q.build() for q in queues] or [QueueInfo("default")]
    return ClusterState(
        nodes=tuple(n.build() for n in nodes),
        queues={q.name: q for q in infos},
        running=tuple(r.build() for r in running_jobs),
        topology=tuple(levels),
        now=now,
        reservations=tuple(reservations),
    )


def backlog(jobs: Iterable[job]) -> list[JobRequest]:
    """Jobs in submission order: a job without ``seq`` gets its position."""
    return [j.build(default_sequence=i) for i, j in enumerate(jobs)]


def decide(
    nodes: Iterable[node],
    jobs: Iterable[job],
    running_jobs: Iterable[running] = (),
    queues: Iterable[queue] = (),
    preemption: bool = True,
    strict_fifo: bool = False,
    levels: Sequence[str] = (),
    now: float | None = None,
    reservations: Iterable[Reservation] = (),
    reserve_after_s: float | None = 3600.0,
    reclaim: bool = True,
) -> Decisions:
    config = SchedulerConfig(
        preemption=preemption,
        strict_fifo=strict_fifo,
        reserve_after_s=reserve_after_s,
        reclaim=reclaim,
    )
    state = state_of(nodes, running_jobs, queues, levels, now, reservations)
    return schedule(state, backlog(jobs), config)


def grown(decisions: Decisions) -> dict[str, list[str]]:
    """Per grown job, the pods added (``worker-2``), in the order given."""
    return {g.job: [f"{p.role}-{p.index}" for p in g.placements] for g in decisions.grows}


def shrunk(decisions: Decisions) -> dict[str, list[str]]:
    """Per shrunk job, the pods removed (``worker-5``), in the order they go."""
    return {s.job: [f"{role}-{index}" for role, index in s.pods] for s in decisions.shrinks}


def bound(decisions: Decisions) -> list[str]:
    """Keys of bound jobs, in the order the scheduler bound them."""
    return [b.job for b in decisions.binds]


def placements(decisions: Decisions, key: str) -> tuple[Placement, ...]:
    (bind,) = [b for b in decisions.binds if b.job == key]
    return bind.placements


def pod_names(decisions: Decisions, key: str) -> list[str]:
    """The pods bound for ``key`` (``worker-0``), in the bind's order."""
    return [f"{p.role}-{p.index}" for p in placements(decisions, key)]


def device_shares(
    decisions: Decisions, running_jobs: Iterable[running] = ()
) -> dict[tuple[str, int], float]:
    """Summed share per (node, device) after the decisions: running pods not preempted or
    shrunk away, plus binds and grows."""
    victims = {p.victim for p in decisions.preemptions}
    removed = {(s.job, pod) for s in decisions.shrinks for pod in s.pods}
    used: dict[tuple[str, int], float] = {}
    every = [
        p
        for r in running_jobs
        if r.key not in victims
        for p in r.placements
        if (r.key, (p.role, p.index)) not in removed
    ]
    every += [p for b in [*decisions.binds, *decisions.grows] for p in b.placements]
    for p in every:
        for device in p.gpu_ids:
            used[(p.node, device)] = used.get((p.node, device), 0.0) + p.gpu_share
    return used
