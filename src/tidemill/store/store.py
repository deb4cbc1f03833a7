"""The repository: every state change is one transaction.

SQLite in WAL mode under the state folder by default; any SQLAlchemy URL (Postgres:
``postgresql+psycopg://...``) works the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, select
from sqlalchemy.orm import Session, defer, load_only, selectinload, sessionmaker

from tidemill.store.tables import (
    Base,
    EventRow,
    JobRow,
    NodeRow,
    QueueRow,
    ReplicaRow,
    TokenRow,
)


class StoreUnavailable(Exception):
    """The store cannot write (disk full, database gone); the message says why.

    Raised by :meth:`Store.transaction`; the API answers 503 with it, the controller
    skips the cycle (no job is failed for it) and retries.
    """


def sqlite_url(state_dir: Path) -> str:
    state_dir.mkdir(parents=True, exist_ok=True)
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


class Tx:
    """One transaction's view of the store. Rows are valid until the block ends."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def job(self, namespace: str, name: str) -> JobRow | None:
        stmt = (
            select(JobRow)
            .where(JobRow.namespace == namespace, JobRow.name == name)
            .options(selectinload(JobRow.replicas))
        )
        return self.session.scalars(stmt).first()

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

    def queued_jobs(self) -> list[JobRow]:
        """Pending jobs for the scheduler: specs and conditions are loaded only if read
        (the controller caches parsed specs), so a long backlog stays cheap to scan."""
        stmt = (
            select(JobRow)
            .where(JobRow.phase == "Pending")
            .order_by(JobRow.id)
            .options(defer(JobRow.spec), defer(JobRow.conditions), defer(JobRow.master_state))
        )
        return list(self.session.scalars(stmt))

    def jobs_by_id(self, ids: Sequence[int]) -> list[JobRow]:
        if not ids:
            return []
        stmt = select(JobRow).where(JobRow.id.in_(list(ids))).options(selectinload(JobRow.replicas))
        return list(self.session.scalars(stmt))

    def expired_jobs(self, now: float) -> list[JobRow]:
        """Finished jobs whose ttlSecondsAfterFinished has run out."""
        stmt = select(JobRow).where(JobRow.expires_at.is_not(None), JobRow.expires_at <= now)
        return list(self.session.scalars(stmt))

    def job_summaries(
        self, phase: str | None = None, namespace: str | None = None
    ) -> list[tuple[JobRow, dict[str, int]]]:
        """Jobs for listing, with running replicas per role counted in SQL (no replica rows)."""
        stmt = (
            select(JobRow)
            .order_by(JobRow.id)
            .options(
                load_only(
                    JobRow.id,
                    JobRow.namespace,
                    JobRow.name,
                    JobRow.queue,
                    JobRow.priority,
                    JobRow.phase,
                    JobRow.created_at,
                    JobRow.message,
                    JobRow.desired,
                )
            )
        )
        if phase is not None:
            stmt = stmt.where(JobRow.phase == phase)
        if namespace is not None:
            stmt = stmt.where(JobRow.namespace == namespace)
        rows = list(self.session.scalars(stmt))
        counts = (
            select(ReplicaRow.job_id, ReplicaRow.role, func.count())
            .where(ReplicaRow.phase == "Running")
            .group_by(ReplicaRow.job_id, ReplicaRow.role)
        )
        running: dict[int, dict[str, int]] = {}
        for job_id, role, count in self.session.execute(counts):
            running.setdefault(job_id, {})[role] = count
        return [(row, running.get(row.id, {})) for row in rows]

    def add_job(self, row: JobRow) -> JobRow:
        self.session.add(row)
        self.session.flush()
        return row

    def delete_job(self, row: JobRow) -> None:
        self.session.delete(row)

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
        self.session.add(
            EventRow(
                time=time.time() if at is None else at,
                job=job,
                type="Warning" if warning else "Normal",
                reason=reason,
                message=message,
                replica=replica,
            )
        )

    def events(
        self,
        job: str | None = None,
        since: int = 0,
        limit: int = 1000,
        namespace: str | None = None,
    ) -> list[EventRow]:
        """Oldest first; ``namespace`` keeps only that namespace's job events."""
        stmt = select(EventRow).where(EventRow.id > since).order_by(EventRow.id).limit(limit)
        if job is not None:
            stmt = stmt.where(EventRow.job == job)
        if namespace is not None:
            stmt = stmt.where(EventRow.job.startswith(f"{namespace}/", autoescape=True))
        return list(self.session.scalars(stmt))

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

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        Base.metadata.create_all(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if url.startswith("sqlite") else None

    @classmethod
    def in_folder(cls, state_dir: Path) -> Store:
        return cls(sqlite_url(state_dir))

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """Commit on success, roll back on error. SQLite writers are serialised here."""
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            with self._sessions() as session, session.begin():
                yield Tx(session)
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """A read-only view; never blocks on writers (WAL)."""
        with self._sessions() as session:
            yield Tx(session)

    def close(self) -> None:
        self.engine.dispose()


__all__ = [
    "EventRow",
    "JobRow",
    "NodeRow",
    "QueueRow",
    "ReplicaRow",
    "Store",
    "StoreUnavailable",
    "TokenRow",
    "Tx",
]
