"""The applier: one lifecycle pass over the active jobs.

1. Read: snapshot every active job (and parse its spec) in a read transaction.
2. Observe, outside any transaction: ``engine.observe`` for replicas with a handle,
   ``engine.adopt`` for replicas recorded as Launching (a launch the control plane may
   have made before it stopped).
3. Decide: the pure :func:`tidemill.controller.lifecycle.step` per job. A job whose
   step raises, or whose spec cannot be read, is failed alone
   (:func:`~tidemill.controller.broken.fail_broken`); one the engine cannot observe
   waits for the next cycle, and is failed after :data:`OBSERVE_ATTEMPTS` in a row.
4. Write every job's row changes in one short transaction (launch intents included);
   a job whose writes raise is failed alone and the rest commit.
5. Act, outside any transaction: SIGTERM, SIGKILL, then the launches, whose handles a
   last short transaction records (:mod:`tidemill.controller.launches`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tidemill.api.job import TrainingJob
from tidemill.api.status import ReplicaPhase
from tidemill.controller.actions import (
    Action,
    Drain,
    Forget,
    ForgetJob,
    Kill,
    Launch,
    Terminate,
    Transition,
    Vacate,
    evolve_all,
)
from tidemill.controller.broken import fail_broken
from tidemill.controller.isolation import controller_error, write_jobs
from tidemill.controller.last_stacks import kill_with_stacks
from tidemill.controller.launcher import Launcher, port_needs
from tidemill.controller.launches import Launches, Planned, assign_ports, fetch_ports
from tidemill.controller.lifecycle import LifecycleConfig, step
from tidemill.controller.model import ACTIVE_PHASES, Adoption, JobSnapshot, Observations, Seen
from tidemill.controller.rows import job_snapshot, write
from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.store.store import Store, Tx
from tidemill.store.tables import JobRow

log = logging.getLogger(__name__)

OBSERVE_ATTEMPTS = 25
"""Cycles in a row a job's replicas may fail to be observed before the job is failed."""


@dataclass(frozen=True)
class JobGone:
    """A job whose row this transaction removes: once it commits, the engine drops what
    it keeps of the job (:meth:`~tidemill.engines.base.Engine.forget`)."""

    job: str
    """namespace/name"""
    uid: str

    @classmethod
    def of(cls, row: JobRow) -> JobGone:
        return cls(row.key, row.uid)


@dataclass
class _Plan:
    job: JobSnapshot
    spec: TrainingJob | None
    error: str = ""
    """why the job cannot be processed (its spec cannot be read), when spec is None"""
    seen: dict[str, Seen] = field(default_factory=dict)
    actions: list[Action] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)


EXPIRY_INTERVAL_S = 1.0


class Applier:
    def __init__(
        self,
        store: Store,
        engine: Engine,
        launcher: Launcher,
        launches: Launches,
        spec_of: Callable[[JobRow], TrainingJob],
        config: LifecycleConfig,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.engine = engine
        self.launcher = launcher
        self.launches = launches
        self.spec_of = spec_of
        self.config = config
        self.clock = clock
        self._unseen: dict[int, int] = {}
        """job id -> cycles in a row its replicas could not be observed"""
        self._next_expiry = 0.0
        """TTLs are whole seconds: finished jobs are looked for about once a second, and a
        pass with nothing to write takes no write transaction (submissions need it)."""

    def run(self) -> bool:
        """One pass; True when resources were freed (a job ended or a replica left).

        Raises :class:`~tidemill.store.store.StoreUnavailable` before any engine call
        when the store cannot write: nothing happened, the next cycle tries again.
        """
        plans = {plan.job.id: plan for plan in self._read()}
        self._unseen = {k: v for k, v in self._unseen.items() if k in plans}
        now = self.clock()
        for plan in plans.values():
            self._decide(plan, now)
        writes = {
            job_id: [self._writer(plan, now)] for job_id, plan in plans.items() if plan.actions
        }

        def fallback(tx: Tx, row: JobRow, message: str) -> list[object]:
            plan = plans.get(row.id)
            return fail_row(tx, row, message, now, self.config, plan.seen if plan else {})

        expire = now >= self._next_expiry
        if not writes and not expire:
            return False
        if expire:
            self._next_expiry = now + EXPIRY_INTERVAL_S
        after = (lambda tx: _expire(tx, now)) if expire else None
        outcome = write_jobs(self.store, writes, fallback, after=after)
        self.launches.run(perform(self.engine, outcome.effects))
        freed = any(_frees(action) for job_id in writes for action in plans[job_id].actions)
        return freed or bool(outcome.failed)

    def _read(self) -> list[_Plan]:
        plans = []
        with self.store.read() as tx:
            rows = {row.id: row for row in tx.jobs(phases=ACTIVE_PHASES)}
            rows.update((row.id, row) for row in tx.deleted_jobs())
            for row in sorted(rows.values(), key=lambda row: row.id):
                try:
                    job = job_snapshot(row)
                except Exception:
                    log.exception("job %s: its row cannot be read; skipped", row.key)
                    continue
                try:
                    plans.append(_Plan(job, self.spec_of(row)))
                except Exception as exc:
                    plans.append(_Plan(job, None, error=controller_error(exc)))
        return plans

    def _decide(self, plan: _Plan, now: float) -> None:
        if plan.spec is None:
            plan.actions = fail_broken(plan.job, {}, plan.error, now, self.config)
            return
        try:
            self._observe(plan.job, plan.spec, plan.seen)
        except Exception as exc:
            # The engine may recover (a busy API, a brief error): fail the job only if
            # it keeps failing to see its replicas.
            failures = self._unseen[plan.job.id] = self._unseen.get(plan.job.id, 0) + 1
            log.warning("job %s: could not observe it (%d): %s", plan.job.key, failures, exc)
            if failures >= OBSERVE_ATTEMPTS:
                message = controller_error(exc)
                plan.actions = fail_broken(plan.job, plan.seen, message, now, self.config)
            return
        self._unseen.pop(plan.job.id, None)
        try:
            plan.actions = step(plan.job, plan.spec, plan.seen, now, self.config)
            launching = [a.replica for a in plan.actions if isinstance(a, Launch)]
            if launching:
                after = evolve_all(plan.job, plan.actions, now)
                plan.ports = fetch_ports(self.engine, port_needs(after, plan.spec, launching))
        except Exception as exc:
            log.exception("job %s: the lifecycle step raised; failing it alone", plan.job.key)
            plan.ports = {}
            plan.actions = fail_broken(plan.job, plan.seen, controller_error(exc), now, self.config)

    def _observe(self, job: JobSnapshot, spec: TrainingJob, seen: dict[str, Seen]) -> None:
        for replica in job.replicas:
            if replica.phase is ReplicaPhase.LAUNCHING:
                handle = None
                if replica.launch_id is not None:
                    handle = self.engine.adopt(self.launcher.launch_spec(job, spec, replica))
                if handle is None:
                    seen[replica.name] = Adoption(None)
                    continue
                pid = self.engine.observe(handle).pid
                seen[replica.name] = Adoption(handle, pid, self.engine.log_path(handle))
            elif replica.handle is not None and replica.phase in (
                ReplicaPhase.RUNNING,
                ReplicaPhase.STOPPING,
            ):
                seen[replica.name] = self.engine.observe(replica.handle)

    def _writer(self, plan: _Plan, now: float) -> Callable[[Tx, JobRow], list[object]]:
        def apply(tx: Tx, row: JobRow) -> list[object]:
            if row.deleted_at is not None and not plan.job.deleted:
                return []  # deleted since it was read: the next cycle takes it from there
            gone = write_all(tx, row, plan.actions, now)
            launching = tuple(a.replica for a in plan.actions if isinstance(a, Launch))
            effects: list[object] = [
                a for a in plan.actions if isinstance(a, Terminate | Kill | Drain)
            ]
            effects += gone
            if launching and plan.spec is not None:
                assign_ports(row, plan.ports)
                effects.append(Planned(job_snapshot(row), plan.spec, launching))
            return effects

        return apply


def fail_row(
    tx: Tx,
    row: JobRow,
    message: str,
    now: float,
    config: LifecycleConfig,
    seen: Observations | None = None,
) -> list[object]:
    """Fail the job of ``row`` with ``message`` (see ``fail_broken``); the kills to make."""
    actions = fail_broken(job_snapshot(row), seen or {}, message, now, config)
    gone = write_all(tx, row, actions, now)
    return [*(a for a in actions if isinstance(a, Kill)), *gone]


def write_all(tx: Tx, row: JobRow, actions: Sequence[Action], now: float) -> list[object]:
    """Write ``actions`` onto ``row``; returns the job, when they remove it, as the
    effect that drops its files once the transaction commits."""
    gone: list[object] = [JobGone.of(row) for a in actions if isinstance(a, ForgetJob)]
    for action in actions:
        write(tx, row, action, now)
    return gone


def perform(engine: Engine, effects: Sequence[object]) -> list[Planned]:
    """Make the committed engine calls: SIGTERM and SIGKILL now (neither waits; a
    vacated replica's SIGKILL comes from a timer), and the files of jobs gone are
    dropped; the launches are returned, to be made after them."""
    planned = []
    for effect in effects:
        try:
            if isinstance(effect, Terminate) or (isinstance(effect, Drain) and effect.handle):
                assert effect.handle is not None
                engine.terminate(effect.handle)
            elif isinstance(effect, Kill) and effect.stacks:
                kill_with_stacks(engine, effect.replica, effect.handle)
            elif isinstance(effect, Kill):
                engine.kill(effect.handle)
            elif isinstance(effect, Vacate):
                engine.terminate(effect.handle)
                later = threading.Timer(effect.grace_s, _kill_quietly, (engine, effect.handle))
                later.daemon = True
                later.start()
            elif isinstance(effect, JobGone):
                engine.forget(effect.job, effect.uid)
            elif isinstance(effect, Planned):
                planned.append(effect)
        except Exception:
            log.exception("engine call %s failed; the next cycle observes the replica", effect)
    return planned


def _kill_quietly(engine: Engine, handle: ReplicaHandle) -> None:
    """SIGKILL what is left of a vacated replica (nothing, when it already exited)."""
    try:
        engine.kill(handle)
    except Exception:
        log.exception("killing vacated replica %s failed", handle)


def _expire(tx: Tx, now: float) -> list[object]:
    """Remove finished jobs whose ttlSecondsAfterFinished has run out."""
    gone: list[object] = []
    for job in tx.expired_jobs(now):
        gone.append(JobGone.of(job))
        ttl = (job.expires_at or now) - (job.finished_at or now)
        tx.delete_job(job)
        tx.add_event(
            None,
            "Deleted",
            f"job {job.key} removed {ttl:g}s after it finished (ttlSecondsAfterFinished)",
        )
    return gone


def _frees(action: Action) -> bool:
    if isinstance(action, Transition):
        return action.phase.is_terminal
    return isinstance(action, ForgetJob | Forget)
