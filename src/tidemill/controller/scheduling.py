"""One scheduling step: snapshot the store, ask the pure scheduler, apply its decisions.

The snapshot is read without holding the store's write lock, so submissions are not
held up while the scheduler thinks; decisions are then applied in one short
transaction. Only changed pending reasons are written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tidemill.api.job import TrainingJob
from tidemill.api.status import ConditionType, JobPhase, ReplicaPhase
from tidemill.controller.conditions import set_condition, transition
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, members, needs_master
from tidemill.controller.job_sync import JobSync
from tidemill.controller.snapshot import (
    grow_request,
    job_request,
    node_info,
    queue_info,
    running_job,
)
from tidemill.scheduler.core import schedule
from tidemill.scheduler.types import Bind, ClusterState, JobRequest, Placement, SchedulerConfig
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow, ReplicaRow

ACTIVE_PHASES = [JobPhase.SCHEDULED.value, JobPhase.RUNNING.value, JobPhase.RESTARTING.value]


@dataclass
class CycleStats:
    """What the last cycle did; read by /metrics."""

    schedule_seconds: float = 0.0
    queue_latencies_s: list[float] = field(default_factory=list)


class SchedulingStep:
    def __init__(
        self,
        store: Store,
        jobs: JobSync,
        spec_of: Callable[[JobRow], TrainingJob],
        config: SchedulerConfig,
    ) -> None:
        self.store = store
        self.jobs = jobs
        self.spec_of = spec_of
        self.config = config
        self._requests: dict[int, tuple[tuple[int, tuple[tuple[str, int], ...]], JobRequest]] = {}

    def run(self, now: float, stats: CycleStats) -> bool:
        """Returns True when something was bound or preempted."""
        with self.store.read() as tx:
            pending_rows = tx.queued_jobs()
            holding = tx.jobs(phases=ACTIVE_PHASES)
            if not pending_rows and not any(self._may_grow(j) for j in holding):
                return False
            state = ClusterState(
                nodes=tuple(node_info(n) for n in tx.nodes()),
                queues={q.name: queue_info(q) for q in tx.queues()},
                running=tuple(running_job(j, self.spec_of(j)) for j in holding),
            )
            requests = [self._request(j) for j in pending_rows]
            self._forget_requests({j.id for j in pending_rows})
            requests += [
                growth
                for j in holding
                if j.phase == JobPhase.RUNNING.value
                and (growth := grow_request(j, self.spec_of(j))) is not None
            ]
            shown = {j.key: (j.pending_code, j.pending_message) for j in pending_rows}
            ids = {j.key: j.id for j in [*pending_rows, *holding]}
        started = time.perf_counter()
        decisions = schedule(state, requests, self.config)
        stats.schedule_seconds = time.perf_counter() - started
        changed = {
            key: reason
            for key, reason in decisions.pending.items()
            if shown.get(key) != (reason.code, reason.message)
        }
        resized = decisions.grows or decisions.shrinks
        if not (decisions.binds or decisions.preemptions or changed or resized):
            return False
        touched = (
            {p.victim for p in decisions.preemptions}
            | {b.job for b in decisions.binds}
            | {g.job for g in decisions.grows}
            | {s.job for s in decisions.shrinks}
        )
        with self.store.transaction() as tx:
            rows = {r.key: r for r in tx.jobs_by_id([ids[k] for k in touched | set(changed)])}
            for shrink in decisions.shrinks:
                self._shrink(tx, rows[shrink.job], shrink.pods, shrink.message, now)
            for preemption in decisions.preemptions:
                self._preempt(tx, rows[preemption.victim], preemption.message, now)
            for bind in decisions.binds:
                job = rows[bind.job]
                if job.scheduled_at is None:
                    stats.queue_latencies_s.append(now - job.created_at)
                self._bind(tx, job, bind, now)
            for grow in decisions.grows:
                self._grow(tx, rows[grow.job], grow, now)
            for key, reason in changed.items():
                job = rows[key]
                if job.pending_code != reason.code:
                    tx.add_event(key, reason.code, reason.message, at=now)
                job.pending_code, job.pending_message = reason.code, reason.message
                job.message = reason.message
        return bool(decisions.binds or decisions.preemptions or resized)

    def _request(self, row: JobRow) -> JobRequest:
        """The scheduler's view of a pending job, rebuilt only when its size or priority
        changes: a long backlog is mostly the same jobs pass after pass."""
        key = (row.priority, tuple(sorted(row.desired.items())))
        cached = self._requests.get(row.id)
        if cached is None or cached[0] != key:
            cached = (key, job_request(row, self.spec_of(row)))
            self._requests[row.id] = cached
        return cached[1]

    def _forget_requests(self, pending_ids: set[int]) -> None:
        for job_id in [i for i in self._requests if i not in pending_ids]:
            del self._requests[job_id]

    def _may_grow(self, job: JobRow) -> bool:
        return job.phase == JobPhase.RUNNING.value and is_elastic(self.spec_of(job))

    def _shrink(
        self, tx: Tx, job: JobRow, pods: tuple[tuple[str, int], ...], message: str, now: float
    ) -> None:
        """Remove elastic replicas for a higher-priority job; the rest train on in place."""
        leaving = [r for r in job.replicas if (r.role, r.index) in set(pods)]
        for replica in leaving:
            if replica.handle:
                self.jobs.engine.stop(self.jobs.handle(replica), self.jobs.drain_grace_s)
            tx.delete_replica(job, replica)
        tx.add_event(job.key, "Shrunk", message, warning=True, at=now)

    def _grow(self, tx: Tx, job: JobRow, grow: Bind, now: float) -> None:
        """Add elastic replicas in idle capacity; they join at the next step boundary."""
        spec = self.spec_of(job)
        added = [self._new_replica(p) for p in grow.placements]
        job.replicas.extend(added)
        for replica in added:
            self.jobs.launcher.launch(job, spec, replica, now)
        names = ", ".join(r.replica_name for r in added)
        sizes = ", ".join(
            f"{role} {len(members(job.replicas, role)) - n}→{len(members(job.replicas, role))}"
            for role, n in _count_by_role(added).items()
        )
        tx.add_event(job.key, "ScaledOut", f"{sizes}: added {names} (idle capacity)", at=now)

    @staticmethod
    def _new_replica(placement: Placement) -> ReplicaRow:
        return ReplicaRow(
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

    def _master_replica(self, job: JobRow, bind: Bind) -> ReplicaRow:
        """The job master takes no scheduled resources; it lives beside the first replica."""
        node = bind.placements[0].node
        return self._new_replica(Placement(MASTER_ROLE, 0, node, cpu_millis=0, memory_bytes=0))

    def _preempt(self, tx: Tx, victim: JobRow, message: str, now: float) -> None:
        """Stop the victim and put it back in its queue, keeping its place (FIFO id)."""
        self.jobs.stop_replicas(victim, ReplicaPhase.STOPPED, now)
        for replica in list(victim.replicas):
            tx.delete_replica(victim, replica)
        victim.master_port = None
        transition(tx, victim, JobPhase.PENDING, "Preempted", message, now, warning=True)
        set_condition(victim, ConditionType.PREEMPTED, True, "Preempted", message, now)

    def _bind(self, tx: Tx, job: JobRow, bind: Bind, now: float) -> None:
        spec = self.spec_of(job)
        job.replicas.extend(self._new_replica(p) for p in bind.placements)
        if needs_master(spec):
            job.replicas.append(self._master_replica(job, bind))
        job.scheduled_at = now
        job.pending_code = job.pending_message = None
        nodes = sorted({p.node for p in bind.placements})
        transition(
            tx,
            job,
            JobPhase.SCHEDULED,
            "Scheduled",
            f"placed {len(bind.placements)} replica(s) on {', '.join(nodes)}",
            now,
        )
        # The master first: workers register with it (and lease data) as they start.
        for replica in sorted(job.replicas, key=lambda r: r.role != MASTER_ROLE):
            self.jobs.launcher.launch(job, spec, replica, now)
        transition(
            tx, job, JobPhase.RUNNING, "Running", f"{len(job.replicas)} replica(s) started", now
        )


def _count_by_role(replicas: list[ReplicaRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.role] = counts.get(r.role, 0) + 1
    return counts
