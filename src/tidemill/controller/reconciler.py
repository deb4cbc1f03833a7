"""The controller: a level-triggered loop that makes observed replicas match the spec.

Each cycle reads the store, observes replicas through the engine, applies the restart
and success policies, asks the pure scheduler for decisions and applies them. All state
lives in the store, so a restarted control plane simply runs the next cycle: live
replicas are re-adopted through their persisted handles, dead ones go through their
restart policy.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from tidemill.api.cluster import ClusterSpec, QueueSpec, this_machine
from tidemill.api.errors import ConflictError, NotFoundError, SpecError
from tidemill.api.job import Mode, RestartPolicy, TrainingJob
from tidemill.api.status import ConditionType, JobPhase, JobView, ReplicaPhase
from tidemill.controller.admission import admit
from tidemill.controller.conditions import set_condition, transition
from tidemill.controller.launcher import Launcher
from tidemill.controller.policies import (
    ReplicaState,
    RestartAction,
    counts_for_success,
    decide_restart,
    job_succeeded,
)
from tidemill.controller.snapshot import job_request, node_info, queue_info, running_job
from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.scheduler.core import schedule
from tidemill.scheduler.types import Bind, ClusterState, Decisions, SchedulerConfig
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow, ReplicaRow

log = logging.getLogger(__name__)
ACTIVE_PHASES = [JobPhase.SCHEDULED.value, JobPhase.RUNNING.value, JobPhase.RESTARTING.value]


@dataclass(frozen=True)
class ControllerConfig:
    tick_s: float = 0.2
    stop_grace_s: float = 5.0
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class CycleStats:
    """What the last cycle did; read by /metrics."""

    schedule_seconds: float = 0.0
    queue_latencies_s: list[float] = field(default_factory=list)


class Controller:
    """Owns the job lifecycle. API threads call submit/delete; one thread reconciles."""

    def __init__(
        self,
        store: Store,
        engine: Engine,
        cluster: ClusterSpec | None = None,
        config: ControllerConfig | None = None,
        clock: Callable[[], float] = time.time,
        on_cycle: Callable[[CycleStats], None] | None = None,
    ) -> None:
        self.store = store
        self.engine = engine
        self.cluster = cluster or ClusterSpec(nodes=[this_machine()])
        if not self.cluster.nodes:
            self.cluster = self.cluster.model_copy(update={"nodes": [this_machine()]})
        self.config = config or ControllerConfig()
        self.clock = clock
        self.on_cycle = on_cycle
        self.launcher = Launcher(engine)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._specs: dict[str, TrainingJob] = {}
        self._record_cluster()

    # ----------------------------------------------------------------- lifecycle

    def _record_cluster(self) -> None:
        """Write the declared nodes and queues; tenant queues made on first use stay."""
        nodes = self.cluster.all_nodes()
        with self.store.transaction() as tx:
            tx.replace_nodes([n.model_dump(mode="json", by_alias=True) for n in nodes])
            for queue in self.cluster.queues:
                tx.put_queue(queue.name, queue.model_dump(mode="json", by_alias=True), True)
            tx.delete_undeclared_queues_except({q.name for q in self.cluster.queues})

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="tidemill-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reconciling. Replicas keep running; a restarted server re-adopts them."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile cycle failed; retrying next tick")
            self._wake.wait(self.config.tick_s)
            self._wake.clear()

    # ----------------------------------------------------------------- API calls

    def submit(self, job: TrainingJob) -> str:
        """Queue a job; raises SpecError (won't fit here) or ConflictError (name taken)."""
        with self._lock, self.store.transaction() as tx:
            existing = tx.job(job.metadata.namespace, job.metadata.name)
            if existing is not None:
                raise ConflictError(
                    f"job {job.key} already exists (phase {existing.phase}); delete it with "
                    f"`tidemill delete {job.metadata.name}` or choose another metadata.name"
                )
            queues = {q.name: QueueSpec.model_validate(q.spec) for q in tx.queues()}
            admission = admit(job, self.cluster.all_nodes(), queues, self.cluster.priority_classes)
            if admission.create_queue:
                spec = QueueSpec(name=admission.queue)
                tx.put_queue(spec.name, spec.model_dump(mode="json", by_alias=True), False)
                tx.add_event(None, "QueueCreated", f"queue {spec.name} made for its tenant")
            now = self.clock()
            row = tx.add_job(
                JobRow(
                    uid=str(uuid.uuid4()),
                    namespace=job.metadata.namespace,
                    name=job.metadata.name,
                    spec=job.to_document(),
                    queue=admission.queue,
                    priority=admission.priority,
                    phase=JobPhase.PENDING.value,
                    message="waiting to be scheduled",
                    conditions=[],
                    created_at=now,
                )
            )
            set_condition(row, ConditionType.PENDING, True, "Submitted", "queued", now)
            tx.add_event(
                row.key,
                "Submitted",
                f"queued in {admission.queue} at priority {admission.priority}",
                at=now,
            )
        self._wake.set()
        return job.key

    def dry_run(self, job: TrainingJob) -> JobView:
        """What submit would queue, without queuing it (admission checks included)."""
        with self.store.read() as tx:
            queues = {q.name: QueueSpec.model_validate(q.spec) for q in tx.queues()}
        admission = admit(job, self.cluster.all_nodes(), queues, self.cluster.priority_classes)
        return JobView(
            name=job.metadata.name,
            namespace=job.metadata.namespace,
            uid="",
            queue=admission.queue,
            priority=admission.priority,
            mode=job.spec.mode.value,
            phase=JobPhase.PENDING,
            created_at=self.clock(),
            message="dry run: the job is valid and would be queued",
            spec=job.to_document(),
        )

    def scale(self, namespace: str, name: str, role: str, replicas: int) -> None:
        """Resize a role within its elastic bounds.

        A pending job is resized before it is placed; a job that holds resources
        needs in-place elastic resize, which the per-job master provides.
        """
        with self._lock, self.store.transaction() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise NotFoundError(f"job '{name}' not found in namespace '{namespace}'")
            spec = self.spec_of(row)
            if role not in spec.spec.roles:
                raise SpecError.single(
                    "role",
                    f"job {row.key} has no role '{role}' (roles: "
                    f"{', '.join(sorted(spec.spec.roles))})",
                )
            role_spec = spec.spec.roles[role]
            if not role_spec.is_elastic:
                raise SpecError.single(
                    "role",
                    f"role '{role}' is not elastic (replicas fixed at "
                    f"{role_spec.replicas}); set minReplicas/maxReplicas in the job file",
                )
            low, high = role_spec.min_bound, role_spec.max_bound
            if not low <= replicas <= high:
                raise SpecError.single(
                    "replicas",
                    f"{replicas} is outside {role}'s bounds [{low}, {high}] "
                    "(minReplicas..maxReplicas)",
                )
            if JobPhase(row.phase).is_terminal:
                raise ConflictError(f"job {row.key} has finished ({row.phase}); nothing to scale")
            if row.phase != JobPhase.PENDING.value:
                raise ConflictError(
                    f"job {row.key} is {row.phase}: resizing a running job in place needs "
                    "the elastic job master, which this server does not run yet"
                )
            document = row.spec
            document["spec"]["roles"][role]["replicas"] = replicas
            row.spec = {**document}
            self._specs.pop(row.uid, None)
            tx.add_event(row.key, "Resized", f"{role} set to {replicas} replica(s) while pending")
        self._wake.set()

    def resolve(self, name: str, namespace: str | None) -> tuple[str, str]:
        """Find a job by name; without a namespace the name must be unique."""
        with self.store.read() as tx:
            if namespace is not None:
                if tx.job(namespace, name) is None:
                    raise NotFoundError(f"job '{name}' not found in namespace '{namespace}'")
                return namespace, name
            rows = tx.jobs_named(name)
        if not rows:
            raise NotFoundError(f"job '{name}' not found; list jobs with `tidemill jobs`")
        if len(rows) > 1:
            spaces = ", ".join(sorted(r.namespace for r in rows))
            raise ConflictError(
                f"job name '{name}' exists in several namespaces ({spaces}); pass --namespace"
            )
        return rows[0].namespace, name

    def delete(self, namespace: str, name: str) -> str:
        """Stop every process of the job, then forget it. Returns when they are gone."""
        with self._lock:
            with self.store.read() as tx:
                row = tx.job(namespace, name)
                if row is None:
                    raise NotFoundError(f"job '{name}' not found in namespace '{namespace}'")
                handles = [self._handle(r) for r in row.replicas if r.handle]
            for handle in handles:
                self.engine.stop(handle, self.config.stop_grace_s)
            with self.store.transaction() as tx:
                row = tx.job(namespace, name)
                if row is not None:
                    self._specs.pop(row.uid, None)
                    tx.delete_job(row)
                tx.add_event(f"{namespace}/{name}", "Deleted", "job deleted; processes stopped")
        self._wake.set()
        return f"{namespace}/{name}"

    # ----------------------------------------------------------------- the cycle

    def reconcile_once(self) -> CycleStats:
        stats = CycleStats()
        with self._lock:
            with self.store.transaction() as tx:
                now = self.clock()
                for job in tx.jobs(phases=ACTIVE_PHASES):
                    self._sync_job(tx, job, now)
                self._expire_finished(tx, now)
            with self.store.transaction() as tx:
                self._schedule(tx, self.clock(), stats)
        if self.on_cycle is not None:
            self.on_cycle(stats)
        return stats

    def spec_of(self, row: JobRow) -> TrainingJob:
        spec = self._specs.get(row.uid)
        if spec is None:
            spec = TrainingJob.model_validate(row.spec)
            self._specs[row.uid] = spec
        return spec

    def _handle(self, replica: ReplicaRow) -> ReplicaHandle:
        data = replica.handle or {}
        return ReplicaHandle(engine=str(data.get("engine", "")), data=dict(data.get("data", {})))

    def _stop_replicas(self, job: JobRow, phase: ReplicaPhase, now: float) -> None:
        for replica in job.replicas:
            if replica.phase in (ReplicaPhase.RUNNING.value, ReplicaPhase.PENDING.value):
                if replica.handle:
                    self.engine.stop(self._handle(replica), self.config.stop_grace_s)
                replica.phase = phase.value
                replica.finished_at = now
            elif replica.phase == ReplicaPhase.BACKOFF.value:
                replica.phase = phase.value
                replica.next_start_at = None

    def _finish(
        self, tx: Tx, job: JobRow, phase: JobPhase, reason: str, message: str, now: float
    ) -> None:
        self._stop_replicas(job, ReplicaPhase.STOPPED, now)
        transition(tx, job, phase, reason, message, now, warning=phase is JobPhase.FAILED)

    def _sync_job(self, tx: Tx, job: JobRow, now: float) -> None:
        spec = self.spec_of(job)
        self._observe(tx, job, now)
        deadline = spec.spec.active_deadline_seconds
        if deadline is not None and job.started_at is not None and now - job.started_at > deadline:
            self._finish(
                tx,
                job,
                JobPhase.FAILED,
                "DeadlineExceeded",
                f"ran longer than activeDeadlineSeconds={deadline}",
                now,
            )
            return
        states = [ReplicaState(r.role, r.index, ReplicaPhase(r.phase)) for r in job.replicas]
        if job_succeeded(spec.spec.success_policy, states):
            self._finish(tx, job, JobPhase.SUCCEEDED, "JobSucceeded", _success_message(job), now)
            return
        if not self._apply_restart_policy(tx, job, spec, now):
            return
        self._start_due(tx, job, spec, now)
        waiting = [r for r in job.replicas if r.phase == ReplicaPhase.BACKOFF.value]
        if not waiting and job.phase != JobPhase.RUNNING.value:
            live = sum(r.phase == ReplicaPhase.RUNNING.value for r in job.replicas)
            transition(tx, job, JobPhase.RUNNING, "Running", f"{live} replica(s) running", now)

    def _observe(self, tx: Tx, job: JobRow, now: float) -> None:
        for replica in job.replicas:
            if replica.phase != ReplicaPhase.RUNNING.value or not replica.handle:
                continue
            seen = self.engine.observe(self._handle(replica))
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
                detail = f": {seen.message}" if seen.message else ""
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
                self._finish(tx, job, JobPhase.FAILED, "ReplicaFailed", decision.message, now)
                return False
            if decision.action is RestartAction.NONE:
                continue
            replica.restarts += 1
            restart_at = now + decision.delay_s
            if spec.spec.mode is Mode.ALLREDUCE:
                # A static process group cannot take a fresh member: restart the gang.
                self._stop_replicas(job, ReplicaPhase.STOPPED, now)
                for member in job.replicas:
                    member.phase = ReplicaPhase.BACKOFF.value
                    member.next_start_at = restart_at
                job.gang_restarts += 1
                job.master_port = None
                message = f"{decision.message} (the whole AllReduce group restarts)"
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

    def _expire_finished(self, tx: Tx, now: float) -> None:
        done = [JobPhase.SUCCEEDED.value, JobPhase.FAILED.value]
        for job in tx.jobs(phases=done):
            ttl = self.spec_of(job).spec.ttl_seconds_after_finished
            if ttl is not None and job.finished_at is not None and now >= job.finished_at + ttl:
                self._specs.pop(job.uid, None)
                tx.delete_job(job)
                tx.add_event(
                    job.key,
                    "Deleted",
                    f"removed {ttl}s after it finished (ttlSecondsAfterFinished)",
                )

    # ----------------------------------------------------------------- scheduling

    def _schedule(self, tx: Tx, now: float, stats: CycleStats) -> None:
        pending_rows = tx.jobs(phases=[JobPhase.PENDING.value])
        if not pending_rows:
            return
        holding = tx.jobs(phases=ACTIVE_PHASES)
        state = ClusterState(
            nodes=tuple(node_info(n) for n in tx.nodes()),
            queues={q.name: queue_info(q) for q in tx.queues()},
            running=tuple(running_job(j) for j in holding),
        )
        requests = [job_request(j, self.spec_of(j)) for j in pending_rows]
        started = time.perf_counter()
        decisions: Decisions = schedule(state, requests, self.config.scheduler)
        stats.schedule_seconds = time.perf_counter() - started
        by_key = {j.key: j for j in [*pending_rows, *holding]}
        for preemption in decisions.preemptions:
            victim = by_key[preemption.victim]
            self._stop_replicas(victim, ReplicaPhase.STOPPED, now)
            for replica in list(victim.replicas):
                tx.delete_replica(victim, replica)
            victim.master_port = None
            transition(
                tx, victim, JobPhase.PENDING, "Preempted", preemption.message, now, warning=True
            )
            set_condition(
                victim, ConditionType.PREEMPTED, True, "Preempted", preemption.message, now
            )
        for bind in decisions.binds:
            job = by_key[bind.job]
            if job.scheduled_at is None:
                stats.queue_latencies_s.append(now - job.created_at)
            self._bind(tx, job, bind, now)
        for key, reason in decisions.pending.items():
            job = by_key[key]
            if job.pending_code != reason.code:
                tx.add_event(key, reason.code, reason.message, at=now)
            job.pending_code, job.pending_message = reason.code, reason.message
            job.message = reason.message

    def _bind(self, tx: Tx, job: JobRow, bind: Bind, now: float) -> None:
        spec = self.spec_of(job)
        for placement in bind.placements:
            job.replicas.append(
                ReplicaRow(
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
            )
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
        for replica in job.replicas:
            self.launcher.launch(job, spec, replica, now)
        transition(
            tx, job, JobPhase.RUNNING, "Running", f"{len(job.replicas)} replica(s) started", now
        )


def _success_message(job: JobRow) -> str:
    done = [r.replica_name for r in job.replicas if r.phase == ReplicaPhase.SUCCEEDED.value]
    return f"succeeded: {', '.join(done)} completed"
