"""The durable schema: jobs, replicas, events, training metrics, queues, nodes, API tokens.

A row holds what a restarted server needs to carry on: a job's validated spec and
phase, each replica's placement and engine handle, and the event history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

EVENT_REASON_MAX_CHARS = 64
EVENT_MESSAGE_MAX_CHARS = 4096
"""Longer messages are refused at the API and cut (with a note) when written inside."""
EVENT_REPLICA_MAX_CHARS = 64
EVENTS_PER_JOB_MAX = 10_000
"""Stored events per job (and for the cluster); the oldest are dropped beyond it."""


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("namespace", "name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    """Also the FIFO sequence: ids only grow (SQLite too: AUTOINCREMENT never reuses the
    id of a deleted last row)."""
    uid: Mapped[str] = mapped_column(String(36), unique=True)
    namespace: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(63), index=True)
    priority: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    pending_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pending_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float)
    scheduled_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    """finished_at + ttlSecondsAfterFinished, when the job is to be removed."""
    desired: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    """role -> replicas wanted now (the spec's, or the last scale request)."""
    master_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    restart_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When a whole-gang restart is due (AllReduce jobs restart as one group)."""
    gang_restarts: Mapped[int] = mapped_column(Integer, default=0)
    job_master_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Port of tidemill's per-job master (elastic jobs); kept across its restarts."""
    master_state: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What the elastic job master persists: epoch, committed step, data positions."""
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """How the job ends ({phase, reason, message}), once decided: it takes that phase
    when its last process is gone."""
    deleted_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    """Set by delete: its processes are killed, then the row is removed."""

    replicas: Mapped[list[ReplicaRow]] = relationship(
        back_populates="job",
        cascade="all, delete-orphan",
        order_by="(ReplicaRow.role, ReplicaRow.index)",
    )

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class ReplicaRow(Base):
    __tablename__ = "replicas"
    __table_args__ = (UniqueConstraint("job_id", "role", "index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    index: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(String(63))
    cpu_millis: Mapped[int] = mapped_column(Integer)
    memory_bytes: Mapped[int] = mapped_column(Integer)
    gpu_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    gpu_share: Mapped[float] = mapped_column(Float, default=0.0)
    port: Mapped[int] = mapped_column(Integer, default=0)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    """Restarts charged to this replica's maxRestarts."""
    starts: Mapped[int] = mapped_column(Integer, default=0)
    """Every launch, including gang restarts caused by a peer (``TIDEMILL_ATTEMPT``)."""
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    log_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    next_start_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    drain_deadline: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Set when the replica was asked to leave (scale-in); killed if still there then."""
    launch_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """The launch intent: recorded before the engine is asked to launch, so a restarted
    control plane adopts that launch instead of starting a second copy."""
    kill_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    """When to SIGKILL the replica if it is still there (a stop's grace, or a kill's retry)."""
    message: Mapped[str] = mapped_column(Text, default="")

    job: Mapped[JobRow] = relationship(back_populates="replicas")

    @property
    def replica_name(self) -> str:
        return f"{self.role}-{self.index}"


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id", "job", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float)
    job: Mapped[str | None] = mapped_column(String(127), nullable=True)
    type: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(EVENT_REASON_MAX_CHARS))
    message: Mapped[str] = mapped_column(Text)
    replica: Mapped[str | None] = mapped_column(String(EVENT_REPLICA_MAX_CHARS), nullable=True)


class MetricRow(Base):
    """One ``report()`` of one replica; a job keeps its newest ``Limits.metric_reports_per_job``."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_id", "job", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job: Mapped[str] = mapped_column(String(127))
    replica: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[float] = mapped_column(Float)
    values: Mapped[dict[str, float]] = mapped_column(JSON)


class LatestMetricRow(Base):
    """The newest value of each (job, replica, name): what ``/metrics`` shows."""

    __tablename__ = "metrics_latest"

    job: Mapped[str] = mapped_column(String(127), primary_key=True)
    replica: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class QueueRow(Base):
    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    declared: Mapped[bool] = mapped_column(default=False)
    """True when it comes from the cluster file; False when made for a tenant on first use."""


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    schedulable: Mapped[bool] = mapped_column(default=True)


class UtilizationRow(Base):
    """The cluster at one moment: capacity, allocation and each queue's share (the
    dashboard's utilisation charts), as ``tidemill.server.utilization`` samples it."""

    __tablename__ = "utilization"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)


class TokenRow(Base):
    """An API token: only the SHA-256 of its secret is kept, so a copy of the
    database does not let anyone in."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    """Unique for good, revoked tokens included, so events naming it stay unambiguous."""
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    namespace: Mapped[str] = mapped_column(String(63))
    """The namespace it covers, or ``*`` for all."""
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(default=False)


class ProbeRow(Base):
    """Written and removed by the store's health probe: can the database still grow?"""

    __tablename__ = "store_probe"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
