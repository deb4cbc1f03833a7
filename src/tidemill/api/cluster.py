"""Nodes, queues and priority classes: what ``--cluster cluster.yaml`` declares.

Without a cluster file the local cluster is this machine (one node) and every tenant
(namespace) gets its own queue on first use.
"""

from __future__ import annotations

import os
from collections import Counter

import psutil
from pydantic import Field, ValidationInfo, field_validator, model_validator

from tidemill.api._model import (
    Int64,
    SpecModel,
    validate_dns_label,
    validate_dns_subdomain,
    validate_labels,
    validate_line,
)
from tidemill.api.extended import ExtendedAmounts
from tidemill.api.limits import (
    INT64_MAX,
    MAX_CLUSTER_NODES,
    MAX_GPUS,
    MAX_NUMA_NODES,
    MAX_QUEUE_GPUS,
    MAX_QUEUE_WEIGHT,
    MIN_QUEUE_WEIGHT,
)
from tidemill.api.quantity import CpuCores, MemoryBytes
from tidemill.api.scheduler_settings import SchedulerSettings
from tidemill.api.topology import ClusterTopology, NumaNodeSpec, missing_levels, numa_problems


class ResourceAmounts(SpecModel):
    """A quota: any resource left out is unlimited (for ``max``) or zero (``guaranteed``)."""

    cpu: CpuCores | None = None
    memory: MemoryBytes | None = None
    gpu: float | None = Field(default=None, ge=0, le=MAX_QUEUE_GPUS)


class QueueSpec(SpecModel):
    """A tenant queue. DRF weighs queues by ``weight``; ``max`` caps what it may hold.

    Below its ``guaranteed`` amount a queue may stop or shrink jobs of queues over
    theirs, whatever their priority, to get it back."""

    name: str
    weight: float = Field(default=1.0, ge=MIN_QUEUE_WEIGHT, le=MAX_QUEUE_WEIGHT)
    guaranteed: ResourceAmounts = Field(default_factory=ResourceAmounts)
    max: ResourceAmounts = Field(default_factory=ResourceAmounts)
    reserve_after_seconds: int | None = Field(
        default=None,
        gt=0,
        le=INT64_MAX,
        description="a job waiting longer gets capacity reserved for it as it frees "
        "(default: the scheduler's, one hour)",
    )
    runtime_estimate_seconds: int | None = Field(
        default=None,
        gt=0,
        le=INT64_MAX,
        description="how long this queue's jobs run when they set no activeDeadlineSeconds: "
        "lets them use reserved capacity they would leave in time",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_label(value, "queue name")


class NodeSpec(SpecModel):
    """A machine (real or virtual). ``count`` > 1 expands to name-0, name-1, ..."""

    name: str
    cpu: CpuCores
    memory: MemoryBytes
    gpus: int = Field(default=0, ge=0, le=MAX_GPUS)
    gpu_model: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. {rack: r1}")
    extended: ExtendedAmounts = Field(
        default_factory=dict, description="extended resources offered, e.g. {rdma/hca: 4}"
    )
    numa: list[NumaNodeSpec] = Field(
        default_factory=list,
        max_length=MAX_NUMA_NODES,
        description="NUMA layout: per NUMA node its CPUs and GPUs, e.g. "
        "[{cpus: '0-31', gpus: [0, 1, 2, 3]}, {cpus: '32-63', gpus: [4, 5, 6, 7]}]",
    )
    count: int = Field(default=1, ge=1, le=MAX_CLUSTER_NODES)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_subdomain(value, "node name")

    @field_validator("numa")
    @classmethod
    def _numa(cls, value: list[NumaNodeSpec], info: ValidationInfo) -> list[NumaNodeSpec]:
        if "gpus" not in info.data or "cpu" not in info.data:
            return value  # already refused for its own field
        problems = numa_problems(value, info.data["gpus"], info.data["cpu"])
        if problems:
            raise ValueError("; ".join(problems[:5]))
        return value

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "gpu model", 253)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)

    def expand(self) -> list[NodeSpec]:
        if self.count == 1:
            return [self]
        return [
            self.model_copy(update={"name": f"{self.name}-{i}", "count": 1})
            for i in range(self.count)
        ]


class ClusterSpec(SpecModel):
    nodes: list[NodeSpec] = Field(default_factory=list)
    queues: list[QueueSpec] = Field(default_factory=list)
    priority_classes: dict[str, Int64] = Field(
        default_factory=dict, description="name -> priority, e.g. {high: 1000}"
    )
    topology: ClusterTopology = Field(
        default_factory=ClusterTopology,
        description="levels (node label keys), smallest first, e.g. "
        "{levels: [nvlink-domain, rack, zone]}",
    )
    scheduler: SchedulerSettings = Field(
        default_factory=SchedulerSettings,
        description="the scheduling policy: scoring, reservations, preemption, the "
        "expected pod mix",
    )

    @field_validator("topology")
    @classmethod
    def _levels_carried(cls, value: ClusterTopology, info: ValidationInfo) -> ClusterTopology:
        """A declared level no declared node carries is a typo; discovered nodes
        (Kubernetes) are checked per job instead."""
        nodes: list[NodeSpec] = info.data.get("nodes") or []
        if not nodes:
            return value
        keys = {key for node in nodes for key in node.labels}
        missing = missing_levels(value.levels, keys)
        if missing:
            carried = ", ".join(sorted(keys)) or "none"
            raise ValueError(
                f"levels: no node carries the label {', '.join(missing)} (node labels here: "
                f"{carried}); label the nodes or drop the level"
            )
        return value

    @field_validator("priority_classes")
    @classmethod
    def _priority_class_names(cls, value: dict[str, int]) -> dict[str, int]:
        for name in value:
            validate_line(name, "priority class name", 253)
        return value

    @model_validator(mode="after")
    def _unique(self) -> ClusterSpec:
        total = sum(node.count for node in self.nodes)
        if total > MAX_CLUSTER_NODES:
            raise ValueError(
                f"the cluster declares {total:,} nodes; at most {MAX_CLUSTER_NODES:,} are accepted"
            )
        for what, names in (
            ("node", [n.name for node in self.nodes for n in node.expand()]),
            ("queue", [q.name for q in self.queues]),
        ):
            duplicated = sorted(name for name, times in Counter(names).items() if times > 1)
            if duplicated:
                raise ValueError(f"{what} names must be unique; repeated: {duplicated[:10]}")
        return self

    def all_nodes(self) -> list[NodeSpec]:
        return [n for node in self.nodes for n in node.expand()]


def this_machine() -> NodeSpec:
    """The default local cluster: one node with this machine's cores and memory."""
    return NodeSpec(
        name="local",
        cpu=float(os.cpu_count() or 1),
        memory=psutil.virtual_memory().total,
        gpus=_visible_gpu_count(),
    )


def _visible_gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    return len([d for d in _nvidia_devices()])


def _nvidia_devices() -> list[str]:
    try:
        return sorted(d for d in os.listdir("/dev") if d.removeprefix("nvidia").isdigit())
    except OSError:
        return []
