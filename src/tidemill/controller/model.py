"""What the lifecycle step reads: plain, frozen snapshots of a job row and its replicas,
and what the engine saw of them.

Snapshots are taken in a read transaction and outlive it, so the step runs (and is
tested) without a store or an engine. Field names follow the store's columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tidemill.api.status import JobPhase, ReplicaPhase
from tidemill.engines.base import Observation, ReplicaHandle

LIVE = (ReplicaPhase.RUNNING, ReplicaPhase.STOPPING, ReplicaPhase.LAUNCHING)
"""Phases in which a replica may have a process."""


@dataclass(frozen=True)
class ReplicaSnapshot:
    role: str
    index: int
    phase: ReplicaPhase
    node: str
    port: int = 0
    restarts: int = 0
    """restarts charged to the role's maxRestarts"""
    starts: int = 0
    """launches begun, including gang restarts a peer caused"""
    exit_code: int | None = None
    pid: int | None = None
    handle: ReplicaHandle | None = None
    launch_id: str | None = None
    log_path: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    next_start_at: float | None = None
    drain_deadline: float | None = None
    kill_at: float | None = None
    message: str = ""
    gpu_ids: tuple[int, ...] = ()
    gpu_share: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"


@dataclass(frozen=True)
class Outcome:
    """How a job ends, or that it is suspended: decided before its last processes are
    gone, taken once they are."""

    phase: JobPhase
    reason: str
    message: str


@dataclass(frozen=True)
class JobSnapshot:
    id: int
    uid: str
    namespace: str
    name: str
    phase: JobPhase
    created_at: float = 0.0
    started_at: float | None = None
    desired: Mapping[str, int] = field(default_factory=dict)
    gang_restarts: int = 0
    master_port: int | None = None
    job_master_port: int | None = None
    unresponsive: Mapping[str, int] = field(default_factory=dict)
    """replica name -> pid the job master gave up on (no heartbeat)"""
    outcome: Outcome | None = None
    deleted: bool = False
    expires_at: float | None = None
    replicas: tuple[ReplicaSnapshot, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def replica(self, name: str) -> ReplicaSnapshot:
        return next(r for r in self.replicas if r.name == name)


@dataclass(frozen=True)
class Adoption:
    """What ``engine.adopt`` found for a replica recorded as Launching: the replica an
    earlier launch of its ``launch_id`` started, or no handle when none started."""

    handle: ReplicaHandle | None
    pid: int | None = None
    log_path: str | None = None


Seen = Observation | Adoption
"""The engine's word on one replica: an observation (it has a handle) or an adoption
(it was Launching)."""
Observations = Mapping[str, Seen]
"""replica name -> what the engine saw this cycle"""

ACTIVE_PHASES = [JobPhase.SCHEDULED.value, JobPhase.RUNNING.value, JobPhase.RESTARTING.value]
"""Jobs that hold resources and have processes to watch: the lifecycle's jobs."""
