"""Deleting a job: kill its processes and forget it, holding no lock and no cycle.

1. One transaction marks the job deleted (``deleted_at``; its message names who asked),
   so no cycle restarts what is being killed and a restarted server finishes the job.
2. Outside any transaction, every replica with a handle gets SIGKILL (``engine.kill``
   returns at once); one whose launch is not recorded yet gets it as soon as the loop
   records it.
3. Once they are all gone, one transaction removes the row, and then the engine the
   job's files (``engine.forget``). What is not settled within :data:`DELETE_WAIT_S` is
   left to the lifecycle step, which kills again and forgets the job when nothing runs
   (``ForgetJob``; the applier has the engine forget it too).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from tidemill.api.errors import job_not_found
from tidemill.api.status import ReplicaPhase
from tidemill.controller.rows import handle_of
from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.store.store import Store

log = logging.getLogger(__name__)

DELETE_WAIT_S = 1.0
"""How long ``delete`` waits for its kills to land before it returns."""
POLL_S = 0.02
LIVE = (ReplicaPhase.RUNNING.value, ReplicaPhase.STOPPING.value, ReplicaPhase.LAUNCHING.value)


class Deleter:
    def __init__(
        self, store: Store, engine: Engine, clock: Callable[[], float], retry_kill_s: float
    ) -> None:
        self.store = store
        self.engine = engine
        self.clock = clock
        self.retry_kill_s = retry_kill_s
        """when the lifecycle kills a replica again if it is still there"""
        self._turns: dict[str, tuple[threading.Lock, int]] = {}
        """job key -> its deletes' lock and how many hold or wait for it"""
        self._turns_guard = threading.Lock()

    def delete(self, namespace: str, name: str, actor: str) -> str:
        """Mark, kill, forget; returns the job's uid (its row may outlive the call)."""
        with self._turn(f"{namespace}/{name}"):
            return self._delete(namespace, name, actor)

    @contextmanager
    def _turn(self, key: str) -> Iterator[None]:
        """Deletes of one job take turns (of different jobs, not): a second one still
        killing the replicas wrote their exit files into the folders the first had
        just removed with the job."""
        with self._turns_guard:
            lock, count = self._turns.get(key, (threading.Lock(), 0))
            self._turns[key] = (lock, count + 1)
        try:
            with lock:
                yield
        finally:
            with self._turns_guard:
                lock, count = self._turns[key]
                if count == 1:
                    del self._turns[key]
                else:
                    self._turns[key] = (lock, count - 1)

    def _delete(self, namespace: str, name: str, actor: str) -> str:
        uid = self._mark(namespace, name, actor)
        killed: dict[tuple[str, str | None], ReplicaHandle] = {}
        deadline = time.monotonic() + DELETE_WAIT_S
        while True:
            with self.store.read() as tx:
                row = tx.job(namespace, name)
                if row is None or row.uid != uid:
                    return uid  # the lifecycle forgot it already
                launching = any(r.phase == ReplicaPhase.LAUNCHING.value for r in row.replicas)
                handles = {
                    (r.replica_name, r.launch_id): handle
                    for r in row.replicas
                    if r.phase in LIVE and (handle := handle_of(r.handle)) is not None
                }
            for key, handle in handles.items():
                if key not in killed:
                    self._kill(handle)
                    killed[key] = handle
            if not launching and self._gone(killed.values()):
                self._forget(namespace, name, uid, actor)
                return uid
            if time.monotonic() >= deadline:
                return uid
            time.sleep(POLL_S)

    def _mark(self, namespace: str, name: str, actor: str) -> str:
        with self.store.transaction() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise job_not_found(name, namespace)
            now = self.clock()
            row.deleted_at = row.deleted_at or now
            row.message = f"deleted by {actor}"
            for replica in row.replicas:
                if replica.phase in LIVE:
                    replica.kill_at = now + self.retry_kill_s  # killed here first
            message = f"delete requested by {actor}; killing its processes"
            tx.add_event(row.key, "Deleting", message, at=now)
            return row.uid

    def _forget(self, namespace: str, name: str, uid: str, actor: str) -> None:
        with self.store.transaction() as tx:
            row = tx.job(namespace, name)
            launching = row is not None and any(
                r.phase == ReplicaPhase.LAUNCHING.value for r in row.replicas
            )
            if row is None or row.uid != uid or launching:
                return
            tx.delete_job(row)
            message = f"job {row.key} deleted by {actor}; processes killed"
            tx.add_event(None, "Deleted", message)
        try:
            self.engine.forget(f"{namespace}/{name}", uid)
        except Exception:
            log.exception("could not remove the files of deleted job %s/%s", namespace, name)

    def _kill(self, handle: ReplicaHandle) -> None:
        try:
            self.engine.kill(handle)
        except Exception:
            log.exception("could not kill %s; the next cycle tries again", handle)

    def _gone(self, handles: Iterable[ReplicaHandle]) -> bool:
        try:
            return not any(self.engine.observe(h).running for h in handles)
        except Exception:
            log.exception("could not observe a replica being deleted")
            return False
