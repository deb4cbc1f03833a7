"""Moves one running job on: observe its replicas, then apply the deadline, the success
policy and the restart policy, and start replicas whose backoff is over."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tidemill.api.job import Mode, RestartPolicy, TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.conditions import transition
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, members, surplus
from tidemill.controller.launcher import Launcher
from tidemill.controller.policies import (
    ReplicaState,
    RestartAction,
    counts_for_success,
    decide_restart,
    job_succeeded,
)
from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.store.store import Tx
from tidemill.store.tables import JobRow, ReplicaRow

MAX_MASTER_RESTARTS = 10


class JobSync:
    def __init__(
        self,
        engine: Engine,
        launcher: Launcher,
        spec_of: Callable[[JobRow], TrainingJob],
        stop_grace_s: float,
        drain_grace_s: float,
    ) -> None:
        self.engine = engine
        self.launcher = launcher
        self.spec_of = spec_of
        self.stop_grace_s = stop_grace_s
        self.drain_grace_s = drain_grace_s
        """How long a replica asked to leave (scale-in) has before it is killed."""

    def handle(self, replica: ReplicaRow) -> ReplicaHandle:
        data = replica.handle or {}
        return ReplicaHandle(engine=str(data.get("engine", "")), data=dict(data.get("data", {})))

    def stop_replicas(self, job: JobRow, phase: ReplicaPhase, now: float) -> None:
        self._stop(job.replicas, phase, now)

    def _stop(self, replicas: Sequence[ReplicaRow], phase: ReplicaPhase, now: float) -> None:
        for replica in replicas:
            if replica.phase in (ReplicaPhase.RUNNING.value, ReplicaPhase.PENDING.value):
                if replica.handle:
                    self.engine.stop(self.handle(replica), self.stop_grace_s)
                replica.phase = phase.value
                replica.finished_at = now
            elif replica.phase == ReplicaPhase.BACKOFF.value:
                replica.phase = phase.value
                replica.next_start_at = None

    def finish(
        self, tx: Tx, job: JobRow, phase: JobPhase, reason: str, message: str, now: float
    ) -> None:
        """End the job: stop what still runs, record the outcome, start its TTL clock."""
        self.stop_replicas(job, ReplicaPhase.STOPPED, now)
        transition(tx, job, phase, reason, message, now, warning=phase is JobPhase.FAILED)
        ttl = self.spec_of(job).spec.ttl_seconds_after_finished
        job.expires_at = None if ttl is None else now + ttl

    def sync(self, tx: Tx, job: JobRow, now: float) -> bool:
        """Observe and move one active job on; True when it ended (resources freed)."""
        spec = self.spec_of(job)
        self._observe(tx, job, now)
        deadline = spec.spec.active_deadline_seconds
        if deadline is not None and job.started_at is not None and now - job.started_at > deadline:
            self.finish(
                tx,
                job,
                JobPhase.FAILED,
                "DeadlineExceeded",
                f"ran longer than activeDeadlineSeconds={deadline}",
                now,
            )
            return True
        self._drain(tx, job, now)
        self._scale_in(tx, job, spec, now)
        states = [ReplicaState(r.role, r.index, ReplicaPhase(r.phase)) for r in job.replicas]
        if job_succeeded(spec.spec.success_policy, states):
            self.finish(tx, job, JobPhase.SUCCEEDED, "JobSucceeded", _success_message(job), now)
            return True
        if not self._apply_restart_policy(tx, job, spec, now):
            return True
        if not self._restart_master(tx, job, now):
            return True
        self._start_due(tx, job, spec, now)
        waiting = [r for r in job.replicas if r.phase == ReplicaPhase.BACKOFF.value]
        if not waiting and job.phase != JobPhase.RUNNING.value:
            live = sum(r.phase == ReplicaPhase.RUNNING.value for r in job.replicas)
            transition(tx, job, JobPhase.RUNNING, "Running", f"{live} replica(s) running", now)
        return False

    def _observe(self, tx: Tx, job: JobRow, now: float) -> None:
        given_up = (job.master_state or {}).get("unresponsive") or {}
        for replica in job.replicas:
            if replica.phase != ReplicaPhase.RUNNING.value or not replica.handle:
                continue
            if replica.pid is not None and given_up.get(replica.replica_name) == replica.pid:
                self._stop_unresponsive(tx, job, replica, now)
            seen = self.engine.observe(self.handle(replica))
            if seen.running:
                if seen.pid is not None:
                    replica.pid = seen.pid
                continue
            replica.exit_code = seen.exit_code
            replica.finished_at = now
            replica.message = seen.message
            name = replica.replica_name
            if seen.exit_code == 0:
                replica.phase = ReplicaPhase.SUCCEEDED.value
                tx.add_event(job.key, "ReplicaSucceeded", f"{name} exited 0", replica=name, at=now)
            else:
                replica.phase = ReplicaPhase.FAILED.value
                shown = "was lost" if seen.exit_code is None else f"exited {seen.exit_code}"
                generic = seen.message in ("", f"exited with code {seen.exit_code}")
                detail = "" if generic else f": {seen.message}"
                tx.add_event(
                    job.key,
                    "ReplicaFailed",
                    f"{name} {shown}{detail}",
                    warning=True,
                    replica=name,
                    at=now,
                )

    def _stop_unresponsive(self, tx: Tx, job: JobRow, replica: ReplicaRow, now: float) -> None:
        """The job master gave up on this process (no heartbeat: it may hold the GIL in
        native code, or its machine is gone); kill it so its restart policy applies."""
        name = replica.replica_name
        tx.add_event(
            job.key,
            "ReplicaUnresponsive",
            f"{name} (pid {replica.pid}) stopped answering the job master; killed it",
            warning=True,
            replica=name,
            at=now,
        )
        self.engine.stop(self.handle(replica), grace_s=0)

    def _apply_restart_policy(self, tx: Tx, job: JobRow, spec: TrainingJob, now: float) -> bool:
        """Returns False when the job has ended (failed) in this step."""
        # The job master is not a role of the spec: _restart_master relaunches it.
        exited = [
            r
            for r in job.replicas
            if r.role != MASTER_ROLE
            and (
                r.phase == ReplicaPhase.FAILED.value
                or (
                    r.phase == ReplicaPhase.SUCCEEDED.value
                    and spec.spec.roles[r.role].restart_policy is RestartPolicy.ALWAYS
                    and not counts_for_success(r.role)
                )
            )
        ]
        # A replica killed by a signal is the likely cause when peers fail with it.
        exited.sort(key=lambda r: (r.exit_code is not None and r.exit_code < 128, r.role, r.index))
        for replica in exited:
            role = spec.spec.roles[replica.role]
            decision = decide_restart(
                replica.replica_name,
                role.restart_policy,
                replica.exit_code,
                replica.restarts,
                role.max_restarts,
                spec.spec.restart_backoff_seconds,
            )
            if decision.action is RestartAction.FAIL_JOB:
                self.finish(tx, job, JobPhase.FAILED, "ReplicaFailed", decision.message, now)
                return False
            if decision.action is RestartAction.NONE:
                continue
            replica.restarts += 1
            restart_at = now + decision.delay_s
            gang_restart = spec.spec.mode is Mode.ALLREDUCE and not is_elastic(spec)
            if gang_restart:
                # A static process group cannot take a fresh member: restart the gang.
                # The job master stays up: it holds the data leases and committed progress.
                gang = [r for r in job.replicas if r.role != MASTER_ROLE]
                self._stop(gang, ReplicaPhase.STOPPED, now)
                for member in gang:
                    member.phase = ReplicaPhase.BACKOFF.value
                    member.next_start_at = restart_at
                job.gang_restarts += 1
                job.master_port = None
                message = decision.message
                if len(gang) > 1:
                    message += " (the whole AllReduce group restarts)"
            else:
                replica.phase = ReplicaPhase.BACKOFF.value
                replica.next_start_at = restart_at
                message = decision.message
                if is_elastic(spec):
                    message += " (the others train on; it rejoins when it is back)"
            transition(tx, job, JobPhase.RESTARTING, "Restarting", message, now, warning=True)
            if gang_restart:
                break
        return True

    def _restart_master(self, tx: Tx, job: JobRow, now: float) -> bool:
        """The job master must live as long as the job: relaunch it on the same port.

        Returns False when it has failed too often and the job was failed.
        """
        for master in job.replicas:
            if master.role != MASTER_ROLE or not ReplicaPhase(master.phase).is_terminal:
                continue
            if master.restarts >= MAX_MASTER_RESTARTS:
                message = (
                    f"the job master exited {master.restarts + 1} times (last exit code "
                    f"{master.exit_code}); see `tidemill logs {job.name} --role master`"
                )
                self.finish(tx, job, JobPhase.FAILED, "MasterFailed", message, now)
                return False
            master.restarts += 1
            master.phase = ReplicaPhase.BACKOFF.value
            master.next_start_at = now
            tx.add_event(
                job.key,
                "MasterRestarting",
                f"job master exited ({master.exit_code}); relaunching it on the same port, "
                "workers reconnect and keep training",
                warning=True,
                at=now,
            )
        return True

    def _drain(self, tx: Tx, job: JobRow, now: float) -> None:
        """Forget replicas that left after a scale-in; kill those that overstay."""
        for replica in job.replicas[:]:
            if replica.drain_deadline is None:
                continue
            overdue = now >= replica.drain_deadline
            if not ReplicaPhase(replica.phase).is_terminal and not overdue:
                continue
            if not ReplicaPhase(replica.phase).is_terminal and replica.handle:
                self.engine.stop(self.handle(replica), grace_s=0)
            tx.delete_replica(job, replica)
            remaining = len(members(job.replicas, replica.role))
            how = "did not leave in time and was killed" if overdue else "left"
            tx.add_event(
                job.key,
                "ScaledIn",
                f"{replica.replica_name} {how}; {replica.role} now {remaining}",
                warning=overdue,
                replica=replica.replica_name,
                at=now,
            )

    def _scale_in(self, tx: Tx, job: JobRow, spec: TrainingJob, now: float) -> None:
        """Ask replicas above the desired size to leave at their next step boundary."""
        for name, role in spec.spec.roles.items():
            if not role.is_elastic:
                continue
            desired = job.desired.get(name, role.max_bound)
            leaving = surplus(job.replicas, name, desired)
            if not leaving:
                continue
            size = len(members(job.replicas, name))
            for replica in leaving:
                replica.drain_deadline = now + self.drain_grace_s
                if replica.phase == ReplicaPhase.RUNNING.value and replica.handle:
                    self.engine.terminate(self.handle(replica))
                elif not ReplicaPhase(replica.phase).is_terminal:
                    replica.phase = ReplicaPhase.STOPPED.value
            tx.add_event(
                job.key,
                "ScalingIn",
                f"{name} {size}→{desired}: asking "
                f"{', '.join(r.replica_name for r in leaving)} to leave at the next step",
                at=now,
            )

    def _start_due(self, tx: Tx, job: JobRow, spec: TrainingJob, now: float) -> None:
        due = [
            r
            for r in job.replicas
            if r.phase == ReplicaPhase.BACKOFF.value
            and r.next_start_at is not None
            and r.next_start_at <= now
        ]
        if not due:
            return
        for replica in due:
            self.launcher.launch(job, spec, replica, now)
            tx.add_event(
                job.key,
                "ReplicaStarted",
                f"{replica.replica_name} started again on {replica.node} "
                f"(attempt {replica.starts}, {replica.restarts} restart(s) charged)",
                replica=replica.replica_name,
                at=now,
            )


def _success_message(job: JobRow) -> str:
    done = [r.replica_name for r in job.replicas if r.phase == ReplicaPhase.SUCCEEDED.value]
    return f"succeeded: {', '.join(done)} completed"
