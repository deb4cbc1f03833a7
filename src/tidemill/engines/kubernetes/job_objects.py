"""TrainingJob objects and tidemill's store, kept in step (``kubectl`` and ``tidemill``
reach the same jobs).

- An object made with ``kubectl apply`` (no ``tidemill.io/uid`` annotation) is submitted
  to the controller and annotated with the job's uid; a refusal is written to its status
  (``Failed`` and the reasons), once per generation. A namespace at its bound of
  unfinished jobs is no fault of the object: it waits (``Pending``, saying why) and is
  submitted at a later sync once the namespace has room, as Kueue holds a workload its
  queue has no quota for.
- An annotated object whose job has left the store (``tidemill delete``, TTL) is deleted:
  Kubernetes' garbage collector then removes its pods, Service, Secret and PodGroup.
- An annotated object deleted with ``kubectl delete`` deletes its job.
- Every job's phase, conditions and replica counts are written to its object's status
  subresource when they change.
- A change of an object's ``spec.suspend`` (``kubectl patch``) suspends or resumes its
  job, once (see :data:`names.SUSPEND_ANNOTATION`); a job suspended or resumed through
  tidemill gets its object's ``spec.suspend`` written to match (as Kueue writes a
  Job's), so ``kubectl get -o yaml`` never shows a running job as suspended.
- A pod tidemill labelled whose launch is no longer the current launch of any replica in
  the store (a launch cut short by a crash, a replica forgotten) is deleted: no pod leaks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from tidemill.api.errors import ConflictError, NotFoundError, QuotaExceeded, SpecError
from tidemill.api.job import TrainingJob
from tidemill.api.loader import job_from_custom_object
from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.controller.suspension import suspending
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.cluster import Cluster
from tidemill.engines.kubernetes.informer import Informer, Obj
from tidemill.engines.kubernetes.inventory import is_ours
from tidemill.store.store import FinishedJob, Store
from tidemill.store.tables import JobRow

log = logging.getLogger(__name__)

SYNC_S = 1.0
SETTLED_REREAD_S = 600.0
"""How long the sync keeps what it derived from a finished job's row before it reads the
row again all the same (a few each sync, so that no sync reads them all)."""
REREAD_LEAST, REREAD_PARTS = 16, 600
"""Each sync reads again at most the larger of REREAD_LEAST and 1/REREAD_PARTS of them."""
UNFINISHED = tuple(phase.value for phase in JobPhase if not phase.is_terminal)
ACTIVE = (ReplicaPhase.RUNNING.value, ReplicaPhase.LAUNCHING.value, ReplicaPhase.STOPPING.value)
KUBECTL_ACTOR = "kubectl (a TrainingJob object)"


class JobControl(Protocol):
    store: Store

    def submit(self, job: TrainingJob, *, actor: str = ...) -> str: ...

    def delete(self, namespace: str, name: str, *, actor: str = ...) -> str: ...

    def suspend(self, namespace: str, name: str, *, actor: str = ...) -> None: ...

    def resume(self, namespace: str, name: str, *, actor: str = ...) -> None: ...


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_status(row: JobRow, generation: int | None) -> dict[str, Any]:
    """The object's ``status`` for the job in ``row``."""
    roles = (row.spec.get("spec") or {}).get("roles") or {}
    replicas: dict[str, dict[str, int]] = {}
    for role, spec in roles.items():
        phases = Counter(r.phase for r in row.replicas if r.role == role)
        replicas[role] = {
            "desired": int(row.desired.get(role, (spec or {}).get("replicas", 1))),
            "active": sum(phases[p] for p in ACTIVE),
            "succeeded": phases[ReplicaPhase.SUCCEEDED.value],
            "failed": phases[ReplicaPhase.FAILED.value],
        }
    status: dict[str, Any] = {
        "phase": row.phase,
        "message": row.message,
        "uid": row.uid,
        "queue": row.queue,
        "conditions": [
            {
                "type": c["type"],
                "status": "True" if c["status"] else "False",
                "reason": c.get("reason") or "",
                "message": c.get("message") or "",
                "lastTransitionTime": timestamp(c.get("last_transition_time")),
            }
            for c in row.conditions
        ],
        "replicas": replicas,
        "startTime": timestamp(row.started_at),
        "completionTime": timestamp(row.finished_at),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return {k: v for k, v in status.items() if v is not None}


def launches_of(row: JobRow) -> set[tuple[str, str]]:
    """(job uid, launch id) of each replica's current launch, as pods are labelled."""
    uid = names.label_value(row.uid)
    return {(uid, names.label_value(r.launch_id)) for r in row.replicas if r.launch_id}


@dataclass(frozen=True)
class Settled:
    """What the object sync keeps of a finished job, whose row no longer changes."""

    namespace: str
    name: str
    status: dict[str, Any]
    """:func:`job_status` without a generation"""
    launches: frozenset[tuple[str, str]]
    read_at: float
    """when the row was read (monotonic)"""

    @classmethod
    def of(cls, row: JobRow, now: float) -> Settled:
        status = job_status(row, None)
        return cls(row.namespace, row.name, status, frozenset(launches_of(row)), now)

    def status_at(self, generation: int | None) -> dict[str, Any]:
        if generation is None:
            return self.status
        return {**self.status, "observedGeneration": generation}


def job_of(obj: Obj) -> TrainingJob:
    """The job an object describes (list items may leave out apiVersion and kind)."""
    return job_from_custom_object({"apiVersion": names.API_VERSION, "kind": names.KIND, **obj})


class JobObjects:
    """Runs the sync in a thread once a second and whenever an object changes, but never
    more than once a second nor more than half the time (see :meth:`_run`)."""

    def __init__(
        self, cluster: Cluster, pods: Informer, control: JobControl, relist_s: float = 60.0
    ) -> None:
        self.cluster = cluster
        self.pods = pods
        self.control = control
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._settled: dict[str, Settled] = {}
        """finished job uid -> what the sync derived from its row"""
        self._in_step: dict[str, tuple[str, Settled]] = {}
        """object uid -> (resourceVersion, job) of a finished job's object last seen
        showing that job as it is"""
        self._refused: dict[str, int] = {}
        """object uid -> generation whose refusal was written"""
        self._lock = threading.Lock()
        self._seen_uids: set[str] = set()
        """tidemill job uids the informer has held an object for: a job whose object is
        then gone from its copy was deleted with it"""
        self._adopted: dict[str, str] = {}
        """object uid -> the uid of the job submitted for it (the annotation may lag)"""
        custom = cluster.custom
        self.objects = Informer(
            cluster,
            "trainingjobs",
            _cluster_list(custom),
            self._object_changed,
            relist_s,
        )
        self._thread = threading.Thread(target=self._run, name="tidemill-jobobjects", daemon=True)

    def start(self) -> JobObjects:
        self.objects.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.objects.stop()
        self._thread.join(timeout=10)

    def _object_changed(self, obj: Obj | None) -> None:
        uid = None if obj is None else tidemill_uid(obj)
        if uid is not None:
            with self._lock:
                self._seen_uids.add(uid)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(SYNC_S)
            self._wake.clear()
            if self._stop.is_set() or not self.objects.synced.is_set():
                continue
            started = time.monotonic()
            try:
                self.sync_once()
            except Exception:
                log.exception("TrainingJob sync failed; retrying")
            took_s = time.monotonic() - started
            # Every status it writes wakes it again and each sync reads every job, so
            # on a busy cluster back-to-back syncs would hold the GIL from the controller:
            # the wakes in between are coalesced into one sync.
            self._stop.wait(max(SYNC_S - took_s, took_s))

    def sync_once(self) -> None:
        # Seen uids first: an object seen before the copy is taken and missing from it
        # was deleted. Pods next: a pod in this list was created after its launch was
        # recorded, so the store read after it knows it.
        with self._lock:
            seen = set(self._seen_uids)
        pods = self.pods.snapshot()
        objects = self.objects.snapshot()
        rows, finished = self._read_jobs()
        launches = {pair for kept in self._settled.values() for pair in kept.launches}
        for row in rows.values():
            launches |= launches_of(row)
        present = set()
        full: set[str] = set()
        in_step: dict[str, tuple[str, Settled]] = {}
        for obj in objects:
            uid = tidemill_uid(obj)
            if uid is None:
                self._adopt(obj, full)
            elif uid in rows:
                present.add(uid)
                self._follow_suspend(obj, rows[uid])
                self._show_status(obj, job_status(rows[uid], generation(obj)))
            elif uid in self._settled:
                present.add(uid)
                self._show_settled(obj, self._settled[uid], in_step)
            else:
                self._delete_object(obj)
        for pod in leaked_pods(pods, launches):
            self._delete_pod(pod)
        for uid in seen - present:
            with self._lock:
                self._seen_uids.discard(uid)
            job = rows.get(uid)
            if job is not None and job.deleted_at is None:
                self.control.delete(job.namespace, job.name, actor=KUBECTL_ACTOR)
            elif uid in self._settled and finished[uid].deleted_at is None:
                kept = self._settled[uid]
                self.control.delete(kept.namespace, kept.name, actor=KUBECTL_ACTOR)
        self._in_step = in_step

    def _read_jobs(self) -> tuple[dict[str, JobRow], dict[str, FinishedJob]]:
        """The rows of unfinished jobs and of jobs finished since the last sync (uid ->
        row), and every finished job (uid -> id, deletion mark). A finished job's row no
        longer changes, so what a sync derives from it is kept (:class:`Settled`) and
        its row is not read again: with 10,000 finished jobs reading every row took
        1.8-3.4 s a sync. A kept row is read again after SETTLED_REREAD_S all the same,
        a few a sync (the oldest first)."""
        now = time.monotonic()
        stale = [
            uid for uid, kept in self._settled.items() if now - kept.read_at >= SETTLED_REREAD_S
        ]
        for uid in stale[: max(REREAD_LEAST, len(self._settled) // REREAD_PARTS)]:
            del self._settled[uid]
        with self.control.store.read() as tx:
            # Unfinished first: a job that finishes between the two reads is in both (on
            # Postgres each read sees what was committed when it began), never in neither.
            rows = {row.uid: row for row in tx.jobs(phases=UNFINISHED)}
            finished = tx.finished_jobs()
            fresh = [job.id for uid, job in finished.items() if uid not in self._settled]
            newly_finished = {row.uid: row for row in tx.jobs_by_id(fresh)}
        kept = self._settled
        self._settled = {uid: kept[uid] for uid in finished if uid in kept}
        self._settled.update((uid, Settled.of(row, now)) for uid, row in newly_finished.items())
        return rows, finished

    def _show_status(self, obj: Obj, status: dict[str, Any]) -> bool:
        """Write ``status`` unless the object shows it; True when it did already."""
        if _same_status(obj.get("status") or {}, status):
            return True
        self._write_status(obj, status)
        return False

    def _show_settled(
        self, obj: Obj, kept: Settled, in_step: dict[str, tuple[str, Settled]]
    ) -> None:
        """The object of a finished job. Once it shows the job's final status, nothing
        changes until the object does (its resourceVersion), so it is compared no more:
        with 10,000 such objects comparing each took most of a sync (300 ms)."""
        key, version = obj_uid(obj), obj["metadata"].get("resourceVersion", "")
        known = self._in_step.get(key)
        if known is not None and known[0] == version and known[1] is kept:
            in_step[key] = known
            return
        quiet = self._ignore_suspend(obj)
        if self._show_status(obj, kept.status_at(generation(obj))) and quiet:
            in_step[key] = (version, kept)

    def _ignore_suspend(self, obj: Obj) -> bool:
        """A finished job has nothing to suspend or resume: a change of its object's
        ``spec.suspend`` is only noted, as :meth:`_follow_suspend` notes a refused one.
        True when there was no change to note."""
        wanted = suspend_flag(obj)
        if annotations_of(obj).get(names.SUSPEND_ANNOTATION) == wanted:
            return True
        meta = obj["metadata"]
        log.info(
            "TrainingJob %s/%s: spec.suspend=%s changes nothing: its job has finished",
            meta["namespace"],
            meta["name"],
            wanted,
        )
        self._patch(obj, {"metadata": {"annotations": {names.SUSPEND_ANNOTATION: wanted}}})
        return False

    def _adopt(self, obj: Obj, full: set[str]) -> None:
        """Submit a new object's job. ``full``: namespaces found at their bound in this
        sync, whose other new objects wait without asking again."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") or self._refused.get(meta["uid"]) == generation(obj):
            return
        uid = self._adopted.get(meta["uid"])
        if uid is None:
            if meta["namespace"] in full:
                return
            try:
                key = self.control.submit(job_of(obj), actor=KUBECTL_ACTOR)
            except QuotaExceeded as exc:
                full.add(meta["namespace"])
                waiting = {"phase": "Pending", "message": f"waiting for room: {exc}"}
                if not _same_status(obj.get("status") or {}, waiting):
                    self._write_status(obj, waiting)
                return
            except (SpecError, ConflictError, ValueError) as exc:
                self._refused[meta["uid"]] = generation(obj) or 0
                self._write_status(obj, {"phase": "Failed", "message": f"refused: {exc}"})
                return
            with self.control.store.read() as tx:
                namespace, _, name = key.partition("/")
                row = tx.job(namespace, name)
                if row is None:
                    return
                uid = self._adopted[meta["uid"]] = row.uid
        annotations = {names.UID_ANNOTATION: uid, names.SUSPEND_ANNOTATION: suspend_flag(obj)}
        self._patch(obj, {"metadata": {"annotations": annotations}})

    def _follow_suspend(self, obj: Obj, row: JobRow) -> None:
        """Suspend or resume the job when its object's ``spec.suspend`` changed since
        tidemill last applied it; a resume waits until the job's processes are gone.
        Else write the job's own suspension into the object, if they differ."""
        wanted = suspend_flag(obj)
        if annotations_of(obj).get(names.SUSPEND_ANNOTATION) == wanted:
            self._show_suspension(obj, row, wanted)
            return
        try:
            if wanted == names.flag(True):
                self.control.suspend(row.namespace, row.name, actor=KUBECTL_ACTOR)
            elif suspending(row):
                return  # still stopping for its suspension: resumed at a later sync
            elif row.phase == JobPhase.SUSPENDED.value:
                self.control.resume(row.namespace, row.name, actor=KUBECTL_ACTOR)
        except (ConflictError, NotFoundError) as exc:
            log.info("TrainingJob %s: spec.suspend=%s changes nothing: %s", row.key, wanted, exc)
        self._patch(obj, {"metadata": {"annotations": {names.SUSPEND_ANNOTATION: wanted}}})

    def _show_suspension(self, obj: Obj, row: JobRow, shown_flag: str) -> None:
        """Set ``spec.suspend`` to what the job holds after a ``tidemill suspend`` or
        ``resume``; the object's resourceVersion makes a ``kubectl patch`` made
        meanwhile win (the write is refused and the next sync looks again)."""
        held = JobPhase(row.phase) is JobPhase.SUSPENDED or suspending(row)
        if names.flag(held) == shown_flag or JobPhase(row.phase).is_terminal:
            return
        meta = obj["metadata"]
        self._patch(
            obj,
            {
                "metadata": {
                    "resourceVersion": meta["resourceVersion"],
                    "annotations": {names.SUSPEND_ANNOTATION: names.flag(held)},
                },
                "spec": {"suspend": held},
            },
        )

    def _patch(self, obj: Obj, body: dict[str, Any], status: bool = False) -> None:
        meta = obj["metadata"]
        custom = self.cluster.custom
        method = (
            custom.patch_namespaced_custom_object_status
            if status
            else custom.patch_namespaced_custom_object
        )
        try:
            self.cluster.call(
                f"patch trainingjob {meta['namespace']}/{meta['name']}",
                method,
                names.GROUP,
                names.VERSION,
                meta["namespace"],
                names.PLURAL,
                meta["name"],
                body,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    def _write_status(self, obj: Obj, status: dict[str, Any]) -> None:
        self._patch(obj, {"status": status}, status=True)

    def _delete_object(self, obj: Obj) -> None:
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            return
        try:
            self.cluster.call(
                f"delete trainingjob {meta['namespace']}/{meta['name']}",
                self.cluster.custom.delete_namespaced_custom_object,
                names.GROUP,
                names.VERSION,
                meta["namespace"],
                names.PLURAL,
                meta["name"],
                propagation_policy="Background",
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        log.warning("pod %s/%s: no replica launched it now; deleting it", namespace, name)
        try:
            self.cluster.call(
                f"delete pod {meta['namespace']}/{meta['name']}",
                self.cluster.core.delete_namespaced_pod,
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
            )
        except ApiException as exc:
            if exc.status != 404:
                raise


def leaked_pods(pods: Iterable[Obj], launches: set[tuple[str, str]]) -> list[Obj]:
    """tidemill's pods whose (job uid, launch id) is no replica's current launch."""
    leaked = []
    for pod in pods:
        if not is_ours(pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        labels = pod["metadata"].get("labels") or {}
        launch = (labels.get(names.UID_LABEL, ""), labels.get(names.LAUNCH_LABEL, ""))
        if launch not in launches:
            leaked.append(pod)
    return leaked


def tidemill_uid(obj: Obj) -> str | None:
    uid = annotations_of(obj).get(names.UID_ANNOTATION)
    return str(uid) if uid else None


def obj_uid(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def suspend_flag(obj: Obj) -> str:
    """The object's ``spec.suspend`` as :data:`names.SUSPEND_ANNOTATION` holds it."""
    return names.flag((obj.get("spec") or {}).get("suspend") is True)


def generation(obj: Obj) -> int | None:
    value = (obj.get("metadata") or {}).get("generation")
    return int(value) if isinstance(value, int) else None


def _same_status(current: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(current.get(k) == v for k, v in wanted.items())


def _cluster_list(custom: Any) -> Any:
    def list_objects(**kwargs: Any) -> Any:
        return custom.list_cluster_custom_object(names.GROUP, names.VERSION, names.PLURAL, **kwargs)

    return list_objects
