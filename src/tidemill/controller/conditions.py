"""Phase changes: one place that moves a job between phases, stamps conditions and
writes the matching event, so the three never disagree.

Which moves are allowed is a table (:data:`ALLOWED`); a move outside it is a bug in the
controller, raised as :class:`IllegalTransition`, and fails only the job it concerns.
"""

from __future__ import annotations

from tidemill.api.status import ConditionType, JobPhase
from tidemill.store.store import Tx
from tidemill.store.tables import JobRow

P = JobPhase
ALLOWED: dict[JobPhase, frozenset[JobPhase]] = {
    P.PENDING: frozenset({P.SCHEDULED, P.SUSPENDED, P.FAILED}),
    P.SCHEDULED: frozenset(
        {P.RUNNING, P.RESTARTING, P.PENDING, P.SUSPENDED, P.SUCCEEDED, P.FAILED}
    ),
    P.RUNNING: frozenset({P.RESTARTING, P.PENDING, P.SUSPENDED, P.SUCCEEDED, P.FAILED}),
    P.RESTARTING: frozenset({P.RUNNING, P.PENDING, P.SUSPENDED, P.SUCCEEDED, P.FAILED}),
    P.SUSPENDED: frozenset({P.PENDING}),
    P.SUCCEEDED: frozenset(),
    P.FAILED: frozenset(),
}
"""phase -> the phases a job may move to from it. Scheduled and Running jobs go back to
Pending only when preempted; a suspended job only to Pending, when resumed; finished
jobs (Succeeded, Failed) never move again."""

_PHASE_CONDITIONS = {
    JobPhase.PENDING: ConditionType.PENDING,
    JobPhase.SCHEDULED: ConditionType.SCHEDULED,
    JobPhase.RUNNING: ConditionType.RUNNING,
    JobPhase.RESTARTING: ConditionType.RESTARTING,
    JobPhase.SUSPENDED: ConditionType.SUSPENDED,
    JobPhase.SUCCEEDED: ConditionType.SUCCEEDED,
    JobPhase.FAILED: ConditionType.FAILED,
}


class IllegalTransition(ValueError):
    """A move the table does not allow: a controller bug, never the user's doing."""


def check_transition(current: JobPhase, target: JobPhase) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is allowed (staying
    in the same phase always is)."""
    if current is not target and target not in ALLOWED[current]:
        allowed = ", ".join(sorted(ALLOWED[current])) or "none: it has finished"
        raise IllegalTransition(
            f"a job in phase {current} cannot move to {target} (allowed: {allowed})"
        )


def set_condition(
    job: JobRow, kind: ConditionType, status: bool, reason: str, message: str, now: float
) -> None:
    """Upsert one condition; its time moves only when its status flips."""
    conditions = [dict(c) for c in job.conditions]
    for condition in conditions:
        if condition["type"] == kind.value:
            if condition["status"] != status:
                condition["last_transition_time"] = now
            condition.update(status=status, reason=reason, message=message)
            break
    else:
        conditions.append(
            {
                "type": kind.value,
                "status": status,
                "reason": reason,
                "message": message,
                "last_transition_time": now,
            }
        )
    job.conditions = conditions


def transition(
    tx: Tx,
    job: JobRow,
    phase: JobPhase,
    reason: str,
    message: str,
    now: float,
    *,
    warning: bool = False,
) -> None:
    """Move ``job`` to ``phase`` (no-op if already there) and record why."""
    if job.phase == phase.value:
        return
    check_transition(JobPhase(job.phase), phase)
    for other, kind in _PHASE_CONDITIONS.items():
        if other is not phase:
            current = next((c for c in job.conditions if c["type"] == kind.value), None)
            if current is not None and current["status"]:
                set_condition(job, kind, False, reason, message, now)
    set_condition(job, _PHASE_CONDITIONS[phase], True, reason, message, now)
    preempted = any(c["type"] == ConditionType.PREEMPTED.value for c in job.conditions)
    if phase is JobPhase.RUNNING and preempted:
        set_condition(job, ConditionType.PREEMPTED, False, reason, message, now)
    job.phase = phase.value
    job.message = message
    if phase.is_terminal:
        job.finished_at = now
    if phase is JobPhase.RUNNING and job.started_at is None:
        job.started_at = now
    if phase is JobPhase.SUSPENDED:
        # It holds nothing now; activeDeadlineSeconds counts again from its next start,
        # as a Kubernetes Job's does after a suspension.
        job.outcome = None
        job.started_at = job.master_port = None
        job.pending_code = job.pending_message = None
    tx.add_event(job.key, reason, message, warning=warning, at=now)
