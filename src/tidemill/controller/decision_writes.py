"""The writes that apply the scheduler's decisions to job rows, one per decision.

Each returns a :data:`~tidemill.controller.isolation.Write`: it runs inside the pass's
one short transaction, checks the row has not changed in a way that voids the decision
since it was read, and returns the effects (launches, stops) made after the commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tidemill.api.job import TrainingJob
from tidemill.api.status import ConditionType, JobPhase, ReplicaPhase
from tidemill.controller.actions import Kill, Vacate
from tidemill.controller.conditions import set_condition, transition
from tidemill.controller.elastic import UNPLACED, members, unplaced
from tidemill.controller.isolation import Write
from tidemill.controller.launches import Planned, assign_ports
from tidemill.controller.lifecycle import drain
from tidemill.controller.rows import job_snapshot, record_intent, replica_snapshot, write
from tidemill.scheduler.types import Bind, Placement, Reason
from tidemill.store.store import Tx
from tidemill.store.tables import JobRow, ReplicaRow

GROWING = (JobPhase.RUNNING.value, JobPhase.RESTARTING.value)
"""Job phases in which replicas are added: lost ones again in both, elastic ones running."""


@dataclass
class NewReplicas:
    """New replicas for a bind or a grow, with the ports chosen for them (outside any
    transaction)."""

    placements: tuple[Placement, ...]
    ports: dict[str, int]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{p.role}-{p.index}" for p in self.placements)


def write_shrink(
    pods: Sequence[tuple[str, int]], cause: str, message: str, now: float, drain_grace_s: float
) -> Write:
    """Ask elastic replicas to leave for a higher-priority job, or for a queue taking
    back its guarantee (``cause``: the event's reason); the rest train on."""

    def apply(tx: Tx, job: JobRow) -> list[object]:
        effects: list[object] = []
        deadline = now + drain_grace_s
        for replica in [r for r in job.replicas if (r.role, r.index) in set(pods)]:
            if replica.drain_deadline is None:
                action = drain(replica_snapshot(replica), deadline)
                write(tx, job, action, now)
                effects.append(action)
        tx.add_event(job.key, cause, message, warning=True, at=now)
        return effects

    return apply


def write_preempt(cause: str, message: str, now: float, stop_grace_s: float) -> Write:
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
                if ending:
                    effects.append(Kill(seen.name, seen.handle, now))
                else:
                    effects.append(Vacate(seen.name, seen.handle, stop_grace_s))
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


def write_bind(
    spec: TrainingJob, bind: Bind, launch: NewReplicas, now: float, waited: dict[int, float]
) -> Write:
    """Bind a pending job: ``Scheduled``, its replicas as launch intents; ``waited``
    gets how long it queued, if this is its first bind."""

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


def write_grow(spec: TrainingJob, launch: NewReplicas, now: float) -> Write:
    """Add elastic replicas in idle capacity, and place again the replicas lost with
    their node; they join at the next step boundary."""

    def apply(tx: Tx, job: JobRow) -> list[object]:
        if job.phase not in GROWING or job.deleted_at or job.outcome:
            return []
        waiting = {r.replica_name for r in unplaced(job.replicas)}
        again = [p for p in launch.placements if f"{p.role}-{p.index}" in waiting]
        added = [p for p in launch.placements if p not in again]
        if added and job.phase != JobPhase.RUNNING.value:
            return []  # it restarts since it was read: it grows once running again
        taken = {(r.role, r.index) for r in job.replicas if r.node != UNPLACED}
        if any((p.role, p.index) in taken for p in launch.placements):
            return []  # changed since it was read: placed again next pass
        planned = _add_replicas(job, spec, launch)
        if added:
            sizes = ", ".join(
                f"{role} {len(members(job.replicas, role)) - n}→{len(members(job.replicas, role))}"
                for role, n in _count_by_role(added).items()
            )
            names = ", ".join(f"{p.role}-{p.index}" for p in added)
            message = f"{sizes}: added {names} (idle capacity)"
            tx.add_event(job.key, "ScaledOut", message, at=now)
        for p in again:
            message = f"{p.role}-{p.index} placed again on {p.node}"
            tx.add_event(job.key, "ReplicaPlaced", message, replica=f"{p.role}-{p.index}", at=now)
        return [planned]

    return apply


def write_requeue(message: str, now: float, stop_grace_s: float) -> Write:
    """Put back in its queue a job with a replica lost with its node that no node
    has room for: a gang holds all of its resources or none."""
    preempt = write_preempt("Requeued", message, now, stop_grace_s)

    def apply(tx: Tx, job: JobRow) -> list[object]:
        if job.phase not in GROWING or not unplaced(job.replicas):
            return []  # changed since it was read
        return list(preempt(tx, job))

    return apply


def write_reason(reason: Reason | None, now: float) -> Write:
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


def _add_replicas(job: JobRow, spec: TrainingJob, launch: NewReplicas) -> Planned:
    """Add the planned replicas as launch intents; the launch comes after the commit."""
    waiting = {(r.role, r.index): r for r in unplaced(job.replicas)}
    for placement in launch.placements:
        row = waiting.get((placement.role, placement.index))
        if row is None:
            row = ReplicaRow(
                role=placement.role, index=placement.index, port=0, restarts=0, starts=0
            )
            job.replicas.append(row)
        row.phase = ReplicaPhase.PENDING.value
        row.node = placement.node
        row.cpu_millis = placement.cpu_millis
        row.memory_bytes = placement.memory_bytes
        row.gpu_ids = list(placement.gpu_ids)
        row.gpu_share = placement.gpu_share
        record_intent(row, attempt=row.starts)
    assign_ports(job, launch.ports)
    return Planned(job_snapshot(job), spec, launch.names)


def _count_by_role(replicas: Sequence[Placement]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.role] = counts.get(r.role, 0) + 1
    return counts
