"""The lifecycle of one job as a pure step: (job, spec, observations, now) -> actions.

The rules, in the order they apply:

1. **Observe**: a replica found by adopt is recorded; an exit is recorded (Stopped if it
   was asked to stop; started again at once, uncharged, if it was stopped because the
   control plane that ran it ended; lost with its node, an elastic replica is forgotten
   and any other outside a static AllReduce group waits, unplaced, for the scheduler to
   place it again, both uncharged); a replica the job master gave up on is killed; a
   replica asked to stop and still there at its deadline is killed.
2. A **deleted** job: kill what runs; once nothing runs, forget the job.
3. **Deadline** (``activeDeadlineSeconds``), **drain** (replicas that left after a
   scale-in are forgotten, overdue ones killed), **scale-in** (ask the replicas above
   the desired size to leave), **success** (the success policy), **restart** (the
   restart policy; a static AllReduce group restarts as a whole), **master** (the job
   master is relaunched on its port; lost with its node, beside a surviving replica),
   **launch** (a recorded launch that started nothing, replicas whose backoff is over)
   and **Running** once nothing waits.
4. A job whose outcome is decided **winds down**: SIGTERM to what runs, SIGKILL after
   the grace, and the outcome's phase once its last process is gone. A suspension is
   such an outcome: its replicas are then forgotten, and a resume places it afresh.

Nothing here touches the store, an engine or the clock: the applier observes, runs
:func:`step`, writes the rows and calls the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidemill.api.job import RestartPolicy, TrainingJob
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.actions import (
    Action,
    Backoff,
    Drain,
    Event,
    Exited,
    ExpireAt,
    Finishing,
    Forget,
    ForgetJob,
    GangRestarted,
    Kill,
    Launch,
    Launched,
    Observed,
    Settle,
    Terminate,
    Transition,
    evolve,
)
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, is_static_gang, members, surplus
from tidemill.controller.model import (
    LIVE,
    Adoption,
    JobSnapshot,
    Observations,
    Outcome,
    ReplicaSnapshot,
)
from tidemill.controller.node_loss import move_master, replace_lost
from tidemill.controller.policies import (
    ReplicaState,
    RestartAction,
    counts_for_success,
    decide_restart,
    job_succeeded,
)
from tidemill.engines.base import Observation

R = ReplicaPhase
MAX_MASTER_RESTARTS = 10
WAITING = (R.PENDING, R.BACKOFF, R.LAUNCHING, R.STOPPING)
"""Phases that keep a job from being Running."""
RESUMING = "Resuming"
"""The reason of the Restarting transition that starts replicas stopped with their
control plane; one per step, whatever the number of replicas."""


@dataclass(frozen=True)
class LifecycleConfig:
    stop_grace_s: float = 5.0
    """How long a replica asked to stop has before it is killed."""
    drain_grace_s: float = 30.0
    """How long an elastic replica asked to leave may take before it is killed."""


def step(
    job: JobSnapshot,
    spec: TrainingJob,
    seen: Observations,
    now: float,
    config: LifecycleConfig = LifecycleConfig(),
) -> list[Action]:
    """What to do about ``job`` now, given what the engine saw of its replicas."""
    return _Step(job, spec, now, config).run(seen)


def drain(replica: ReplicaSnapshot, deadline: float) -> Drain:
    """Ask ``replica`` to leave (scale-in, or a shrink for a higher-priority job)."""
    if replica.phase is R.RUNNING and replica.handle is not None:
        return Drain(replica.name, replica.handle, deadline)
    waiting = replica.phase in (R.PENDING, R.BACKOFF, R.LAUNCHING)
    return Drain(replica.name, None, deadline, settle=waiting)


class _Step:
    def __init__(
        self, job: JobSnapshot, spec: TrainingJob, now: float, config: LifecycleConfig
    ) -> None:
        self.job = job
        self.spec = spec
        self.now = now
        self.config = config
        self.actions: list[Action] = []
        self.lost_nodes: set[str] = set()
        """nodes the engine saw gone in this step's observations"""

    def emit(self, action: Action) -> None:
        self.actions.append(action)
        self.job = evolve(self.job, action, self.now)

    def run(self, seen: Observations) -> list[Action]:
        self._observe(seen)
        if self.job.deleted:
            self._delete()
            return self.actions
        if self.job.outcome is None:
            self._move_on()
        if self.job.outcome is not None:
            self._wind_down()
        return self.actions

    # ------------------------------------------------------------------ observe

    def _observe(self, seen: Observations) -> None:
        self.lost_nodes = {
            replica.node
            for replica in self.job.replicas
            if isinstance(found := seen.get(replica.name), Observation) and found.node_lost
        }
        for replica in self.job.replicas:
            found = seen.get(replica.name)
            if replica.phase is R.LAUNCHING:
                if isinstance(found, Adoption) and found.handle is not None:
                    self._adopted(replica, found)
            elif (
                isinstance(found, Observation)
                and replica.handle is not None
                and replica.phase in (R.RUNNING, R.STOPPING)
            ):
                self._seen(self.job.replica(replica.name), found)

    def _adopted(self, replica: ReplicaSnapshot, found: Adoption) -> None:
        assert found.handle is not None
        self.emit(Launched(replica.name, found.handle, found.pid, found.log_path, self.now))
        self.emit(
            Event(
                "ReplicaAdopted",
                f"{replica.name}: found the process its last launch started"
                + ("" if found.pid is None else f" (pid {found.pid})")
                + "; not started again",
                replica=replica.name,
            )
        )

    def _seen(self, replica: ReplicaSnapshot, seen: Observation) -> None:
        name, handle = replica.name, replica.handle
        assert handle is not None
        if seen.running:
            if seen.pid is not None and seen.pid != replica.pid:
                self.emit(Observed(name, seen.pid))
                replica = self.job.replica(name)
            if not self.job.deleted and self._kill_due(replica):
                self._kill(replica)
            return
        if replica.phase is R.STOPPING or self.job.deleted:
            after = R.BACKOFF if replica.next_start_at is not None else R.STOPPED
            self.emit(Exited(name, after, seen.exit_code, seen.message, self.now))
            return
        if seen.control_plane_ended:
            self._resume(replica, seen)
            return
        if seen.exit_code == 0:
            self.emit(Exited(name, R.SUCCEEDED, 0, seen.message, self.now))
            self.emit(Event("ReplicaSucceeded", f"{name} exited 0", replica=name))
            return
        self.emit(Exited(name, R.FAILED, seen.exit_code, seen.message, self.now))
        lost = seen.node_lost and replica.role != MASTER_ROLE
        if lost and (replaced := replace_lost(replica, self.spec)):
            for action in replaced:
                self.emit(action)
            return
        shown = "was lost" if seen.exit_code is None else f"exited {seen.exit_code}"
        generic = seen.message in ("", f"exited with code {seen.exit_code}")
        detail = "" if generic else f": {seen.message}"
        self.emit(Event("ReplicaFailed", f"{name} {shown}{detail}", warning=True, replica=name))
        if seen.node_lost and replica.role == MASTER_ROLE:
            for action in move_master(replica, self.job.replicas, self.lost_nodes):
                self.emit(action)

    def _resume(self, replica: ReplicaSnapshot, seen: Observation) -> None:
        """Start again, uncharged, a replica stopped because the control plane that ran
        it ended (``tidemill run`` killed): this control plane took its state over."""
        name = replica.name
        self.emit(Exited(name, R.BACKOFF, seen.exit_code, seen.message, self.now))
        self.emit(Backoff(name, self.now, replica.restarts))
        if not any(isinstance(a, Transition) and a.reason == RESUMING for a in self.actions):
            message = (
                "the control plane that ran this job ended and stopped its replicas; "
                "starting them again (not counted against maxRestarts)"
            )
            self.emit(Transition(JobPhase.RESTARTING, RESUMING, message, warning=True))

    def _kill_due(self, replica: ReplicaSnapshot) -> bool:
        """Stopping past its grace, or given up on by the job master; again after a
        grace while it stays."""
        due = replica.kill_at is None or self.now >= replica.kill_at
        if replica.drain_deadline is not None:
            return False  # leaving after a scale-in: the drain rule kills it when overdue
        if replica.phase is R.STOPPING:
            return due
        given_up = self.job.unresponsive.get(replica.name)
        return due and given_up is not None and given_up == replica.pid

    def _kill(self, replica: ReplicaSnapshot) -> None:
        assert replica.handle is not None
        name = replica.name
        retry_at = self.now + self.config.stop_grace_s
        if replica.phase is R.STOPPING:
            message = (
                f"{name} did not stop within {self.config.stop_grace_s:g}s of SIGTERM; killed it"
            )
            self.emit(Event("ReplicaKilled", message, warning=True, replica=name))
            self.emit(Kill(name, replica.handle, retry_at))
            return
        first = replica.kill_at is None
        message = f"{name} (pid {replica.pid}) stopped answering the job master; killed it"
        if first:
            message += (
                " (its stacks from before the kill are in the server's log, and at the end"
                " of its own where the engine keeps one)"
            )
        self.emit(Event("ReplicaUnresponsive", message, warning=True, replica=name))
        self.emit(Kill(name, replica.handle, retry_at, stacks=first))

    # ------------------------------------------------------------------ deleted

    def _delete(self) -> None:
        for replica in self.job.replicas:
            if replica.phase in LIVE and replica.handle is not None:
                if replica.kill_at is None or self.now >= replica.kill_at:
                    retry_at = self.now + self.config.stop_grace_s
                    self.emit(Kill(replica.name, replica.handle, retry_at))
            elif not replica.phase.is_terminal:
                self.emit(Settle(replica.name))
        if not any(r.phase in LIVE for r in self.job.replicas):
            self.emit(ForgetJob("its processes are gone"))

    # ------------------------------------------------------------------ active

    def _move_on(self) -> None:
        if self._deadline_passed():
            return
        self._drain()
        self._scale_in()
        states = [ReplicaState(r.role, r.index, r.phase) for r in self.job.replicas]
        if job_succeeded(self.spec.spec.success_policy, states):
            done = [r.name for r in self.job.replicas if r.phase is R.SUCCEEDED]
            self._finish(
                JobPhase.SUCCEEDED, "JobSucceeded", f"succeeded: {', '.join(done)} completed"
            )
            return
        if not self._restart_policy() or not self._restart_master():
            return
        self._launch_unstarted()
        self._start_due()
        self._maybe_running()

    def _finish(self, phase: JobPhase, reason: str, message: str) -> None:
        self.emit(Finishing(Outcome(phase, reason, message)))

    def _deadline_passed(self) -> bool:
        deadline = self.spec.spec.active_deadline_seconds
        started = self.job.started_at
        if deadline is None or started is None or self.now - started <= deadline:
            return False
        message = f"ran longer than activeDeadlineSeconds={deadline}"
        self._finish(JobPhase.FAILED, "DeadlineExceeded", message)
        return True

    def _drain(self) -> None:
        """Forget replicas that left after a scale-in; kill those that overstay."""
        for replica in self.job.replicas:
            if replica.drain_deadline is None:
                continue
            overdue = self.now >= replica.drain_deadline
            if not replica.phase.is_terminal and not overdue:
                continue
            if replica.phase in LIVE and replica.handle is not None:
                self.emit(Kill(replica.name, replica.handle, self.now))
            self.emit(Forget(replica.name))
            remaining = len(members(self.job.replicas, replica.role))
            how = "did not leave in time and was killed" if overdue else "left"
            self.emit(
                Event(
                    "ScaledIn",
                    f"{replica.name} {how}; {replica.role} now {remaining}",
                    warning=overdue,
                    replica=replica.name,
                )
            )

    def _scale_in(self) -> None:
        """Ask replicas above the desired size to leave at their next step boundary."""
        for name, role in self.spec.spec.roles.items():
            if not role.is_elastic:
                continue
            desired = self.job.desired.get(name, role.max_bound)
            leaving = surplus(self.job.replicas, name, desired)
            if not leaving:
                continue
            size = len(members(self.job.replicas, name))
            deadline = self.now + self.config.drain_grace_s
            for replica in leaving:
                self.emit(drain(replica, deadline))
            names = ", ".join(r.name for r in leaving)
            self.emit(
                Event(
                    "ScalingIn",
                    f"{name} {size}→{desired}: asking {names} to leave at the next step",
                )
            )

    def _restart_policy(self) -> bool:
        """Apply the restart policy to exited replicas; False when the job failed."""
        roles = self.spec.spec.roles
        exited = [
            r
            for r in self.job.replicas
            if r.role != MASTER_ROLE
            and (
                r.phase is R.FAILED
                or (
                    r.phase is R.SUCCEEDED
                    and roles[r.role].restart_policy is RestartPolicy.ALWAYS
                    and not counts_for_success(r.role)
                )
            )
        ]
        # A replica killed by a signal is the likely cause when peers fail with it.
        exited.sort(key=lambda r: (r.exit_code is not None and r.exit_code < 128, r.role, r.index))
        gang = is_static_gang(self.spec)
        for replica in exited:
            role = roles[replica.role]
            decision = decide_restart(
                replica.name,
                role.restart_policy,
                replica.exit_code,
                replica.restarts,
                role.max_restarts,
                self.spec.spec.restart_backoff_seconds,
            )
            if decision.action is RestartAction.FAIL_JOB:
                self._finish(JobPhase.FAILED, "ReplicaFailed", decision.message)
                return False
            if decision.action is RestartAction.NONE:
                continue
            restart_at = self.now + decision.delay_s
            message = decision.message
            if gang:
                message = self._restart_gang(replica, restart_at, message)
            else:
                self.emit(Backoff(replica.name, restart_at, replica.restarts + 1))
                if is_elastic(self.spec):
                    message += " (the others train on; it rejoins when it is back)"
            self.emit(Transition(JobPhase.RESTARTING, "Restarting", message, warning=True))
            if gang:
                break
        return True

    def _restart_gang(self, failed: ReplicaSnapshot, restart_at: float, message: str) -> str:
        """A static process group cannot take a fresh member: restart the whole group.
        The job master stays up: it holds the data leases and committed progress."""
        gang = [r for r in self.job.replicas if r.role != MASTER_ROLE]
        grace = self.now + self.config.stop_grace_s
        for member in gang:
            charged = member.restarts + (1 if member.name == failed.name else 0)
            if member.phase in (R.RUNNING, R.STOPPING) and member.handle is not None:
                kill_at = member.kill_at if member.phase is R.STOPPING else None
                self.emit(Terminate(member.name, member.handle, kill_at or grace, restart_at))
            else:
                self.emit(Backoff(member.name, restart_at, charged))
        self.emit(GangRestarted(self.job.gang_restarts + 1))
        if len(gang) > 1:
            message += " (the whole AllReduce group restarts)"
        return message

    def _restart_master(self) -> bool:
        """The job master must live as long as the job: relaunch it on the same port.
        False when it failed too often and the job was failed."""
        for master in self.job.replicas:
            if master.role != MASTER_ROLE or not master.phase.is_terminal:
                continue
            if master.restarts >= MAX_MASTER_RESTARTS:
                message = (
                    f"the job master exited {master.restarts + 1} times (last exit code "
                    f"{master.exit_code}); see `tidemill logs {self.job.name} --role master`"
                )
                self._finish(JobPhase.FAILED, "MasterFailed", message)
                return False
            self.emit(Backoff(master.name, self.now, master.restarts + 1))
            self.emit(
                Event(
                    "MasterRestarting",
                    f"job master exited ({master.exit_code}); relaunching it on the same "
                    "port, workers reconnect and keep training",
                    warning=True,
                )
            )
        return True

    def _launch_unstarted(self) -> None:
        """A launch was recorded but started nothing (the control plane stopped between
        the two): make it now, under the same launch id."""
        for replica in self.job.replicas:
            if replica.phase is R.LAUNCHING:
                self.emit(Launch(replica.name, max(0, replica.starts - 1), replica.launch_id))

    def _start_due(self) -> None:
        """Start replicas whose backoff is over, once no member is still stopping."""
        if any(r.phase is R.STOPPING for r in self.job.replicas):
            return
        for replica in self.job.replicas:
            due = replica.next_start_at is not None and replica.next_start_at <= self.now
            if replica.phase is not R.BACKOFF or not due:
                continue
            self.emit(Launch(replica.name, replica.starts))
            self.emit(
                Event(
                    "ReplicaStarted",
                    f"{replica.name} started again on {replica.node} (attempt "
                    f"{replica.starts + 1}, {replica.restarts} restart(s) charged)",
                    replica=replica.name,
                )
            )

    def _maybe_running(self) -> None:
        if self.job.phase is JobPhase.RUNNING:
            return
        if any(r.phase in WAITING for r in self.job.replicas):
            return
        live = sum(r.phase is R.RUNNING for r in self.job.replicas)
        self.emit(Transition(JobPhase.RUNNING, "Running", f"{live} replica(s) running"))

    # ------------------------------------------------------------------ finishing

    def _wind_down(self) -> None:
        """Stop what still runs; take the decided phase once nothing does."""
        outcome = self.job.outcome
        assert outcome is not None
        for replica in self.job.replicas:
            if replica.phase is R.RUNNING and replica.handle is not None:
                kill_at = self.now + self.config.stop_grace_s
                self.emit(Terminate(replica.name, replica.handle, kill_at))
            elif not replica.phase.is_terminal and replica.phase is not R.STOPPING:
                self.emit(Settle(replica.name))
        if any(r.phase in LIVE for r in self.job.replicas):
            return
        if outcome.phase is JobPhase.SUSPENDED:
            for replica in self.job.replicas:
                self.emit(Forget(replica.name))  # a resume places the job afresh
            self.emit(Transition(outcome.phase, outcome.reason, outcome.message))
            return
        failed = outcome.phase is JobPhase.FAILED
        self.emit(Transition(outcome.phase, outcome.reason, outcome.message, warning=failed))
        ttl = self.spec.spec.ttl_seconds_after_finished
        self.emit(ExpireAt(None if ttl is None else self.now + ttl))
