"""Nodes, queues and priority classes: what ``--cluster cluster.yaml`` declares.

Without a cluster file the local cluster is this machine (one node) and every tenant
(namespace) gets its own queue on first use.
"""

from __future__ import annotations

import os

import psutil
from pydantic import Field, field_validator, model_validator

from tidemill.api._model import SpecModel, validate_dns_label
from tidemill.api.quantity import CpuCores, MemoryBytes


class ResourceAmounts(SpecModel):
    """A quota: any resource left out is unlimited (for ``max``) or zero (``guaranteed``)."""

    cpu: CpuCores | None = None
    memory: MemoryBytes | None = None
    gpu: float | None = None


class QueueSpec(SpecModel):
    """A tenant queue. DRF weighs queues by ``weight``; ``max`` caps what it may hold."""

    name: str
    weight: float = Field(default=1.0, gt=0)
    guaranteed: ResourceAmounts = Field(default_factory=ResourceAmounts)
    max: ResourceAmounts = Field(default_factory=ResourceAmounts)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_label(value, "queue name")


class NodeSpec(SpecModel):
    """A machine (real or virtual). ``count`` > 1 expands to name-0, name-1, ..."""

    name: str
    cpu: CpuCores
    memory: MemoryBytes
    gpus: int = Field(default=0, ge=0)
    gpu_model: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. {rack: r1}")
    count: int = Field(default=1, ge=1)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_label(value, "node name")

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
    priority_classes: dict[str, int] = Field(
        default_factory=dict, description="name -> priority, e.g. {high: 1000}"
    )

    @model_validator(mode="after")
    def _unique(self) -> ClusterSpec:
        names = [n.name for node in self.nodes for n in node.expand()]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"node names must be unique; repeated: {duplicated}")
        queues = [q.name for q in self.queues]
        duplicated = sorted({q for q in queues if queues.count(q) > 1})
        if duplicated:
            raise ValueError(f"queue names must be unique; repeated: {duplicated}")
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
