"""Job and replica phases, conditions and the views the REST API returns."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class JobPhase(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    """Stopped on request, holding nothing, out of its queue until resumed; it goes on
    from its newest checkpoint (Kubernetes Job's ``suspend``, Kubeflow's
    ``runPolicy.suspend``)."""
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in (JobPhase.SUCCEEDED, JobPhase.FAILED)

    @property
    def holds_resources(self) -> bool:
        return self in (JobPhase.SCHEDULED, JobPhase.RUNNING, JobPhase.RESTARTING)


class ConditionType(StrEnum):
    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    PREEMPTED = "Preempted"


class ReplicaPhase(StrEnum):
    PENDING = "Pending"
    LAUNCHING = "Launching"
    """The launch is recorded (its ``launch_id``) but its handle not yet: after a crash
    the controller adopts what that launch started, or launches it (never twice)."""
    RUNNING = "Running"
    STOPPING = "Stopping"
    """Asked to stop (SIGTERM); killed if still there at its deadline."""
    BACKOFF = "BackOff"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"

    @property
    def is_terminal(self) -> bool:
        return self in (ReplicaPhase.SUCCEEDED, ReplicaPhase.FAILED, ReplicaPhase.STOPPED)


class Condition(BaseModel):
    type: ConditionType
    status: bool = True
    reason: str
    message: str = ""
    last_transition_time: float = Field(description="unix seconds")


class GpuUsageView(BaseModel):
    index: int = Field(description="the device number, as CUDA_VISIBLE_DEVICES gives it")
    utilization_percent: float | None = None
    memory_bytes: int | None = Field(default=None, description="held by this replica")


class UsageView(BaseModel):
    """What a running replica uses now (absent where the engine cannot tell)."""

    cpu_cores: float | None = Field(
        default=None, description="cores busy since the previous reading"
    )
    memory_bytes: int = Field(description="resident memory of its processes")
    gpus: list[GpuUsageView] = Field(default_factory=list)


class ReplicaView(BaseModel):
    role: str
    index: int
    phase: ReplicaPhase
    node: str | None = None
    gpus: list[str] = Field(default_factory=list, description="device ids, e.g. ['0', '1']")
    pid: int | None = None
    pod: str | None = Field(default=None, description="the replica's pod (Kubernetes engine)")
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    usage: UsageView | None = None


class PendingReason(BaseModel):
    code: str = Field(description="stable code, e.g. GangDoesNotFit, QueueAtMax")
    message: str = Field(description="what blocks the job, with numbers")


class SourceInsightView(BaseModel):
    """How much one source of a stage delivered, how fast, how far behind, and to whom.

    Records and bytes count what readers handed out (a rolled-back step is read again,
    so they can exceed the records trained). Shards are row-group ranges for tables and
    files, partition leases for streams; ``lag_*`` is None for sources without leases.
    """

    name: str
    kind: str = Field(description="parquet, iceberg or kafka")
    priority: int = 0
    weight: float = 1.0
    records: int = 0
    bytes: int = 0
    records_per_s: float = 0.0
    lag_records: int | None = None
    lag_s: float | None = None
    shards_done: int = 0
    shards_in_flight: int = 0
    shards_pending: int = 0
    workers: dict[str, int] = Field(default_factory=dict, description="replica -> records it read")


class StageInsightView(BaseModel):
    """One stage of ``spec.data``: where it stands and its sources."""

    name: str
    index: int
    state: str = Field(description="pending, running or done")
    epochs: int = Field(description="passes over the batch sources")
    pass_index: int = Field(default=0, description="the pass under way (0-based)")
    started_at: float | None = None
    finished_at: float | None = None
    sources: list[SourceInsightView] = Field(default_factory=list)


class DataInsightView(BaseModel):
    """Data insight of a job, kept by its job master and saved with its state."""

    stage: str | None = Field(default=None, description="the stage under way")
    updated_at: float | None = None
    stages: list[StageInsightView] = Field(default_factory=list)


class PSTableInsightView(BaseModel):
    """One embedding table summed over the PS shards that answered the last poll.

    Counters (rows admitted, evicted, pulled and pushed) count from each shard's start
    and are never rolled back; the rates are their deltas between the master's last two
    polls. Staleness is what pulls saw since the shard's last epoch (0 in sync mode).
    """

    name: str
    rows: int = 0
    memory_bytes: int = 0
    admitted: int = 0
    evicted: int = 0
    pulled_rows: int = 0
    pushed_rows: int = 0
    pull_rows_per_s: float = 0.0
    push_rows_per_s: float = 0.0
    staleness_max_steps: int = 0
    staleness_mean_steps: float = 0.0
    applied_step: int | None = Field(
        default=None, description="the step every answering shard has applied through"
    )
    shard_rows: list[int | None] = Field(
        default_factory=list,
        description="rows per shard in replica order (skew); None: the shard did not answer",
    )


class PSShardInsightView(BaseModel):
    """One PS replica as the job master's last poll found it."""

    index: int
    address: str = Field(description="host:port")
    reachable: bool
    error: str = Field(default="", description="why the last poll got no answer")


class PSInsightView(BaseModel):
    """Parameter-server insight of a job, polled by its job master and saved with its state."""

    updated_at: float | None = None
    shards: list[PSShardInsightView] = Field(default_factory=list)
    tables: list[PSTableInsightView] = Field(default_factory=list)

    @property
    def unreachable(self) -> list[PSShardInsightView]:
        return [shard for shard in self.shards if not shard.reachable]


class JobView(BaseModel):
    """What ``GET /api/v1/jobs/{name}`` returns."""

    name: str
    namespace: str
    uid: str
    queue: str
    priority: int
    mode: str
    phase: JobPhase
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    message: str = ""
    desired: dict[str, int] = Field(
        default_factory=dict, description="role -> replicas wanted now (the last scale request)"
    )
    pending_reason: PendingReason | None = None
    conditions: list[Condition] = Field(default_factory=list)
    replicas: list[ReplicaView] = Field(default_factory=list)
    data: DataInsightView | None = Field(
        default=None, description="data insight, for jobs with spec.data"
    )
    ps: PSInsightView | None = Field(
        default=None, description="parameter-server insight, for jobs with ps tables"
    )
    spec: dict[str, Any] = Field(default_factory=dict)


class JobSummary(BaseModel):
    """One row of ``GET /api/v1/jobs``."""

    name: str
    namespace: str
    queue: str
    priority: int
    phase: JobPhase
    replicas: dict[str, str] = Field(description="role -> 'running/desired'")
    created_at: float
    message: str = ""
    pending_reason: PendingReason | None = Field(
        default=None, description="why it waits, while Pending (as in the job view)"
    )


class JobList(BaseModel):
    """``GET /api/v1/jobs``: a page of jobs, and how many there are in each phase."""

    model_config = ConfigDict(populate_by_name=True)

    items: list[JobSummary]
    continue_: str | None = Field(
        default=None,
        alias="continue",
        description="pass as `continue` (with the same filters) for the next page; "
        "null: this page is the last",
    )
    phases: dict[str, int] = Field(
        default_factory=dict,
        description="phase -> jobs in it, of every page (within the namespace asked); "
        "on the first page only (a request without `continue`)",
    )


class EventView(BaseModel):
    id: int
    time: float
    job: str | None = Field(description="namespace/name, or None for cluster events")
    type: str = Field(description="Normal or Warning")
    reason: str
    message: str
    replica: str | None = Field(default=None, description="role-index, when about a replica")


class ResourceView(BaseModel):
    """Amounts in people's units: cores, bytes, GPUs (fractions allowed)."""

    cpu: float = 0.0
    memory: int = 0
    gpu: float = 0.0


class QueueView(BaseModel):
    """One row of ``GET /api/v1/queues``."""

    name: str
    weight: float
    guaranteed: ResourceView
    max: dict[str, float | int | None] = Field(description="None means unlimited")
    allocated: ResourceView
    dominant_share: float = Field(description="DRF share of the cluster, divided by weight")
    pending: int
    running: int
    suspended: int = Field(default=0, description="jobs waiting for a resume, outside the queue")


class QueueUtilization(BaseModel):
    allocated: ResourceView
    dominant_share: float = Field(description="DRF share of the cluster, divided by weight")
    pending: int
    running: int


class UtilizationPoint(BaseModel):
    """The cluster at one moment, as ``GET /api/v1/cluster/utilization`` lists it."""

    time: float
    capacity: ResourceView
    allocated: ResourceView
    queues: dict[str, QueueUtilization] = Field(default_factory=dict)


class NodeView(BaseModel):
    """One row of ``GET /api/v1/nodes``."""

    name: str
    capacity: ResourceView
    allocated: ResourceView
    gpu_model: str | None = None
    gpu_used: list[float] = Field(default_factory=list, description="share used per device")
    labels: dict[str, str] = Field(default_factory=dict)
    schedulable: bool = True


SavedView = TypeVar("SavedView", bound=BaseModel)


def saved_insight(
    master_state: dict[str, Any] | None, key: str, view: type[SavedView]
) -> SavedView | None:
    """What the job master saved under ``key`` of its state, as ``view``; None when
    absent or malformed (a master of another version, a bad write): the rest of the job
    stays visible, and the master's next save replaces it."""
    raw = master_state.get(key) if isinstance(master_state, dict) else None
    if raw is None:
        return None
    try:
        return view.model_validate(raw)
    except ValidationError:
        return None
