"""One scheduling step: snapshot the store, ask the pure scheduler, apply its decisions.

The snapshot is read without holding the store's write lock, so submissions are not
held up while the scheduler thinks. The ports new replicas need are chosen next, then
every decision is written in one short transaction (binds and grows as launch
intents), and only after it commits are replicas stopped and launched: a rolled-back
transaction never leaves a process behind, and a bound job starts exactly once.

A job whose request cannot be built (its spec cannot be read) or whose decision raises
while written is failed alone; every other decision of the pass commits.

The scheduler has no clock and keeps nothing: each pass gives it the time, and the
reservations the previous pass returned (held here, in memory: after a restart they
are made again, on the nodes expected to free soonest then).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidemill.api.job import TrainingJob
from tidemill.api.status import ConditionType, JobPhase, ReplicaPhase
from tidemill.controller.actions import Kill, Vacate
from tidemill.controller.applier import fail_row, perform
from tidemill.controller.conditions import set_condition, transition
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, members, needs_master
from tidemill.controller.isolation import Write, controller_error, write_jobs
from tidemill.controller.launcher import port_needs
from tidemill.controller.launches import Launches, Planned, assign_ports, fetch_ports
from tidemill.controller.lifecycle import LifecycleConfig, drain
from tidemill.controller.model import ACTIVE_PHASES, JobSnapshot, ReplicaSnapshot
from tidemill.controller.rows import job_snapshot, record_intent, replica_snapshot, write
from tidemill.controller.snapshot import (
    grow_request,
    job_request,
    node_info,
    queue_info,
    running_job,
)
from tidemill.engines.base import Engine
from tidemill.scheduler.core import schedule_incremental
from tidemill.scheduler.memo import Memo
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
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow, ReplicaRow

log = logging.getLogger(__name__)
__all__ = ["ACTIVE_PHASES", "CycleStats", "SchedulingStep"]


@dataclass
class CycleStats:
    """What the last cycle did; read by /metrics."""

    schedule_seconds: float = 0.0
    queue_latencies_s: list[float] = field(default_factory=list)


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


@dataclass
class _Launch:
    """New replicas for a bind or a grow, with the ports chosen for them."""

    placements: tuple[Placement, ...]
    ports: dict[str, int]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{p.role}-{p.index}" for p in self.placements)


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
        self._requests: dict[str, tuple[tuple[int, tuple[tuple[str, int], ...]], JobRequest]] = {}
        """job uid -> (priority and sizes, request): a name or even an id may be reused"""
        self._reservations: tuple[Reservation, ...] = ()
        """What the last pass reserved, for jobs that waited past their bound."""
        self._memo: Memo | None = None
        """The last snapshot's free capacity and use, so a pass pays for what changed."""

    def run(self, now: float, stats: CycleStats) -> bool:
        """Returns True when something was bound, preempted or resized."""
        read = self._read()
        if read is None:
            self._reservations = ()
            return False
        state = dataclasses.replace(read.state, now=now, reservations=self._reservations)
        started = time.perf_counter()
        decisions, self._memo = schedule_incremental(state, read.requests, self.config, self._memo)
        stats.schedule_seconds = time.perf_counter() - started
        self._reservations = tuple(decisions.reservations)
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
            if not pending_rows and not any(self._may_grow(j) for j in holding):
                return None
            read = _Read(
                state=ClusterState(nodes=(), queues={}),
                requests=[],
                jobs={},
                specs={},
                shown={j.key: (j.pending_code, j.pending_message) for j in pending_rows},
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
                if growth is not None:
                    read.requests.append(growth)
            for row in pending_rows:
                try:
                    read.requests.append(self._request(row))
                    read.specs[row.key] = self.spec_of(row)
                    read.jobs[row.key] = _pending_snapshot(row)
                except Exception as exc:
                    read.broken[row.id] = controller_error(exc)
            self._forget_requests({j.uid for j in pending_rows})
            read.state = ClusterState(
                nodes=tuple(node_info(n) for n in tx.nodes()),
                queues=queues,
                running=tuple(running),
                topology=self.topology,
                workload=self.workload,
            )
        return read

    def _growth(self, row: JobRow, spec: TrainingJob) -> JobRequest | None:
        if row.phase != JobPhase.RUNNING.value or row.deleted_at or row.outcome:
            return None
        return grow_request(row, spec)

    def _request(self, row: JobRow) -> JobRequest:
        """The scheduler's view of a pending job, rebuilt only when its size or priority
        changes: a long backlog is mostly the same jobs pass after pass."""
        key = (row.priority, tuple(sorted(row.desired.items())))
        cached = self._requests.get(row.uid)
        if cached is None or cached[0] != key:
            cached = (key, job_request(row, self.spec_of(row)))
            self._requests[row.uid] = cached
        return cached[1]

    def _forget_requests(self, pending_uids: set[str]) -> None:
        for uid in [u for u in self._requests if u not in pending_uids]:
            del self._requests[uid]

    def _may_grow(self, job: JobRow) -> bool:
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

        for shrink in decisions.shrinks:
            cause = "Shrunk" if shrink.reclaim is None else "Reclaimed"
            add(shrink.job, self._shrink(shrink.pods, cause, shrink.message, now))
        for preemption in decisions.preemptions:
            cause = "Preempted" if preemption.reclaim is None else "Reclaimed"
            add(preemption.victim, self._preempt(cause, preemption.message, now))
        for bind in decisions.binds:
            launch = self._plan(read, bind, with_master=True)
            if launch is not None:
                add(bind.job, self._bind(read.specs[bind.job], bind, launch, now, waited))
        for grow in decisions.grows:
            launch = self._plan(read, grow, with_master=False)
            if launch is not None:
                add(grow.job, self._grow(read.specs[grow.job], launch, now))
        reasons: dict[str, Reason | None] = {**decisions.pending, **decisions.unmet_grows}
        for key in read.shown:
            if key in read.jobs and read.jobs[key].phase is not JobPhase.PENDING:
                reasons.setdefault(key, None)  # a job that grew or stopped asking: clear it
        for key, reason in reasons.items():
            shown = (None, None) if reason is None else (reason.code, reason.message)
            if key in read.jobs and read.shown.get(key, (None, None)) != shown:
                add(key, _show_reason(reason, now))
        return writes

    def _plan(self, read: _Read, bind: Bind, with_master: bool) -> _Launch | None:
        """The new replicas and their ports (chosen here, outside any transaction);
        None when the engine has no port to give now (the job waits for the next pass)."""
        job, spec = read.jobs[bind.job], read.specs[bind.job]
        placements = list(bind.placements)
        if with_master and needs_master(spec):
            # The job master takes no scheduled resources; it lives beside the first replica.
            node = bind.placements[0].node
            placements.append(Placement(MASTER_ROLE, 0, node, cpu_millis=0, memory_bytes=0))
        new = [_replica(p) for p in placements]
        after = dataclasses.replace(job, replicas=(*job.replicas, *new))
        needs = port_needs(after, spec, [r.name for r in new])
        try:
            ports = fetch_ports(self.engine, needs)
        except Exception:
            log.exception("no ports for %s now; it is placed again next pass", bind.job)
            return None
        return _Launch(tuple(placements), ports)

    def _shrink(
        self, pods: Sequence[tuple[str, int]], cause: str, message: str, now: float
    ) -> Write:
        """Ask elastic replicas to leave for a higher-priority job, or for a queue taking
        back its guarantee (``cause``: the event's reason); the rest train on."""

        def apply(tx: Tx, job: JobRow) -> list[object]:
            effects: list[object] = []
            deadline = now + self.lifecycle.drain_grace_s
            for replica in [r for r in job.replicas if (r.role, r.index) in set(pods)]:
                if replica.drain_deadline is None:
                    action = drain(replica_snapshot(replica), deadline)
                    write(tx, job, action, now)
                    effects.append(action)
            tx.add_event(job.key, cause, message, warning=True, at=now)
            return effects

        return apply

    def _preempt(self, cause: str, message: str, now: float) -> Write:
        """Stop the victim's processes (SIGTERM, SIGKILL after the stop grace: they may
        save the step they reached) and put it back in its queue, keeping its place.

        ``cause`` is the event's reason: ``Preempted`` for a higher priority,
        ``Reclaimed`` for a queue taking back its guarantee (the message names it)."""

        def apply(tx: Tx, victim: JobRow) -> list[object]:
            effects: list[object] = []
            ending = victim.outcome is not None or victim.deleted_at is not None
            for replica in list(victim.replicas):
                seen = replica_snapshot(replica)
                if seen.handle is not None and not seen.phase.is_terminal:
                    grace_s = self.lifecycle.stop_grace_s
                    if ending:
                        effects.append(Kill(seen.name, seen.handle, now))
                    else:
                        effects.append(Vacate(seen.name, seen.handle, grace_s))
                if not ending:
                    tx.delete_replica(victim, replica)
            if ending:
                return effects  # it ends anyway: its lifecycle records the exits
            victim.master_port = None
            victim.pending_code = victim.pending_message = None
            transition(tx, victim, JobPhase.PENDING, cause, message, now, warning=True)
            set_condition(victim, ConditionType.PREEMPTED, True, cause, message, now)
            return effects

        return apply

    def _bind(
        self, spec: TrainingJob, bind: Bind, launch: _Launch, now: float, waited: dict[int, float]
    ) -> Write:
        def apply(tx: Tx, job: JobRow) -> list[object]:
            if job.phase != JobPhase.PENDING.value or job.deleted_at is not None:
                return []  # deleted or changed since it was read
            if job.scheduled_at is None:
                waited[job.id] = now - job.created_at
            job.scheduled_at = now
            job.pending_code = job.pending_message = None
            nodes = sorted({p.node for p in bind.placements})
            message = f"placed {len(bind.placements)} replica(s) on {', '.join(nodes)}"
            if bind.note:
                message = f"{message} ({bind.note})"
            transition(tx, job, JobPhase.SCHEDULED, "Scheduled", message, now)
            return [_add_replicas(job, spec, launch)]

        return apply

    def _grow(self, spec: TrainingJob, launch: _Launch, now: float) -> Write:
        """Add elastic replicas in idle capacity; they join at the next step boundary."""

        def apply(tx: Tx, job: JobRow) -> list[object]:
            if job.phase != JobPhase.RUNNING.value or job.deleted_at or job.outcome:
                return []
            planned = _add_replicas(job, spec, launch)
            sizes = ", ".join(
                f"{role} {len(members(job.replicas, role)) - n}→{len(members(job.replicas, role))}"
                for role, n in _count_by_role(launch.placements).items()
            )
            names = ", ".join(launch.names)
            tx.add_event(job.key, "ScaledOut", f"{sizes}: added {names} (idle capacity)", at=now)
            return [planned]

        return apply


def _show_reason(reason: Reason | None, now: float) -> Write:
    """Record why a pending job waits, or why a running job cannot grow; an event only
    when the code changes, so a job that waits says so once, not once per pass."""

    def apply(tx: Tx, job: JobRow) -> list[object]:
        if reason is None:
            job.pending_code = job.pending_message = None
            return []
        pending = job.phase == JobPhase.PENDING.value
        if job.pending_code != reason.code:
            if pending:
                tx.add_event(job.key, reason.code, reason.message, at=now)
            else:
                message = f"cannot grow to the desired size ({reason.code}): {reason.message}"
                tx.add_event(job.key, "CannotGrow", message, at=now)
        job.pending_code, job.pending_message = reason.code, reason.message
        if pending:
            job.message = reason.message
        return []

    return apply


def _add_replicas(job: JobRow, spec: TrainingJob, launch: _Launch) -> Planned:
    """Add the planned replicas as launch intents; the launch comes after the commit."""
    for placement in launch.placements:
        row = ReplicaRow(
            role=placement.role,
            index=placement.index,
            phase=ReplicaPhase.PENDING.value,
            node=placement.node,
            cpu_millis=placement.cpu_millis,
            memory_bytes=placement.memory_bytes,
            gpu_ids=list(placement.gpu_ids),
            gpu_share=placement.gpu_share,
            port=0,
            restarts=0,
            starts=0,
        )
        job.replicas.append(row)
        record_intent(row, attempt=0)
    assign_ports(job, launch.ports)
    return Planned(job_snapshot(job), spec, launch.names)


def _replica(placement: Placement) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        role=placement.role,
        index=placement.index,
        phase=ReplicaPhase.PENDING,
        node=placement.node,
        gpu_ids=tuple(placement.gpu_ids),
        gpu_share=placement.gpu_share,
    )


def _pending_snapshot(row: JobRow) -> JobSnapshot:
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


def _count_by_role(replicas: Sequence[Placement]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.role] = counts.get(r.role, 0) + 1
    return counts
