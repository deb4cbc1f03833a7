"""Between store rows and the lifecycle's snapshots: read a row into a snapshot, and
write an action's changes onto a row (inside the applier's one transaction)."""

from __future__ import annotations

import uuid
from typing import Any

from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.actions import (
    Action,
    Event,
    ExpireAt,
    Finishing,
    Forget,
    ForgetJob,
    GangRestarted,
    Launch,
    ReplicaAction,
    Transition,
)
from tidemill.controller.conditions import transition
from tidemill.controller.model import JobSnapshot, Outcome, ReplicaSnapshot
from tidemill.engines.base import ReplicaHandle
from tidemill.store.store import Tx
from tidemill.store.tables import JobRow, ReplicaRow


def handle_of(data: dict[str, Any] | None) -> ReplicaHandle | None:
    """The engine handle a replica row keeps as JSON."""
    if not data:
        return None
    return ReplicaHandle(engine=str(data.get("engine", "")), data=dict(data.get("data", {})))


def handle_json(handle: ReplicaHandle | None) -> dict[str, Any] | None:
    return None if handle is None else {"engine": handle.engine, "data": dict(handle.data)}


def replica_snapshot(row: ReplicaRow) -> ReplicaSnapshot:
    return ReplicaSnapshot(
        role=row.role,
        index=row.index,
        phase=ReplicaPhase(row.phase),
        node=row.node,
        port=row.port,
        restarts=row.restarts,
        starts=row.starts,
        exit_code=row.exit_code,
        pid=row.pid,
        handle=handle_of(row.handle),
        launch_id=row.launch_id,
        log_path=row.log_path,
        started_at=row.started_at,
        finished_at=row.finished_at,
        next_start_at=row.next_start_at,
        drain_deadline=row.drain_deadline,
        kill_at=row.kill_at,
        message=row.message,
        gpu_ids=tuple(row.gpu_ids),
        gpu_share=row.gpu_share,
    )


def job_snapshot(row: JobRow) -> JobSnapshot:
    unresponsive = (row.master_state or {}).get("unresponsive") or {}
    outcome = row.outcome
    return JobSnapshot(
        id=row.id,
        uid=row.uid,
        namespace=row.namespace,
        name=row.name,
        phase=JobPhase(row.phase),
        created_at=row.created_at,
        started_at=row.started_at,
        desired=dict(row.desired),
        gang_restarts=row.gang_restarts,
        master_port=row.master_port,
        job_master_port=row.job_master_port,
        unresponsive={str(k): v for k, v in dict(unresponsive).items() if isinstance(v, int)},
        outcome=None
        if not outcome
        else Outcome(JobPhase(outcome["phase"]), str(outcome["reason"]), str(outcome["message"])),
        deleted=row.deleted_at is not None,
        expires_at=row.expires_at,
        replicas=tuple(replica_snapshot(r) for r in row.replicas),
    )


def set_replica(row: ReplicaRow, changes: dict[str, Any]) -> None:
    """Write snapshot-named field values onto a replica row."""
    for name, value in changes.items():
        if name == "phase":
            value = ReplicaPhase(value).value
        elif name == "handle":
            value = handle_json(value)
        elif name == "gpu_ids":
            value = list(value)
        setattr(row, name, value)


def write(tx: Tx, job: JobRow, action: Action, now: float) -> None:
    """Apply one action's row changes (engine calls are not made here)."""
    if isinstance(action, Forget):
        tx.delete_replica(job, replica_row(job, action.replica))
    elif isinstance(action, Launch):
        record_intent(replica_row(job, action.replica), action.attempt, action.launch_id)
    elif isinstance(action, ReplicaAction):
        set_replica(replica_row(job, action.replica), action.changes())
    elif isinstance(action, Transition):
        transition(
            tx, job, action.phase, action.reason, action.message, now, warning=action.warning
        )
    elif isinstance(action, Event):
        tx.add_event(
            job.key,
            action.reason,
            action.message,
            warning=action.warning,
            replica=action.replica,
            at=now,
        )
    elif isinstance(action, Finishing):
        outcome = action.outcome
        job.outcome = {
            "phase": outcome.phase.value,
            "reason": outcome.reason,
            "message": outcome.message,
        }
        job.message = f"finishing: {outcome.message}"
    elif isinstance(action, GangRestarted):
        job.gang_restarts = action.gang_restarts
        job.master_port = None
    elif isinstance(action, ExpireAt):
        job.expires_at = action.at
    elif isinstance(action, ForgetJob):
        # The job's message names who deleted it (set by Controller.delete). Its own
        # events go with it; the removal is a cluster event naming the job.
        tx.delete_job(job)
        tx.add_event(None, "Deleted", f"job {job.key} {job.message}; {action.message}", at=now)


def replica_row(job: JobRow, name: str) -> ReplicaRow:
    for row in job.replicas:
        if row.replica_name == name:
            return row
    raise LookupError(f"job {job.key} has no replica {name}")


def record_intent(replica: ReplicaRow, attempt: int, launch_id: str | None = None) -> str:
    """Mark ``replica`` Launching under a launch id (a new one unless given): written
    and committed before the engine is asked to launch it."""
    launch_id = launch_id or uuid.uuid4().hex
    set_replica(replica, Launch(replica.replica_name, attempt, launch_id).changes())
    replica.launch_id = launch_id
    return launch_id
