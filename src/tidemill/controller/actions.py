"""What the lifecycle step decides: small frozen actions, applied by one applier.

Each action that changes a replica says so in :meth:`changes` (new field values), so the
step's own working copy (:func:`evolve`) and the store rows (``controller/rows.py``)
change the same way. Engine calls are the applier's, after the rows are committed:
``Launch`` (after its intent), ``Terminate``, ``Kill`` and ``Drain``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.conditions import check_transition
from tidemill.controller.elastic import UNPLACED
from tidemill.controller.model import JobSnapshot, Outcome, ReplicaSnapshot
from tidemill.engines.base import ReplicaHandle

R = ReplicaPhase


@dataclass(frozen=True)
class ReplicaAction:
    replica: str
    """``role-index``"""

    def changes(self) -> dict[str, Any]:
        """The replica's new field values (names as in :class:`ReplicaSnapshot`)."""
        return {}


@dataclass(frozen=True)
class Observed(ReplicaAction):
    """Still running; its process id as the engine sees it now."""

    pid: int | None

    def changes(self) -> dict[str, Any]:
        return {"pid": self.pid}


@dataclass(frozen=True)
class Exited(ReplicaAction):
    """Its process is gone: Succeeded or Failed, Stopped when asked to stop, or BackOff
    when it was stopped to restart (a gang restart)."""

    phase: ReplicaPhase
    exit_code: int | None
    message: str
    at: float

    def changes(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "exit_code": self.exit_code,
            "message": self.message,
            "finished_at": self.at,
            "kill_at": None,
        }


@dataclass(frozen=True)
class Launch(ReplicaAction):
    """Start the replica: the applier records the intent (a ``launch_id``) and its
    ports, commits, then calls ``engine.launch``. ``launch_id`` is given when a
    recorded launch started nothing (found by adopt) and is made again."""

    attempt: int
    """``TIDEMILL_ATTEMPT``: launches begun before this one"""
    launch_id: str | None = None

    def changes(self) -> dict[str, Any]:
        return {
            "phase": R.LAUNCHING,
            "starts": self.attempt + 1,
            "next_start_at": None,
            "kill_at": None,
        }


@dataclass(frozen=True)
class Launched(ReplicaAction):
    """The engine started (or adopt found) the replica: record its handle."""

    handle: ReplicaHandle
    pid: int | None
    log_path: str | None
    at: float

    def changes(self) -> dict[str, Any]:
        return {
            "phase": R.RUNNING,
            "handle": self.handle,
            "pid": self.pid,
            "log_path": self.log_path,
            "started_at": self.at,
            "finished_at": None,
            "exit_code": None,
            "next_start_at": None,
            "kill_at": None,
            "message": "",
        }


@dataclass(frozen=True)
class Terminate(ReplicaAction):
    """SIGTERM now; killed at ``kill_at`` if still there; BackOff until ``restart_at``
    once gone, when given (else Stopped)."""

    handle: ReplicaHandle
    kill_at: float
    restart_at: float | None = None

    def changes(self) -> dict[str, Any]:
        return {"phase": R.STOPPING, "kill_at": self.kill_at, "next_start_at": self.restart_at}


@dataclass(frozen=True)
class Kill(ReplicaAction):
    """SIGKILL the replica's process tree now; try again at ``retry_at`` if it stays."""

    handle: ReplicaHandle
    retry_at: float
    stacks: bool = False
    """It hung: its stacks go into its log first (:mod:`tidemill.controller.last_stacks`)."""

    def changes(self) -> dict[str, Any]:
        return {"kill_at": self.retry_at}


@dataclass(frozen=True)
class Vacate(ReplicaAction):
    """SIGTERM a preempted replica whose row is gone (its resources are handed on at
    once) and SIGKILL it ``grace_s`` later: the grace lets an elastic worker stop at a
    step boundary and save the step it reached, which the job resumes from."""

    handle: ReplicaHandle
    grace_s: float


@dataclass(frozen=True)
class Drain(ReplicaAction):
    """Ask an elastic replica to leave at its next step boundary: it stops counting
    towards its role's size, gets SIGTERM when it runs (Stopping) and is killed at
    ``deadline``; one that does not run (``settle``) is marked Stopped."""

    handle: ReplicaHandle | None
    deadline: float
    settle: bool = False

    def changes(self) -> dict[str, Any]:
        changes: dict[str, Any] = {"drain_deadline": self.deadline}
        if self.handle is not None:
            changes.update(phase=R.STOPPING, kill_at=self.deadline, next_start_at=None)
        elif self.settle:
            changes.update(phase=R.STOPPED, next_start_at=None)
        return changes


@dataclass(frozen=True)
class Backoff(ReplicaAction):
    """Wait, then start again at ``restart_at``; ``restarts`` is the new charged count."""

    restart_at: float
    restarts: int

    def changes(self) -> dict[str, Any]:
        return {"phase": R.BACKOFF, "next_start_at": self.restart_at, "restarts": self.restarts}


@dataclass(frozen=True)
class Relocate(ReplicaAction):
    """Start it on ``node`` from now on: only for the job master, which takes no
    scheduled resources, when its own node is gone."""

    node: str

    def changes(self) -> dict[str, Any]:
        return {"node": self.node}


@dataclass(frozen=True)
class Unplace(ReplicaAction):
    """Lost with its node: Pending on no node until the scheduler places it again. It
    keeps its index, its port (peers reach it by name and port) and its charged restarts."""

    def changes(self) -> dict[str, Any]:
        return {
            "phase": R.PENDING,
            "node": UNPLACED,
            "handle": None,
            "pid": None,
            "gpu_ids": (),
            "gpu_share": 0.0,
            "next_start_at": None,
            "kill_at": None,
        }


@dataclass(frozen=True)
class Settle(ReplicaAction):
    """A replica that is not running (BackOff, a launch that started nothing) will not
    start again: Stopped."""

    def changes(self) -> dict[str, Any]:
        return {"phase": R.STOPPED, "next_start_at": None, "kill_at": None}


@dataclass(frozen=True)
class Forget(ReplicaAction):
    """Remove the replica from the job (it left after a scale-in, or its job was
    suspended)."""


@dataclass(frozen=True)
class Transition:
    phase: JobPhase
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False
    replica: str | None = None


@dataclass(frozen=True)
class Finishing:
    """The job's outcome is decided; it takes that phase once its processes are gone."""

    outcome: Outcome


@dataclass(frozen=True)
class GangRestarted:
    """The whole group restarts: a new rendezvous port, one more gang restart."""

    gang_restarts: int


@dataclass(frozen=True)
class ExpireAt:
    """When the finished job is removed (``ttlSecondsAfterFinished``); None: kept."""

    at: float | None


@dataclass(frozen=True)
class ForgetJob:
    """A deleted job whose processes are all gone: remove its row."""

    message: str
    """how it ended, after who deleted it (e.g. "its processes are gone")"""


Action = ReplicaAction | Transition | Event | Finishing | GangRestarted | ExpireAt | ForgetJob


def evolve(job: JobSnapshot, action: Action, now: float) -> JobSnapshot:
    """``job`` after ``action``: how the step sees the effect of what it decided."""
    if isinstance(action, Forget):
        kept = tuple(r for r in job.replicas if r.name != action.replica)
        return dataclasses.replace(job, replicas=kept)
    if isinstance(action, ReplicaAction):
        return dataclasses.replace(
            job,
            replicas=tuple(
                _changed(r, action.changes()) if r.name == action.replica else r
                for r in job.replicas
            ),
        )
    if isinstance(action, Transition):
        check_transition(job.phase, action.phase)
        started = job.started_at
        if action.phase is JobPhase.RUNNING and started is None:
            started = now
        if action.phase is JobPhase.SUSPENDED:
            return dataclasses.replace(job, phase=action.phase, started_at=None, outcome=None)
        return dataclasses.replace(job, phase=action.phase, started_at=started)
    if isinstance(action, Finishing):
        return dataclasses.replace(job, outcome=action.outcome)
    if isinstance(action, GangRestarted):
        return dataclasses.replace(job, gang_restarts=action.gang_restarts, master_port=None)
    if isinstance(action, ExpireAt):
        return dataclasses.replace(job, expires_at=action.at)
    return job


def evolve_all(job: JobSnapshot, actions: Sequence[Action], now: float) -> JobSnapshot:
    for action in actions:
        job = evolve(job, action, now)
    return job


def _changed(replica: ReplicaSnapshot, changes: dict[str, Any]) -> ReplicaSnapshot:
    return dataclasses.replace(replica, **changes)
