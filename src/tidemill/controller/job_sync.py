"""Moves one running job on: observe its replicas, then apply the deadline, the success
policy and the restart policy, and start replicas whose backoff is over."""

from __future__ import annotations

from collections.abc import Callable

from tidemill.api.job import Mode, RestartPolicy, TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.conditions import transition
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


class JobSync:
    def __init__(
        self,
        engine: Engine,
        launcher: Launcher,
        spec_of: Callable[[JobRow], TrainingJob],
        stop_grace_s: float,
    ) -> None:
        self.engine = engine
        self.launcher = launcher
        self.spec_of = spec_of
        self.stop_grace_s = stop_grace_s

    def handle(self, replica: ReplicaRow) -> ReplicaHandle:
        data = replica.handle or {}
        return ReplicaHandle(engine=str(data.get("engine", "")), data=dict(data.get("data", {})))

    def stop_replicas(self, job: JobRow, phase: ReplicaPhase, now: float) -> None:
        for replica in job.replicas:
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
        states = [ReplicaState(r.role, r.index, ReplicaPhase(r.phase)) for r in job.replicas]
        if job_succeeded(spec.spec.success_policy, states):
            self.finish(tx, job, JobPhase.SUCCEEDED, "JobSucceeded", _success_message(job), now)
            return True
        if not self._apply_restart_policy(tx, job, spec, now):
            return True
        self._start_due(tx, job, spec, now)
        waiting = [r for r in job.replicas if r.phase == ReplicaPhase.BACKOFF.value]
        if not waiting and job.phase != JobPhase.RUNNING.value:
            live = sum(r.phase == ReplicaPhase.RUNNING.value for r in job.replicas)
            transition(tx, job, JobPhase.RUNNING, "Running", f"{live} replica(s) running", now)
        return False

    def _observe(self, tx: Tx, job: JobRow, now: float) -> None:
        for replica in job.replicas:
            if replica.phase != ReplicaPhase.RUNNING.value or not replica.handle:
                continue
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

    def _apply_restart_policy(self, tx: Tx, job: JobRow, spec: TrainingJob, now: float) -> bool:
        """Returns False when the job has ended (failed) in this step."""
        exited = [
            r
            for r in job.replicas
            if r.phase == ReplicaPhase.FAILED.value
            or (
                r.phase == ReplicaPhase.SUCCEEDED.value
                and spec.spec.roles[r.role].restart_policy is RestartPolicy.ALWAYS
                and not counts_for_success(r.role)
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
            if spec.spec.mode is Mode.ALLREDUCE:
                # A static process group cannot take a fresh member: restart the gang.
                self.stop_replicas(job, ReplicaPhase.STOPPED, now)
                for member in job.replicas:
                    member.phase = ReplicaPhase.BACKOFF.value
                    member.next_start_at = restart_at
                job.gang_restarts += 1
                job.master_port = None
                message = decision.message
                if len(job.replicas) > 1:
                    message += " (the whole AllReduce group restarts)"
            else:
                replica.phase = ReplicaPhase.BACKOFF.value
                replica.next_start_at = restart_at
                message = decision.message
            transition(tx, job, JobPhase.RESTARTING, "Restarting", message, now, warning=True)
            if spec.spec.mode is Mode.ALLREDUCE:
                break
        return True

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
