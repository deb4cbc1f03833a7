"""Suspending and resuming a job on request (Kubernetes Job's ``suspend``, Kubeflow's
``runPolicy.suspend``, ``vcctl job suspend``).

A suspended job holds nothing and waits outside its queue: a team frees its share for
a while, an operator drains a node pool, a job waits for its data to land. Both are
one short transaction on the job's row from an API thread; no engine call is made
here, so neither waits for a process:

- **suspend** a queued job: ``Suspended`` at once. A job that holds resources gets a
  suspension as its outcome: the lifecycle winds it down as it winds down a finished
  job (SIGTERM, so the runtime saves the step it reached; SIGKILL after the stop
  grace), forgets its replicas and moves it to ``Suspended``.
- **resume** a suspended job: back to ``Pending`` in its queue, ordered as any queued
  job. Placed again like a preempted job, its first epoch restores its newest
  checkpoint; its job master's state (data positions) was kept in its row.
"""

from __future__ import annotations

from collections.abc import Callable

from tidemill.api.errors import ConflictError, job_not_found
from tidemill.api.status import JobPhase
from tidemill.controller.conditions import transition
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow

SUSPENDED = "Suspended"
"""The reason of the transition to ``Suspended`` (and of its condition)."""
RESUMED = "Resumed"
"""The reason of the transition from ``Suspended`` back to ``Pending``."""


def suspend(
    store: Store, clock: Callable[[], float], namespace: str, name: str, actor: str
) -> None:
    """Suspend the job (nothing changes if it is suspended or suspending already).

    A job that is finishing or finished cannot be suspended (:class:`ConflictError`)."""
    with store.transaction() as tx:
        job = _found(tx, namespace, name)
        phase = JobPhase(job.phase)
        if phase is JobPhase.SUSPENDED or suspending(job):
            return
        if phase.is_terminal or job.outcome is not None:
            raise ConflictError(_settled(job, "suspend"))
        now = clock()
        message = f"suspended by {actor}; `tidemill resume {job.name}` queues it again"
        if phase is JobPhase.PENDING:
            transition(tx, job, JobPhase.SUSPENDED, SUSPENDED, message, now)
            return
        job.outcome = {"phase": JobPhase.SUSPENDED.value, "reason": SUSPENDED, "message": message}
        job.message = f"suspending: stopping its replicas (asked by {actor})"
        tx.add_event(job.key, "Suspending", job.message, at=now)


def resume(store: Store, clock: Callable[[], float], namespace: str, name: str, actor: str) -> None:
    """Queue a suspended job again.

    Only a suspended job can be resumed (:class:`ConflictError` naming its phase): one
    still stopping for its suspension is not yet, a queued or running one has nothing
    to resume, and a finished one never will."""
    with store.transaction() as tx:
        job = _found(tx, namespace, name)
        phase = JobPhase(job.phase)
        if suspending(job):
            raise ConflictError(
                f"job {job.key} is still stopping for its suspension; resume it once its "
                "phase is Suspended (`tidemill suspend --wait` waits for that)"
            )
        if phase.is_terminal or job.outcome is not None:
            raise ConflictError(_settled(job, "resume"))
        if phase is not JobPhase.SUSPENDED:
            raise ConflictError(f"job {job.key} is not suspended ({job.phase}); nothing to resume")
        now = clock()
        message = f"resumed by {actor}; queued again (it restores its newest checkpoint, if any)"
        transition(tx, job, JobPhase.PENDING, RESUMED, message, now)


def _found(tx: Tx, namespace: str, name: str) -> JobRow:
    job = tx.job(namespace, name)
    if job is None or job.deleted_at is not None:
        raise job_not_found(name, namespace)
    return job


def suspending(job: JobRow) -> bool:
    """Stopping for a suspension: its outcome is decided, its processes not yet gone."""
    return job.outcome is not None and job.outcome["phase"] == JobPhase.SUSPENDED.value


def _settled(job: JobRow, verb: str) -> str:
    if JobPhase(job.phase).is_terminal:
        return f"job {job.key} has finished ({job.phase}); nothing to {verb}"
    assert job.outcome is not None
    return f"job {job.key} is finishing ({job.outcome['message']}); nothing to {verb}"
