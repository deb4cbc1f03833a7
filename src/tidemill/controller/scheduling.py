"""One scheduling step: snapshot the store, ask the pure scheduler, apply its decisions.

The snapshot is read without holding the store's write lock, so submissions are not
held up while the scheduler thinks. The ports new replicas need are chosen next, then
every decision is written in one short transaction (binds and grows as launch
intents), and only after it commits are replicas stopped and launched: a rolled-back
transaction never leaves a process behind, and a bound job starts exactly once.

A job whose request cannot be built (its spec cannot be read) or whose decision raises
while written is failed alone; every other decision of the pass commits.

The scheduler has no clock and keeps nothing: each pass gives it the time, and the
reservations and queues' recent use the previous pass returned (held here, in memory:
after a restart reservations are made again, on the nodes expected to free soonest
then, and recent use counts from the restart).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.applier import fail_row, perform
from tidemill.controller.decision_writes import (
    GROWING,
    NewReplicas,
    write_bind,
    write_grow,
    write_preempt,
    write_reason,
    write_requeue,
    write_shrink,
)
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, needs_master, unplaced
from tidemill.controller.isolation import Write, controller_error, write_jobs
from tidemill.controller.launcher import port_needs
from tidemill.controller.launches import Launches, fetch_ports
from tidemill.controller.lifecycle import LifecycleConfig
from tidemill.controller.model import ACTIVE_PHASES, JobSnapshot, ReplicaSnapshot
from tidemill.controller.rows import job_snapshot
from tidemill.controller.snapshot import (
    grow_request,
    job_request,
    node_info,
    queue_info,
    replace_request,
    running_job,
)
from tidemill.engines.base import Engine
from tidemill.scheduler.core import schedule_incremental
from tidemill.scheduler.memo import Memo
from tidemill.scheduler.recent_use import RecentUse
from tidemill.scheduler.types import (
    Bind,
    ClusterState,
    Decisions,
    JobRequest,
    Placement,
    PodType,
    Reason,
    Reservation,
    SchedulerConfig,
)
from tidemill.store.store import QueuedJob, Store, Tx
from tidemill.store.tables import JobRow

log = logging.getLogger(__name__)
_Size = tuple[int, tuple[tuple[str, int], ...]]
"""A pending job's priority and desired replicas per role: what its request is built from."""
__all__ = ["ACTIVE_PHASES", "CycleStats", "SchedulingStep"]


@dataclass
class CycleStats:
    """What the last cycle did; read by /metrics."""

    schedule_seconds: float = 0.0
    queue_latencies_s: list[float] = field(default_factory=list)
    recent_use: Mapping[str, float] | None = None
    """Each queue's recent use after the pass (weighted share-seconds); None: no pass."""


@dataclass
class _Read:
    """What one pass read: the scheduler's input and the jobs it may touch."""

    state: ClusterState
    requests: list[JobRequest]
    jobs: dict[str, JobSnapshot]
    specs: dict[str, TrainingJob]
    shown: dict[str, tuple[str | None, str | None]]
    """job key -> the (pending or growth) reason its row shows now"""
    broken: dict[int, str] = field(default_factory=dict)
    idle: bool = False
    """Nothing waits and nothing may grow: the pass only counts the queues' recent use."""


class SchedulingStep:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        launches: Launches,
        spec_of: Callable[[JobRow], TrainingJob],
        config: SchedulerConfig,
        lifecycle: LifecycleConfig,
        topology: tuple[str, ...] = (),
        workload: tuple[PodType, ...] = (),
    ) -> None:
        """``topology``: the cluster's topology levels, smallest first; ``workload``:
        the pod mix the cluster file declares (empty: what each pass sees)."""
        self.store = store
        self.topology = topology
        self.workload = workload
        self.engine = engine
        self.launches = launches
        self.spec_of = spec_of
        self.config = config
        self.lifecycle = lifecycle
        self._requests: dict[str, tuple[_Size, JobRequest, TrainingJob]] = {}
        """job uid -> (priority and sizes, request, spec): a name or even an id may be reused"""
        self._reservations: tuple[Reservation, ...] = ()
        """What the last pass reserved, for jobs that waited past their bound."""
        self._memo: Memo | None = None
        """The last snapshot's free capacity and use, so a pass pays for what changed."""
        self._recent_use = RecentUse()
        """Each queue's recent use at the last pass: it orders queues of equal shares."""

    def run(self, now: float, stats: CycleStats) -> bool:
        """Returns True when something was bound, preempted or resized."""
        read = self._read()
        if read is None:
            self._reservations = ()
            self._recent_use = self._recent_use.advanced(now, self.config.recent_use_half_life_s)
            self._recent_use = self._recent_use.holding_now({})
            stats.recent_use = self._recent_use.share_seconds
            return False
        state = dataclasses.replace(
            read.state, now=now, reservations=self._reservations, recent_use=self._recent_use
        )
        started = time.perf_counter()
        decisions, self._memo = schedule_incremental(state, read.requests, self.config, self._memo)
        stats.schedule_seconds = time.perf_counter() - started
        self._reservations = tuple(decisions.reservations)
        self._recent_use = decisions.recent_use
        stats.recent_use = decisions.recent_use.share_seconds
        if read.idle:
            return False
        waited: dict[int, float] = {}
        """job id -> how long it queued, for jobs bound in this pass"""
        writes = self._writes(read, decisions, now, waited)
        if not writes and not read.broken:
            return False

        def fallback(tx: Tx, row: JobRow, message: str) -> list[object]:
            return fail_row(tx, row, message, now, self.lifecycle)

        outcome = write_jobs(self.store, writes, fallback, read.broken)
        stats.queue_latencies_s += [s for i, s in waited.items() if i not in outcome.failed]
        self.launches.run(perform(self.engine, outcome.effects))
        resized = decisions.grows or decisions.shrinks
        return bool(decisions.binds or decisions.preemptions or resized or outcome.failed)

    # ------------------------------------------------------------------ read

    def _read(self) -> _Read | None:
        with self.store.read() as tx:
            pending_rows = tx.queued_jobs()
            holding = tx.jobs(phases=ACTIVE_PHASES)
            if not pending_rows and not holding:
                return None
            read = _Read(
                state=ClusterState(nodes=(), queues={}),
                requests=[],
                jobs={},
                specs={},
                shown={j.key: (j.pending_code, j.pending_message) for j in pending_rows},
                idle=not pending_rows and not any(self._may_grow(j) for j in holding),
            )
            queues = {q.name: queue_info(q) for q in tx.queues()}
            running = []
            for row in holding:
                try:
                    spec = self.spec_of(row)
                    queue = queues.get(row.queue)
                    estimate_s = None if queue is None else queue.runtime_estimate_s
                    running.append(running_job(row, spec, estimate_s))
                    read.jobs[row.key] = job_snapshot(row)
                    read.specs[row.key] = spec
                    if row.pending_code is not None:
                        read.shown[row.key] = (row.pending_code, row.pending_message)
                    growth = self._growth(row, spec)
                except Exception:
                    log.exception("job %s: left out of scheduling", row.key)
                    continue  # the lifecycle pass fails it alone
                read.requests += growth
            built = {queued.id: self._cached(queued) for queued in pending_rows}
            unseen = [job_id for job_id, known in built.items() if known is None]
            whole = {row.id: row for row in tx.jobs_by_id(unseen)}
            for queued in pending_rows:
                try:
                    known = built[queued.id]
                    request, spec = known or self._build(queued, whole.get(queued.id))
                    read.requests.append(request)
                    read.specs[queued.key] = spec
                    read.jobs[queued.key] = _pending_snapshot(queued)
                except Exception as exc:
                    read.broken[queued.id] = controller_error(exc)
            self._forget_requests({j.uid for j in pending_rows})
            read.state = ClusterState(
                nodes=tuple(node_info(n) for n in tx.nodes()),
                queues=queues,
                running=tuple(running),
                topology=self.topology,
                workload=self.workload,
            )
        return read

    def _growth(self, row: JobRow, spec: TrainingJob) -> list[JobRequest]:
        """Replicas lost with their node, placed again while the job runs or restarts;
        elastic growth only while it runs."""
        if row.phase not in GROWING or row.deleted_at or row.outcome:
            return []
        requests = [replace_request(row, spec)]
        if row.phase == JobPhase.RUNNING.value:
            requests.append(grow_request(row, spec))
        return [r for r in requests if r is not None]

    def _cached(self, row: QueuedJob) -> tuple[JobRequest, TrainingJob] | None:
        """The request and spec built for ``row`` before, unless its size or priority
        changed since."""
        cached = self._requests.get(row.uid)
        if cached is None or cached[0] != _size(row.priority, row.desired):
            return None
        return cached[1], cached[2]

    def _build(self, queued: QueuedJob, row: JobRow | None) -> tuple[JobRequest, TrainingJob]:
        """The scheduler's view of a pending job and its spec, from its whole ``row``
        (read only for jobs new to the pass or whose size or priority changed: a long
        backlog is mostly the same jobs pass after pass)."""
        if row is None:
            raise LookupError(f"job {queued.key} was not read whole")
        spec = self.spec_of(row)
        request = job_request(row, spec)
        self._requests[row.uid] = (_size(row.priority, row.desired), request, spec)
        return request, spec

    def _forget_requests(self, pending_uids: set[str]) -> None:
        for uid in [u for u in self._requests if u not in pending_uids]:
            del self._requests[uid]

    def _may_grow(self, job: JobRow) -> bool:
        if job.phase not in GROWING:
            return False
        if unplaced(job.replicas):
            return True
        try:
            return job.phase == JobPhase.RUNNING.value and is_elastic(self.spec_of(job))
        except Exception:
            return False

    # ------------------------------------------------------------------ write

    def _writes(
        self, read: _Read, decisions: Decisions, now: float, waited: dict[int, float]
    ) -> dict[int, list[Write]]:
        """Job id -> its writes, in the order the decisions are applied."""
        writes: dict[int, list[Write]] = {}

        def add(key: str, change: Write) -> None:
            writes.setdefault(read.jobs[key].id, []).append(change)

        stop_s, drain_s = self.lifecycle.stop_grace_s, self.lifecycle.drain_grace_s
        for shrink in decisions.shrinks:
            cause = "Shrunk" if shrink.reclaim is None else "Reclaimed"
            add(shrink.job, write_shrink(shrink.pods, cause, shrink.message, now, drain_s))
        for preemption in decisions.preemptions:
            cause = "Preempted" if preemption.reclaim is None else "Reclaimed"
            add(preemption.victim, write_preempt(cause, preemption.message, now, stop_s))
        for bind in decisions.binds:
            launch = self._plan(read, bind, with_master=True)
            if launch is not None:
                add(bind.job, write_bind(read.specs[bind.job], bind, launch, now, waited))
        requeued = _unplaceable(read, decisions)
        for grow in decisions.grows:
            launch = None if grow.job in requeued else self._plan(read, grow, with_master=False)
            if launch is not None:
                add(grow.job, write_grow(read.specs[grow.job], launch, now))
        for key, message in requeued.items():
            add(key, write_requeue(message, now, stop_s))
        reasons: dict[str, Reason | None] = {**decisions.pending, **decisions.unmet_grows}
        for key in requeued:
            reasons.pop(key, None)
        for key in read.shown:
            if key in read.jobs and read.jobs[key].phase is not JobPhase.PENDING:
                reasons.setdefault(key, None)  # a job that grew or stopped asking: clear it
        for key, reason in reasons.items():
            shown = (None, None) if reason is None else (reason.code, reason.message)
            if key in read.jobs and read.shown.get(key, (None, None)) != shown:
                add(key, write_reason(reason, now))
        return writes

    def _plan(self, read: _Read, bind: Bind, with_master: bool) -> NewReplicas | None:
        """The new replicas and their ports (chosen here, outside any transaction);
        None when the engine has no port to give now (the job waits for the next pass)."""
        job, spec = read.jobs[bind.job], read.specs[bind.job]
        placements = list(bind.placements)
        if with_master and needs_master(spec):
            # The job master takes no scheduled resources; it lives beside the first replica.
            node = bind.placements[0].node
            placements.append(Placement(MASTER_ROLE, 0, node, cpu_millis=0, memory_bytes=0))
        kept_ports = {r.name: r.port for r in unplaced(job.replicas)}
        new = [_replica(p, kept_ports.get(f"{p.role}-{p.index}", 0)) for p in placements]
        placed = {r.name for r in new}
        kept = tuple(r for r in job.replicas if r.name not in placed)
        after = dataclasses.replace(job, replicas=(*kept, *new))
        needs = port_needs(after, spec, [r.name for r in new])
        try:
            ports = fetch_ports(self.engine, needs)
        except Exception:
            log.exception("no ports for %s now; it is placed again next pass", bind.job)
            return None
        return NewReplicas(tuple(placements), ports)


def _unplaceable(read: _Read, decisions: Decisions) -> dict[str, str]:
    """Job key -> why it goes back to its queue: replicas it lost with their node that
    this pass could not place again (every other replica keeps holding its node)."""
    placed = {
        (grow.job, f"{p.role}-{p.index}") for grow in decisions.grows for p in grow.placements
    }
    victims = {p.victim for p in decisions.preemptions}
    requeued = {}
    for key, job in read.jobs.items():
        if job.phase.value not in GROWING or key in victims:
            continue
        missing = [r.name for r in unplaced(job.replicas) if (key, r.name) not in placed]
        if not missing:
            continue
        reason = decisions.unmet_grows.get(key)
        why = "" if reason is None else f" ({reason.code}: {reason.message})"
        requeued[key] = (
            f"{', '.join(missing)} lost with its node and no node has room for it now{why}; "
            "the job is queued again to be placed whole"
        )
    return requeued


def _replica(placement: Placement, port: int) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        role=placement.role,
        index=placement.index,
        phase=ReplicaPhase.PENDING,
        node=placement.node,
        port=port,
        gpu_ids=tuple(placement.gpu_ids),
        gpu_share=placement.gpu_share,
    )


def _size(priority: int, desired: Mapping[str, int]) -> _Size:
    return priority, tuple(sorted(desired.items()))


def _pending_snapshot(row: QueuedJob) -> JobSnapshot:
    """A pending job holds no replicas; its row is read without them."""
    return JobSnapshot(
        id=row.id,
        uid=row.uid,
        namespace=row.namespace,
        name=row.name,
        phase=JobPhase(row.phase),
        created_at=row.created_at,
        desired=dict(row.desired),
        master_port=row.master_port,
        job_master_port=row.job_master_port,
    )
