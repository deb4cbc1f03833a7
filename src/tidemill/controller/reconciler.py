"""The controller: a level-triggered loop that makes observed replicas match the spec.

Each cycle runs the lifecycle pass (:mod:`tidemill.controller.applier`: observe, the
pure step per job, one transaction, then the engine) and, when something changed, the
scheduling pass (:mod:`tidemill.controller.scheduling`). All state lives in the store,
so a restarted control plane simply runs the next cycle: live replicas are found again
through their persisted handles, launches it made but did not record are adopted, dead
replicas go through their restart policy. A store that cannot write skips the cycle.

API threads (submit, scale, suspend, resume, delete) only write rows in short
transactions; none waits for a process or takes the cycle's lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from tidemill.api.checkpoint import CheckpointPlan
from tidemill.api.cluster import ClusterSpec, NodeSpec, QueueSpec, this_machine
from tidemill.api.errors import ConflictError, QuotaExceeded, SpecError, job_not_found
from tidemill.api.job import TrainingJob
from tidemill.api.limits import MAX_JOBS_PER_NAMESPACE
from tidemill.api.status import ConditionType, JobPhase, JobView
from tidemill.controller import suspension
from tidemill.controller.admission import admit
from tidemill.controller.applier import Applier
from tidemill.controller.checkpoint_checks import check_checkpoint
from tidemill.controller.conditions import set_condition
from tidemill.controller.deletion import Deleter
from tidemill.controller.elastic import initial_desired
from tidemill.controller.inventory import check_engine_admits, discovered
from tidemill.controller.launcher import Launcher
from tidemill.controller.launches import Launches
from tidemill.controller.lifecycle import LifecycleConfig
from tidemill.controller.model import ACTIVE_PHASES
from tidemill.controller.scheduling import CycleStats, SchedulingStep
from tidemill.engines.base import Engine
from tidemill.scheduler.specs import config_of, numa_layout, workload_of
from tidemill.scheduler.types import SchedulerConfig
from tidemill.store.store import Store, StoreUnavailable, Tx
from tidemill.store.tables import JobRow

log = logging.getLogger(__name__)
__all__ = [
    "ACTIVE_PHASES",
    "INTERNAL_ACTOR",
    "Controller",
    "ControllerConfig",
    "CycleStats",
]

QUEUED = (JobPhase.PENDING.value, JobPhase.SUSPENDED.value)
"""Phases in which a job runs nothing: a scale request takes effect when it is placed."""
INTERNAL_ACTOR = "the control plane"
"""Who events name when a request did not come through the API."""


@dataclass(frozen=True)
class ControllerConfig:
    tick_s: float = 0.2
    """How often running jobs are observed."""
    resync_s: float = 2.0
    """The scheduler runs on every change, and at least this often."""
    schedule_pacing: float = 2.0
    """After a scheduling pass of t seconds, the next waits pacing * t: with a long
    backlog and a stream of submissions the scheduler takes at most 1/(1+pacing) of
    the control plane's time, and an idle cluster still schedules at once."""
    stop_grace_s: float = 5.0
    """How long a replica asked to stop (SIGTERM) has before it is killed."""
    drain_grace_s: float = 30.0
    """How long an elastic replica asked to leave may take before it is killed."""
    server_url: str | None = None
    """This control plane's URL, given to job masters so they can persist their state."""
    job_token: Callable[[str], str] | None = None
    """Job uid -> that job's own credential, given to its master and replicas as
    ``TIDEMILL_TOKEN`` (None: they get none; ServerRunner always sets it)."""
    scheduler: SchedulerConfig | None = None
    """The scheduling policy; None: the cluster file's ``scheduler`` section (its
    defaults without one)."""
    checkpoint_root: str | None = None
    """Where jobs whose file names no ``checkpoint.dir`` keep their checkpoints (an
    fsspec URL or a path); None: only jobs that name one get checkpoints."""
    max_jobs_per_namespace: int = MAX_JOBS_PER_NAMESPACE
    """Unfinished jobs (pending, running or suspended) one namespace may hold; a submit
    past it is refused (``QuotaExceeded``)."""


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
        self.launcher = Launcher(
            engine.replica_host,
            self.config.server_url,
            self.config.job_token,
            self.config.checkpoint_root,
            {n.name: numa_layout(n) for n in self.cluster.all_nodes() if n.numa},
        )
        lifecycle = LifecycleConfig(self.config.stop_grace_s, self.config.drain_grace_s)
        launches = Launches(store, engine, self.launcher, clock)
        self.applier = Applier(
            store, engine, self.launcher, launches, self.spec_of, lifecycle, clock
        )
        self.deleter = Deleter(store, engine, clock, self.config.stop_grace_s)
        self.scheduling = SchedulingStep(
            store,
            engine,
            launches,
            self.spec_of,
            self.config.scheduler or config_of(self.cluster.scheduler),
            lifecycle,
            tuple(self.cluster.topology.levels),
            workload_of(self.cluster.scheduler),
        )
        self._schedule_due = threading.Event()
        self._schedule_due.set()
        self._next_resync = 0.0
        self._schedule_not_before = 0.0
        self._cycle = threading.Lock()
        """One cycle at a time (the loop's thread, or a test calling reconcile_once)."""
        self._store_down = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._specs: dict[str, TrainingJob] = {}
        self._inventory_version: int | None = None
        self._record_cluster()

    # ----------------------------------------------------------------- lifecycle

    def nodes(self) -> list[NodeSpec]:
        """The nodes jobs may use now: the engine's, when it finds them, else the declared."""
        engine = discovered(self.engine)
        return self.cluster.all_nodes() if engine is None else engine.nodes()

    def _record_cluster(self) -> None:
        """Write the nodes and the declared queues; tenant queues made on first use stay."""
        engine = discovered(self.engine)
        self._inventory_version = None if engine is None else engine.version
        nodes = self.nodes()
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
        """Something changed: schedule on the next pass, and run it now."""
        self._schedule_due.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile cycle failed; retrying next tick")
            wait_s = self.config.tick_s
            if self._schedule_due.is_set():
                wait_s = min(wait_s, max(0.0, self._schedule_not_before - time.monotonic()))
            self._wake.wait(wait_s)
            self._wake.clear()

    # ----------------------------------------------------------------- API calls

    def submit(self, job: TrainingJob, *, actor: str = INTERNAL_ACTOR) -> str:
        """Queue a job; raises SpecError (won't fit here) or ConflictError (name taken).
        ``actor`` (who asked) is named in the event."""
        check_engine_admits(self.engine, job)
        check_checkpoint(job, local_folders=self.engine.name == "local")
        with self.store.transaction() as tx:
            tx.hold_submit_lock()
            existing = tx.job(job.metadata.namespace, job.metadata.name)
            if existing is not None and existing.deleted_at is not None:
                raise ConflictError(
                    f"job {job.key} is being deleted (its processes are being killed); "
                    "submit again in a moment"
                )
            if existing is not None:
                raise ConflictError(
                    f"job {job.key} already exists (phase {existing.phase}); delete it with "
                    f"`tidemill delete {job.metadata.name}` or choose another metadata.name"
                )
            self._check_room(tx, job.metadata.namespace)
            queues = {q.name: QueueSpec.model_validate(q.spec) for q in tx.queues()}
            admission = admit(
                job, self.nodes(), queues, self.cluster.priority_classes, self.cluster.topology
            )
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
                    phase=(JobPhase.SUSPENDED if job.spec.suspend else JobPhase.PENDING).value,
                    message="waiting to be scheduled",
                    conditions=[],
                    created_at=now,
                    desired=initial_desired(job),
                )
            )
            where = f"in {admission.queue} at priority {admission.priority} by {actor}"
            if job.spec.suspend:
                row.message = f"suspended (spec.suspend): `tidemill resume {row.name}` queues it"
                set_condition(row, ConditionType.SUSPENDED, True, "Submitted", row.message, now)
                tx.add_event(row.key, "Submitted", f"submitted {where}; {row.message}", at=now)
            else:
                set_condition(row, ConditionType.PENDING, True, "Submitted", "queued", now)
                tx.add_event(row.key, "Submitted", f"queued {where}", at=now)
        self.wake()
        return job.key

    def _check_room(self, tx: Tx, namespace: str) -> None:
        """Refuse one more job in a namespace at its bound: every pending job costs each
        scheduling pass, so a tenant's runaway submit loop would slow every tenant's
        scheduling (behind 10,000 queued jobs another tenant's job that fit at once
        waited 2.8 s to be placed, and the server used a third of a core meanwhile)."""
        limit = self.config.max_jobs_per_namespace
        held = tx.unfinished_jobs(namespace)
        if held >= limit:
            raise QuotaExceeded(
                f"namespace {namespace} holds {held} unfinished jobs (pending, running or "
                f"suspended), the most one namespace may hold ({limit}); wait for some to "
                "finish or delete some (`tidemill jobs --phase Pending`), or ask an "
                "operator to raise the bound (tidemill server --max-jobs-per-namespace)"
            )

    def dry_run(self, job: TrainingJob) -> JobView:
        """What submit would queue, without queuing it (admission checks included)."""
        with self.store.read() as tx:
            self._check_room(tx, job.metadata.namespace)
            queues = {q.name: QueueSpec.model_validate(q.spec) for q in tx.queues()}
        check_engine_admits(self.engine, job)
        check_checkpoint(job, local_folders=self.engine.name == "local")
        admission = admit(
            job, self.nodes(), queues, self.cluster.priority_classes, self.cluster.topology
        )
        return JobView(
            name=job.metadata.name,
            namespace=job.metadata.namespace,
            uid="",
            queue=admission.queue,
            priority=admission.priority,
            mode=job.spec.mode.value,
            phase=JobPhase.SUSPENDED if job.spec.suspend else JobPhase.PENDING,
            created_at=self.clock(),
            message="dry run: the job is valid and would be "
            + ("submitted suspended" if job.spec.suspend else "queued"),
            spec=job.to_document(),
        )

    def scale(
        self, namespace: str, name: str, role: str, replicas: int, *, actor: str = INTERNAL_ACTOR
    ) -> None:
        """Set the desired size of an elastic role; the controller resizes in place.

        Growing waits for capacity (the scheduler places the new replicas); shrinking
        asks the highest-indexed replicas to leave at their next step boundary.
        """
        with self.store.transaction() as tx:
            row = tx.job(namespace, name)
            if row is None or row.deleted_at is not None:
                raise job_not_found(name, namespace)
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
            before = row.desired.get(role, role_spec.max_bound)
            row.desired = {**row.desired, role: replicas}
            tx.add_event(
                row.key,
                "ScaleRequested",
                f"{role} {before}→{replicas} requested by {actor}"
                + ("" if row.phase in QUEUED else "; resizing in place"),
            )
        self.wake()

    def suspend(self, namespace: str, name: str, *, actor: str = INTERNAL_ACTOR) -> None:
        """Suspend a job (see :mod:`tidemill.controller.suspension`); returns at once."""
        suspension.suspend(self.store, self.clock, namespace, name, actor)
        self.wake()

    def resume(self, namespace: str, name: str, *, actor: str = INTERNAL_ACTOR) -> None:
        """Queue a suspended job again; returns at once."""
        suspension.resume(self.store, self.clock, namespace, name, actor)
        self.wake()

    def resolve(self, name: str, namespace: str | None) -> tuple[str, str]:
        """Find a job by name; without a namespace the name must be unique."""
        with self.store.read() as tx:
            if namespace is not None:
                if tx.job(namespace, name) is None:
                    raise job_not_found(name, namespace)
                return namespace, name
            rows = tx.jobs_named(name)
        if not rows:
            raise job_not_found(name)
        if len(rows) > 1:
            spaces = ", ".join(sorted(r.namespace for r in rows))
            raise ConflictError(
                f"job name '{name}' exists in several namespaces ({spaces}); pass --namespace"
            )
        return rows[0].namespace, name

    def delete(self, namespace: str, name: str, *, actor: str = INTERNAL_ACTOR) -> str:
        """Kill every process of the job and forget it; returns at once (see
        :mod:`tidemill.controller.deletion`). ``actor`` is named in the events."""
        self.wake()  # the loop records a launch in flight, so it can be killed too
        uid = self.deleter.delete(namespace, name, actor)
        self._specs.pop(uid, None)
        self.wake()
        return f"{namespace}/{name}"

    # ----------------------------------------------------------------- the cycle

    def reconcile_once(self) -> CycleStats:
        """One pass: move running jobs on; schedule when something changed (or to resync).

        A store that cannot write skips the rest of the cycle: nothing was done, nobody
        is failed for it, and the next cycle tries again.
        """
        stats = CycleStats()
        with self._cycle:
            try:
                self._cycle_once(stats)
            except (StoreUnavailable, OperationalError) as exc:
                if not self._store_down:
                    log.warning("the store cannot write; skipping cycles until it can: %s", exc)
                self._store_down = True
                self._schedule_due.set()
            else:
                if self._store_down:
                    log.warning("the store can write again; cycles resume")
                self._store_down = False
        if self.on_cycle is not None:
            self.on_cycle(stats)
        return stats

    def _sync_inventory(self) -> None:
        """Write the engine's nodes when what it saw changed (schedules on the next pass)."""
        engine = discovered(self.engine)
        if engine is None or engine.version == self._inventory_version:
            return
        version = engine.version
        nodes = engine.nodes()
        with self.store.transaction() as tx:
            tx.replace_nodes([n.model_dump(mode="json", by_alias=True) for n in nodes])
        self._inventory_version = version
        self._schedule_due.set()

    def _cycle_once(self, stats: CycleStats) -> None:
        self._sync_inventory()
        if self.applier.run():
            self._schedule_due.set()
        now = self.clock()
        due = self._schedule_due.is_set() or now >= self._next_resync
        if due and time.monotonic() >= self._schedule_not_before:
            self._schedule_due.clear()
            self._next_resync = now + self.config.resync_s
            started = time.monotonic()
            if self.scheduling.run(now, stats):
                self._schedule_due.set()
            spent = time.monotonic() - started
            self._schedule_not_before = started + spent * (1 + self.config.schedule_pacing)

    def checkpoint_plan(self, namespace: str, name: str) -> CheckpointPlan | None:
        """Where job ``namespace/name`` keeps its checkpoints; NotFoundError if no such job."""
        with self.store.read() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise job_not_found(name, namespace)
            return self.launcher.checkpoint_plan(row.key, row.uid, self.spec_of(row))

    def spec_of(self, row: JobRow) -> TrainingJob:
        spec = self._specs.get(row.uid)
        if spec is None:
            spec = TrainingJob.model_validate(row.spec)
            self._specs[row.uid] = spec
        return spec
