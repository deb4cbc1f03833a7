"""The cluster file's ``scheduler`` section: the policy a control plane schedules with.

Every field has the scheduler's own default, so a cluster file without the section (or
with only some fields) schedules as ``SchedulerConfig()`` does::

    scheduler:
      scoring: fragmentation        # or best-fit
      scoreNodes: 128
      reserveAfterSeconds: 3600
      recentUseHalfLifeSeconds: 3600
      workload:                     # the pod mix fragmentation scoring keeps room for
        - {cpu: 8, memory: 64Gi, gpu: 1, weight: 60}
        - {cpu: 4, memory: 16Gi, gpu: 0.5, weight: 30}

Without ``workload`` the mix is what is pending and running at each pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tidemill.api._model import SpecModel, validate_line
from tidemill.api.limits import INT64_MAX, MAX_CLUSTER_NODES, MAX_GPUS
from tidemill.api.quantity import CpuCores, MemoryBytes

MAX_WORKLOAD_TYPES = 4_096
"""Pod types a workload lists (the scorer keeps the most common 256)."""
MAX_RESERVATIONS = 1_000
"""Jobs holding reservations at once: each holds a gang's worth of nodes."""
MAX_HALF_LIFE_SECONDS = 10 * 365 * 86_400
"""Ten years: a longer half-life remembers use forever anyway."""


class ExpectedPod(SpecModel):
    """One kind of pod the cluster expects, and how common it is."""

    cpu: CpuCores = Field(ge=0, description="cores per pod, e.g. 8 or 500m")
    memory: MemoryBytes = Field(ge=0, description="per pod, e.g. 64Gi")
    gpu: float = Field(
        default=0.0,
        ge=0,
        le=MAX_GPUS,
        description="whole GPUs (1, 2, 8) or a share of one below 1 (0.5)",
    )
    weight: float = Field(default=1.0, gt=0, le=1e12, description="how common: a count or a share")
    gpu_model: str | None = None

    @field_validator("gpu")
    @classmethod
    def _whole_or_share(cls, value: float) -> float:
        if value > 1 and not value.is_integer():
            raise ValueError(
                f"{value} GPUs: above 1 a pod asks whole GPUs (2, 4, 8); a share is below 1"
            )
        return value

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "gpu model", 253)


class SchedulerSettings(SpecModel):
    """Policy switches of ``tidemill.scheduler.SchedulerConfig``, as a file says them."""

    scoring: Literal["fragmentation", "best-fit"] = Field(
        default="fragmentation",
        description="fragmentation: where the expected pod mix loses least GPU (FGD); "
        "best-fit: fewest whole GPUs, then least cpu and memory left (faster)",
    )
    score_nodes: int | None = Field(
        default=128,
        ge=1,
        le=MAX_CLUSTER_NODES,
        description="fragmentation scoring looks at this many of the nodes a pod fits, "
        "best fit's first; null: every node",
    )
    preemption: bool = True
    reclaim: bool = Field(
        default=True,
        description="a queue below its guarantee may stop or shrink jobs of queues over theirs",
    )
    strict_fifo: bool = Field(
        default=False, description="a queue's head that does not fit blocks the jobs behind it"
    )
    reserve_after_seconds: int | None = Field(
        default=3600,
        gt=0,
        le=INT64_MAX,
        description="a job waiting longer gets a reservation, unless its queue sets its "
        "own bound; null: only queues that set one reserve",
    )
    max_reservations: int = Field(default=4, ge=0, le=MAX_RESERVATIONS)
    recent_use_half_life_seconds: int = Field(
        default=3600,
        gt=0,
        le=MAX_HALF_LIFE_SECONDS,
        description="a queue's recent use, which decides between queues holding equal "
        "shares (the one that used less goes first), halves over this long",
    )
    workload: list[ExpectedPod] = Field(
        default_factory=list,
        max_length=MAX_WORKLOAD_TYPES,
        description="the pod mix fragmentation scoring keeps room for; empty: what is "
        "pending and running at each pass",
    )
