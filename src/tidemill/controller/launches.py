"""Launches as intents: recorded before the engine is asked, recorded again after.

1. Outside any transaction, the ports the launches need are chosen (``free_port``).
2. In the cycle's transaction, each replica gets its ``launch_id`` and ports and the
   phase Launching (:func:`record_intent`); the transaction commits.
3. Outside any transaction, ``engine.launch`` runs for each (:meth:`Launches.run`).
4. One more short transaction records the handles (Running), or the failure to start.

A control plane that dies between 2 and 4 finds Launching replicas when it comes back:
the applier asks ``engine.adopt`` for what that launch started, and the lifecycle step
launches it (same ``launch_id``) only when it started nothing. A launch whose replica
was removed meanwhile (its job deleted) is killed at once instead of recorded.

An engine that binds gangs itself (``launch_gang``: Kubernetes) gets every replica of a
job that starts or restarts whole in one call; if it cannot create and bind them all it
deletes what it made, and the job goes back to its queue (``BindFailed``) holding
nothing, instead of a part of the gang holding nodes. A launch that joins replicas still
running (a scale-out, a replacement, one replica's restart, the job master's) never
touches them: an elastic replica whose node went away between its placement and its
launch (``PlacementLost``) is dropped alone, to be placed again where there is room; one
the platform refused (``LaunchRefused``) is tried again after the job's restart backoff,
uncharged; one that could not start otherwise is a failed replica for its restart policy.

``TIDEMILL_FAULT_AFTER_LAUNCH=exit`` is a test hook: the process exits right after the
first ``engine.launch`` returns, before its handle is recorded (tests/e2e
test_launch_intent.py kills the server at exactly that point).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.actions import Backoff, Exited, Launched, Unplace
from tidemill.controller.conditions import transition
from tidemill.controller.elastic import MASTER_ROLE, is_static_gang
from tidemill.controller.launcher import JOB_MASTER_PORT, MASTER_PORT, Launcher
from tidemill.controller.model import JobSnapshot
from tidemill.controller.rows import replica_snapshot, set_replica
from tidemill.engines.base import (
    Engine,
    LaunchRefused,
    LaunchSpec,
    PlacementLost,
    ReplicaHandle,
)
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow, ReplicaRow

log = logging.getLogger(__name__)

FAULT_VAR = "TIDEMILL_FAULT_AFTER_LAUNCH"
"""Test hook: ``exit`` ends the process right after a launch, before it is recorded."""
FAULT_EXIT_CODE = 86


def fetch_ports(engine: Engine, needs: Mapping[str, str]) -> dict[str, int]:
    """slot -> a port free now on the slot's node (called outside any transaction)."""
    return {slot: engine.free_port(node) for slot, node in needs.items()}


def assign_ports(job: JobRow, ports: Mapping[str, int]) -> None:
    """Give the job the ports it lacks from ``ports`` (chosen before the transaction)."""
    if job.job_master_port is None and JOB_MASTER_PORT in ports:
        job.job_master_port = ports[JOB_MASTER_PORT]
    if job.master_port is None and MASTER_PORT in ports:
        job.master_port = ports[MASTER_PORT]
    for replica in job.replicas:
        if not replica.port and replica.replica_name in ports:
            replica.port = ports[replica.replica_name]


@dataclass(frozen=True)
class Planned:
    """A launch whose intent is committed: the job as committed, and which replicas."""

    job: JobSnapshot
    spec: TrainingJob
    replicas: tuple[str, ...]


class Failure(Enum):
    """What a launch that made no replica leads to."""

    START = "start"
    """it could not start: a failed replica, for its role's restart policy"""
    REQUEUE = "requeue"
    """the gang could not be bound whole: the job goes back to its queue"""
    DROP = "drop"
    """an elastic replica joining running ones lost its node: it alone is removed, to be
    placed again"""
    UNPLACE = "unplace"
    """any other replica joining running ones lost its node: it waits, unplaced, for the
    scheduler to place it again (see ``node_loss``)"""
    RETRY = "retry"
    """the platform refused a replica joining running ones: tried again, uncharged"""


@dataclass(frozen=True)
class _Result:
    job: JobSnapshot
    replica: str
    launch_id: str
    error: str = ""
    """why no replica was made (``handle`` is None)"""
    failure: Failure = Failure.START
    """what follows when no replica was made"""
    retry_at: float = 0.0
    """when a ``RETRY`` launches again"""
    handle: ReplicaHandle | None = None
    pid: int | None = None
    log_path: str | None = None


class Launches:
    def __init__(
        self, store: Store, engine: Engine, launcher: Launcher, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.engine = engine
        self.launcher = launcher
        self.clock = clock

    def run(self, planned: Sequence[Planned]) -> None:
        """Launch every planned replica (the job master first), then record them."""
        results = [result for plan in planned for result in self._launch(plan)]
        if results:
            self._record(results)

    def _launch(self, plan: Planned) -> list[_Result]:
        order = sorted(plan.replicas, key=lambda name: not name.startswith(MASTER_ROLE))
        launch_gang = getattr(self.engine, "launch_gang", None)
        in_place = _joins_running(plan)
        if launch_gang is not None and not in_place:
            return self._launch_gang(plan, order, launch_gang)
        results = []
        for name in order:
            replica = plan.job.replica(name)
            launch_id = replica.launch_id or ""
            try:
                spec = self.launcher.launch_spec(plan.job, plan.spec, replica)
                handle = self.engine.launch(spec)
            except PlacementLost as exc:
                # The replicas running go on without it, as without one lost with its
                # node; a gang starting whole is placed again whole.
                role = plan.spec.spec.roles.get(replica.role)
                if not in_place or role is None or is_static_gang(plan.spec):
                    failure = Failure.REQUEUE
                else:
                    failure = Failure.DROP if role.is_elastic else Failure.UNPLACE
                results.append(_Result(plan.job, name, launch_id, _error(exc), failure))
                continue
            except LaunchRefused as exc:
                log.warning("could not make %s %s now: %s", plan.job.key, name, exc)
                retry_at = self.clock() + plan.spec.spec.restart_backoff_seconds
                refused = _Result(plan.job, name, launch_id, _error(exc), Failure.RETRY, retry_at)
                results.append(refused)
                continue
            except Exception as exc:
                log.warning("could not start %s %s: %s", plan.job.key, name, exc)
                error = f"could not start: {_error(exc)}"
                results.append(_Result(plan.job, name, launch_id, error))
                continue
            if os.environ.get(FAULT_VAR) == "exit":
                os._exit(FAULT_EXIT_CODE)
            results.append(self._seen(plan.job, name, launch_id, handle))
        return results

    def _launch_gang(
        self,
        plan: Planned,
        order: Sequence[str],
        launch_gang: Callable[[Sequence[LaunchSpec]], list[ReplicaHandle]],
    ) -> list[_Result]:
        replicas = [plan.job.replica(name) for name in order]
        try:
            specs = [self.launcher.launch_spec(plan.job, plan.spec, r) for r in replicas]
            handles = launch_gang(specs)
        except Exception as exc:
            log.warning("could not start the gang of %s: %s", plan.job.key, exc)
            error, requeue = _error(exc), Failure.REQUEUE
            return [_Result(plan.job, r.name, r.launch_id or "", error, requeue) for r in replicas]
        if os.environ.get(FAULT_VAR) == "exit":
            os._exit(FAULT_EXIT_CODE)
        return [
            self._seen(plan.job, r.name, r.launch_id or "", handle)
            for r, handle in zip(replicas, handles, strict=True)
        ]

    def _seen(self, job: JobSnapshot, name: str, launch_id: str, handle: ReplicaHandle) -> _Result:
        try:
            pid = self.engine.observe(handle).pid
            log_path = self.engine.log_path(handle)
        except Exception:
            pid, log_path = None, None
        return _Result(job, name, launch_id, handle=handle, pid=pid, log_path=log_path)

    def _record(self, results: Sequence[_Result]) -> None:
        """One short transaction for the handles; launches no longer wanted are killed."""
        now = self.clock()
        unwanted: list[ReplicaHandle] = []
        try:
            with self.store.transaction() as tx:
                rows = {r.id: r for r in tx.jobs_by_id(sorted({x.job.id for x in results}))}
                for result in [r for r in results if r.failure is Failure.REQUEUE]:
                    row = rows.pop(result.job.id, None)
                    if row is not None:
                        unwanted.extend(_requeue(tx, row, result.error, now))
                for result in [r for r in results if r.failure is not Failure.REQUEUE]:
                    row = rows.get(result.job.id)
                    replica = _intended(row, result)
                    if replica is None or row is None:
                        if result.handle is not None:
                            unwanted.append(result.handle)
                        continue
                    if result.failure in (Failure.DROP, Failure.UNPLACE):
                        elastic = result.failure is Failure.DROP
                        _drop(tx, row, replica, result.error, now, elastic)
                        continue
                    if result.failure is Failure.RETRY:
                        _retry(tx, row, replica, result, now)
                        continue
                    if result.handle is None:
                        failed = Exited(
                            result.replica, ReplicaPhase.FAILED, None, result.error, now
                        )
                        set_replica(replica, failed.changes())
                        tx.add_event(
                            row.key,
                            "ReplicaFailed",
                            f"{result.replica} {result.error}",
                            warning=True,
                            replica=result.replica,
                            at=now,
                        )
                        continue
                    launched = Launched(
                        result.replica, result.handle, result.pid, result.log_path, now
                    )
                    set_replica(replica, launched.changes())
        except Exception:
            # The intents stay: the next cycle adopts these launches.
            log.exception("could not record %d launch(es); adopting them next cycle", len(results))
            return
        for handle in unwanted:
            self._kill(handle)

    def _kill(self, handle: ReplicaHandle) -> None:
        try:
            self.engine.kill(handle)
        except Exception:
            log.exception("could not kill an unwanted launch %s", handle)


def _requeue(tx: Tx, row: JobRow, error: str, now: float) -> list[ReplicaHandle]:
    """Put a job whose gang could not be bound back in its queue, holding nothing; the
    handles of any replica it still had, to kill."""
    if row.outcome is not None or row.deleted_at is not None:
        return []  # it ends anyway: its lifecycle records that
    handles = []
    for replica in list(row.replicas):
        seen = replica_snapshot(replica)
        if seen.handle is not None and not seen.phase.is_terminal:
            handles.append(seen.handle)
        tx.delete_replica(row, replica)
    row.master_port = None
    message = f"the gang could not be bound whole and was requeued: {error}"
    transition(tx, row, JobPhase.PENDING, "BindFailed", message, now, warning=True)
    return handles


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _joins_running(plan: Planned) -> bool:
    """Whether the launch joins replicas of the job that still run (a scale-out, a
    replacement, one replica's restart) rather than starting its gang whole."""
    live = (ReplicaPhase.RUNNING, ReplicaPhase.STOPPING)
    return any(
        r.role != MASTER_ROLE and r.name not in plan.replicas and r.phase in live
        for r in plan.job.replicas
    )


def _drop(tx: Tx, row: JobRow, replica: ReplicaRow, error: str, now: float, elastic: bool) -> None:
    """A replica whose node is gone before it started: removed if ``elastic`` (the
    scheduler places a replacement), else unplaced for the scheduler to place again, as
    for one lost with its node."""
    name = replica.replica_name
    message = f"{name} could not start on {replica.node}: {error}; "
    if elastic:
        tx.delete_replica(row, replica)
        message += "the others go on, and a replacement is placed where there is room"
    else:
        set_replica(replica, Unplace(name).changes())
        message += "it is placed again where there is room while the others keep running"
    tx.add_event(row.key, "ReplicaLost", message, warning=True, replica=name, at=now)


def _retry(tx: Tx, row: JobRow, replica: ReplicaRow, result: _Result, now: float) -> None:
    """Launch again after the backoff a replica the platform refused, uncharged: an API
    that failed is not the replica's fault, and the others keep running."""
    name = replica.replica_name
    set_replica(replica, Backoff(name, result.retry_at, replica.restarts).changes())
    wait_s = max(0.0, result.retry_at - now)
    message = (
        f"{name} could not be made on {replica.node}: {result.error}; trying again in "
        f"{wait_s:g}s (not counted against maxRestarts)"
    )
    tx.add_event(row.key, "LaunchFailed", message, warning=True, replica=name, at=now)


def _intended(row: JobRow | None, result: _Result) -> ReplicaRow | None:
    """The replica row still waiting for this launch. A job deleted or finishing
    meanwhile gets the handle too: its lifecycle stops the replica like any other."""
    if row is None:
        return None
    for replica in row.replicas:
        if replica.replica_name == result.replica:
            same = replica.launch_id == result.launch_id
            waiting = replica.phase == ReplicaPhase.LAUNCHING.value
            return replica if same and waiting else None
    return None
