"""The repository: every state change is one transaction.

SQLite in WAL mode under the state folder by default; any SQLAlchemy URL (Postgres:
``postgresql+psycopg://...``) works the same. A database that cannot write (disk full,
read-only, gone) raises :class:`StoreUnavailable` rather than a driver error, and
:meth:`Store.write_problem` says so until a probe write succeeds again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Engine, create_engine, delete, event, func, insert, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from tidemill.store.tables import (
    EVENT_MESSAGE_MAX_CHARS,
    EVENT_REASON_MAX_CHARS,
    EVENT_REPLICA_MAX_CHARS,
    EVENTS_PER_JOB_MAX,
    Base,
    EventRow,
    JobRow,
    LatestMetricRow,
    MetricRow,
    NodeRow,
    ProbeRow,
    QueueRow,
    ReplicaRow,
    TokenRow,
    UtilizationRow,
)

IDS_PER_QUERY = 1000
"""Ids one ``IN`` list holds."""
FINISHED_PHASES = ("Succeeded", "Failed")
"""Phases a job ends in (``JobPhase.is_terminal``)."""
SUBMIT_LOCK_KEY = 0x7469_6465_6D69_6C6C
"""Postgres advisory lock that submits hold for their transaction ("tidemill" in hex)."""
PROBE_INTERVAL_S = 3.0
"""/healthz tries a small write at most this often (how a full store is seen to recover)."""
PROBE_BYTES = 8192
"""Large enough that the probe needs new pages, as the writes that failed did."""

_SQLITE_CANNOT_WRITE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")
_POSTGRES_CANNOT_WRITE = ("08", "53", "57P", "58", "25006")
"""SQLSTATE classes: connection lost, disk full/out of resources, server shutting down,
system I/O error, read-only transaction."""


class StoreUnavailable(Exception):
    """The store cannot write (disk full, database gone); the message says why.

    Raised by :meth:`Store.transaction`; the API answers 503 with it, the controller
    skips the cycle (no job is failed for it) and retries. ``cause`` is the database's
    own words ("database or disk is full").
    """

    def __init__(self, message: str, cause: str | None = None) -> None:
        super().__init__(message)
        self.cause = cause or message


def cannot_write_cause(exc: DBAPIError) -> str | None:
    """The database's reason when ``exc`` means it cannot write; None for anything else
    (a constraint, a bug), which says nothing about the store's health."""
    orig = exc.orig
    lines = str(orig).strip().splitlines()
    reason = lines[0] if lines else type(orig).__name__
    sqlite_name = getattr(orig, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        return reason if sqlite_name.startswith(_SQLITE_CANNOT_WRITE) else None
    if exc.connection_invalidated:
        return reason
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return reason if sqlstate.startswith(_POSTGRES_CANNOT_WRITE) else None
    # No SQLSTATE: the driver could not reach the server at all.
    return reason if isinstance(exc, OperationalError) else None


PRIVATE_FOLDER_MODE = 0o700
"""A state folder tidemill creates is its owner's alone: jobs' specs, logs and
checkpoints lie in it."""


def sqlite_url(state_dir: Path) -> str:
    state_dir.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
    return f"sqlite:///{state_dir / 'tidemill.db'}"


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _cut(text: str, limit: int, note: bool = True) -> str:
    """``text`` within ``limit`` characters; with ``note``, what was cut is said."""
    if len(text) <= limit:
        return text
    if not note:
        return text[:limit]
    tail = f"… [{len(text) - limit} more characters cut]"
    return text[: limit - len(tail)] + tail


class EventCap:
    """Keeps at most ``limit`` events per job: the first event a job gets after start,
    and every ``prune_every``-th after it, drop all but the newest
    ``limit - prune_every``, so the count never passes ``limit`` and the query that
    finds the oldest runs once per ``prune_every`` events, not on each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.prune_every = max(1, limit // 100)
        self._added: dict[str | None, int] = {}
        self._lock = threading.Lock()

    def due(self, job: str | None) -> bool:
        with self._lock:
            count = self._added.get(job, 0)
            self._added[job] = count + 1
        return count % self.prune_every == 0

    def forget(self, job: str) -> None:
        with self._lock:
            self._added.pop(job, None)

    def created(self, job: str) -> None:
        """A job made in this process starts with no events: nothing to prune yet."""
        with self._lock:
            self._added[job] = 1


def _of_job(job: str | None) -> ColumnElement[bool]:
    return EventRow.job.is_(None) if job is None else EventRow.job == job


class FinishedJob(NamedTuple):
    id: int
    deleted_at: float | None


class JobListing(NamedTuple):
    """What the jobs list shows of a job, read as plain columns: listing a thousand jobs
    builds no ORM rows (which cost three times as much, and more to render)."""

    id: int
    namespace: str
    name: str
    queue: str
    priority: int
    phase: str
    created_at: float
    message: str
    desired: dict[str, int]
    pending_code: str | None
    pending_message: str | None


class QueuedJob(NamedTuple):
    """What each scheduling pass reads of a pending job, as plain columns: a backlog of
    thousands is read every pass, and ORM rows of them cost four times as much to build
    (and more to collect)."""

    id: int
    uid: str
    namespace: str
    name: str
    phase: str
    priority: int
    desired: dict[str, int]
    created_at: float
    pending_code: str | None
    pending_message: str | None
    master_port: int | None
    job_master_port: int | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Tx:
    """One transaction's view of the store. Rows are valid until the block ends."""

    def __init__(self, session: Session, event_cap: EventCap) -> None:
        self.session = session
        self.event_cap = event_cap

    def hold_submit_lock(self) -> None:
        """Serialise submits until this transaction ends. SQLite's writers already take
        turns (the store's write lock); on Postgres two submits at once could each count
        a namespace below its bound, or both make a tenant's new queue or take the same
        name, and the second would fail at commit with a unique-key error."""
        if self.session.get_bind().dialect.name == "postgresql":
            self.session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK_KEY)))

    def job(self, namespace: str, name: str) -> JobRow | None:
        stmt = (
            select(JobRow)
            .where(JobRow.namespace == namespace, JobRow.name == name)
            .options(selectinload(JobRow.replicas))
        )
        return self.session.scalars(stmt).first()

    def job_by_uid(self, uid: str) -> JobRow | None:
        return self.session.scalars(select(JobRow).where(JobRow.uid == uid)).first()

    def jobs_named(self, name: str) -> list[JobRow]:
        stmt = select(JobRow).where(JobRow.name == name).options(selectinload(JobRow.replicas))
        return list(self.session.scalars(stmt))

    def jobs(
        self, phases: Sequence[str] | None = None, namespace: str | None = None
    ) -> list[JobRow]:
        stmt = select(JobRow).options(selectinload(JobRow.replicas)).order_by(JobRow.id)
        if phases is not None:
            stmt = stmt.where(JobRow.phase.in_(list(phases)))
        if namespace is not None:
            stmt = stmt.where(JobRow.namespace == namespace)
        return list(self.session.scalars(stmt))

    def deleted_jobs(self) -> list[JobRow]:
        """Jobs marked deleted, whatever their phase: a server that stopped between
        marking a job and forgetting it finishes the deletion when it starts again."""
        # a range on the indexed column: SQLite scans every row (specs and all) for
        # IS NOT NULL, and the controller asks this every cycle
        stmt = (
            select(JobRow)
            .where(JobRow.deleted_at >= 0)
            .options(selectinload(JobRow.replicas))
        )
        return list(self.session.scalars(stmt))

    def unfinished_jobs(self, namespace: str) -> int:
        """How many jobs of ``namespace`` have not finished (nor been deleted)."""
        stmt = (
            select(func.count())
            .select_from(JobRow)
            .where(JobRow.namespace == namespace)
            .where(JobRow.phase.not_in(FINISHED_PHASES))
            .where(JobRow.deleted_at.is_(None))
        )
        return int(self.session.scalar(stmt) or 0)

    def queued_jobs(self) -> list[QueuedJob]:
        """Pending jobs for the scheduler, oldest first (the rows of those it has not seen
        come from ``jobs_by_id``)."""
        stmt = (
            select(*(getattr(JobRow, f) for f in QueuedJob._fields))
            .where(JobRow.phase == "Pending")
            .order_by(JobRow.id)
        )
        return [QueuedJob(*row) for row in self.session.execute(stmt)]

    def jobs_by_id(self, ids: Sequence[int]) -> list[JobRow]:
        """The jobs of ``ids``, asked for :data:`IDS_PER_QUERY` at a time (SQLite takes at
        most 32,766 parameters in one statement)."""
        rows: list[JobRow] = []
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = list(ids[start : start + IDS_PER_QUERY])
            stmt = select(JobRow).where(JobRow.id.in_(chunk)).options(selectinload(JobRow.replicas))
            rows += self.session.scalars(stmt)
        return rows

    def finished_jobs(self) -> dict[str, FinishedJob]:
        """uid -> id and deletion mark of every finished job, as plain columns: a
        finished job's row no longer changes, so a reader that keeps what it derived from
        one needs no more than this to know it is still there."""
        columns = select(JobRow.uid, JobRow.id, JobRow.deleted_at)
        stmt = columns.where(JobRow.phase.in_(FINISHED_PHASES))
        return {uid: FinishedJob(id, deleted) for uid, id, deleted in self.session.execute(stmt)}

    def expired_jobs(self, now: float) -> list[JobRow]:
        """Finished jobs whose ttlSecondsAfterFinished has run out."""
        stmt = select(JobRow).where(JobRow.expires_at.is_not(None), JobRow.expires_at <= now)
        return list(self.session.scalars(stmt))

    def job_summaries(
        self,
        phase: str | None = None,
        namespace: str | None = None,
        *,
        limit: int | None = None,
        after: int | None = None,
        newest: bool = False,
    ) -> list[tuple[JobListing, dict[str, int]]]:
        """Jobs for listing, with running replicas per role counted in SQL (no replica
        rows). A page: at most ``limit`` jobs past the job id ``after``, oldest first or
        ``newest`` first (a range of the primary key, so a page costs its own size however
        many jobs the store holds)."""
        order = JobRow.id.desc() if newest else JobRow.id
        stmt = select(*(getattr(JobRow, f) for f in JobListing._fields)).order_by(order)
        if phase is not None:
            stmt = stmt.where(JobRow.phase == phase)
        if namespace is not None:
            stmt = stmt.where(JobRow.namespace == namespace)
        if after is not None:
            stmt = stmt.where(JobRow.id < after if newest else JobRow.id > after)
        if limit is not None:
            stmt = stmt.limit(limit)
        rows = [JobListing(*row) for row in self.session.execute(stmt)]
        if not rows:
            return []
        ids = [row.id for row in rows]
        counts = (
            select(ReplicaRow.job_id, ReplicaRow.role, func.count())
            .where(ReplicaRow.phase == "Running")
            .where(ReplicaRow.job_id.between(min(ids), max(ids)))
            .group_by(ReplicaRow.job_id, ReplicaRow.role)
        )
        running: dict[int, dict[str, int]] = {}
        for job_id, role, count in self.session.execute(counts):
            running.setdefault(job_id, {})[role] = count
        return [(row, running.get(row.id, {})) for row in rows]

    def job_phases(self, namespace: str | None = None) -> dict[str, int]:
        """Phase -> how many jobs (of ``namespace``), counted in SQL: the totals a page
        of the list cannot show."""
        stmt = select(JobRow.phase, func.count()).group_by(JobRow.phase)
        if namespace is not None:
            stmt = stmt.where(JobRow.namespace == namespace)
        return {phase: count for phase, count in self.session.execute(stmt)}

    def job_counts(self) -> dict[tuple[str, str], int]:
        """(queue, phase) -> how many jobs, counted in SQL: what queue and phase totals
        need, without loading the jobs."""
        stmt = select(JobRow.queue, JobRow.phase, func.count()).group_by(JobRow.queue, JobRow.phase)
        return {(queue, phase): count for queue, phase, count in self.session.execute(stmt)}

    def add_job(self, row: JobRow) -> JobRow:
        """Events a deleted job of the same name left behind (its Deleted notice) go:
        a new job under an old name inherits none."""
        self.session.execute(delete(EventRow).where(_of_job(row.key)))
        self._forget_metrics(row.key)
        self.session.add(row)
        self.session.flush()
        self.event_cap.created(row.key)
        return row

    def delete_job(self, row: JobRow) -> None:
        """The job, its replicas, its events and its metrics."""
        self.session.delete(row)
        self.session.execute(delete(EventRow).where(_of_job(row.key)))
        self._forget_metrics(row.key)
        self.event_cap.forget(row.key)

    def _forget_metrics(self, job: str) -> None:
        self.session.execute(delete(MetricRow).where(MetricRow.job == job))
        self.session.execute(delete(LatestMetricRow).where(LatestMetricRow.job == job))

    def delete_replica(self, job: JobRow, replica: ReplicaRow) -> None:
        job.replicas.remove(replica)

    def add_event(
        self,
        job: str | None,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        replica: str | None = None,
        at: float | None = None,
    ) -> None:
        """Over-long fields are cut (the message says so); beyond the per-job cap the
        oldest events of ``job`` are dropped."""
        self.session.add(
            EventRow(
                time=time.time() if at is None else at,
                job=job,
                type="Warning" if warning else "Normal",
                reason=_cut(reason, EVENT_REASON_MAX_CHARS, note=False),
                message=_cut(message, EVENT_MESSAGE_MAX_CHARS),
                replica=None if replica is None else _cut(replica, EVENT_REPLICA_MAX_CHARS, False),
            )
        )
        if self.event_cap.due(job):
            self._drop_oldest_events(job)

    def _drop_oldest_events(self, job: str | None) -> None:
        keep = self.event_cap.limit - self.event_cap.prune_every
        newest_dropped = self.session.scalar(
            select(EventRow.id)
            .where(_of_job(job))
            .order_by(EventRow.id.desc())
            .offset(keep)
            .limit(1)
        )
        if newest_dropped is not None:
            self.session.execute(
                delete(EventRow).where(_of_job(job), EventRow.id <= newest_dropped)
            )

    def add_utilization(self, at: float, body: dict[str, Any]) -> None:
        self.session.add(UtilizationRow(time=at, body=body))

    def drop_utilization_before(self, at: float) -> None:
        self.session.execute(delete(UtilizationRow).where(UtilizationRow.time < at))

    def utilization_since(self, at: float, points: int) -> list[UtilizationRow]:
        """Samples from ``at`` on, oldest first, thinned evenly to about ``points``
        (every k-th by id: samples are written in time order)."""
        recent = UtilizationRow.time >= at
        count = self.session.scalar(select(func.count()).where(recent)) or 0
        stmt = select(UtilizationRow).where(recent).order_by(UtilizationRow.id)
        step = -(-count // max(points, 1))
        if step > 1:
            stmt = stmt.where(UtilizationRow.id % step == 0)
        return list(self.session.scalars(stmt))

    def events(
        self,
        job: str | None = None,
        since: int = 0,
        limit: int = 1000,
        namespace: str | None = None,
        newest: bool = False,
    ) -> list[EventRow]:
        """Oldest first; ``namespace`` keeps only that namespace's job events; ``newest``:
        the last ``limit`` of them rather than the first (a page opening on a long log)."""
        order = EventRow.id.desc() if newest else EventRow.id
        stmt = select(EventRow).where(EventRow.id > since).order_by(order).limit(limit)
        if job is not None:
            stmt = stmt.where(EventRow.job == job)
        if namespace is not None:
            stmt = stmt.where(EventRow.job.startswith(f"{namespace}/", autoescape=True))
        rows = list(self.session.scalars(stmt))
        return rows[::-1] if newest else rows

    def queues(self) -> list[QueueRow]:
        return list(self.session.scalars(select(QueueRow).order_by(QueueRow.name)))

    def queue(self, name: str) -> QueueRow | None:
        return self.session.get(QueueRow, name)

    def put_queue(self, name: str, spec: dict[str, Any], declared: bool) -> None:
        self.session.merge(QueueRow(name=name, spec=spec, declared=declared))

    def nodes(self) -> list[NodeRow]:
        return list(self.session.scalars(select(NodeRow).order_by(NodeRow.name)))

    def replace_nodes(self, specs: Sequence[dict[str, Any]]) -> None:
        """Make the node table match the cluster file (nodes are declared, not discovered)."""
        self.session.execute(delete(NodeRow))
        for spec in specs:
            self.session.add(NodeRow(name=spec["name"], spec=spec))

    def add_token(self, row: TokenRow) -> TokenRow:
        self.session.add(row)
        self.session.flush()
        return row

    def token(self, name: str) -> TokenRow | None:
        return self.session.scalars(select(TokenRow).where(TokenRow.name == name)).first()

    def token_by_digest(self, digest: str) -> TokenRow | None:
        return self.session.scalars(select(TokenRow).where(TokenRow.digest == digest)).first()

    def tokens(self) -> list[TokenRow]:
        return list(self.session.scalars(select(TokenRow).order_by(TokenRow.id)))

    def delete_undeclared_queues_except(self, keep: set[str]) -> None:
        for row in self.queues():
            if row.declared and row.name not in keep:
                self.session.delete(row)


class Store:
    """Opens the database, creates the schema, hands out transactions."""

    def __init__(self, url: str, events_per_job: int = EVENTS_PER_JOB_MAX) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if url.startswith("sqlite") else None
        self._event_cap = EventCap(events_per_job)
        self._write_problem: str | None = None
        self._probed_at = float("-inf")
        self._probe_lock = threading.Lock()
        with self._unavailable_on_failure():
            Base.metadata.create_all(self.engine)
            for table in Base.metadata.sorted_tables:  # indexes added since a table was made
                for index in table.indexes:
                    index.create(self.engine, checkfirst=True)

    @classmethod
    def in_folder(cls, state_dir: Path) -> Store:
        return cls(sqlite_url(state_dir))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Commit on success, roll back on error. SQLite writers are serialised here.

        Raises StoreUnavailable when the database cannot write (disk full, read-only,
        connection lost); every other error passes through unchanged.
        """
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            with self._writing() as tx:
                yield tx
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only view; never blocks on writers (WAL)."""
        with self._unavailable_on_failure(), self._sessions() as session:
            yield Tx(session, self._event_cap)

    def write_problem(self) -> str | None:
        """None while the store can write, else the database's reason why not.

        A failed write sets it; a probe (a small insert and delete, at most every
        PROBE_INTERVAL_S, skipped while another writer is busy) clears it once space
        returns, or finds the problem before any real write does.
        """
        now = time.monotonic()
        if now - self._probed_at >= PROBE_INTERVAL_S and self._probe_lock.acquire(blocking=False):
            try:
                self._probed_at = now
                if self._probe():
                    self._write_problem = None
            except StoreUnavailable:
                pass  # _unavailable_on_failure recorded the cause
            finally:
                self._probe_lock.release()
        return self._write_problem

    def _probe(self) -> bool:
        """True when a write that needs new pages committed; False when not tried."""
        if self._write_lock is not None and not self._write_lock.acquire(blocking=False):
            return False
        try:
            with self._writing() as tx:
                tx.session.execute(insert(ProbeRow).values(id=1, data=bytes(PROBE_BYTES)))
                tx.session.execute(delete(ProbeRow))
            return True
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    @contextmanager
    def _writing(self) -> Iterator[Tx]:
        with self._unavailable_on_failure(), self._sessions() as session, session.begin():
            yield Tx(session, self._event_cap)

    @contextmanager
    def _unavailable_on_failure(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            cause = cannot_write_cause(exc)
            if cause is None:
                raise
            self._write_problem = cause
            raise StoreUnavailable(f"the store cannot write: {cause}", cause) from exc

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "PRIVATE_FOLDER_MODE",
    "EventRow",
    "JobListing",
    "JobRow",
    "NodeRow",
    "QueueRow",
    "QueuedJob",
    "ReplicaRow",
    "Store",
    "StoreUnavailable",
    "TokenRow",
    "Tx",
    "cannot_write_cause",
    "sqlite_url",
]
