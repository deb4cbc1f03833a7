"""A stage's plan: every source of the stage split into shards, fixed once made.

The job master plans a stage when the first worker reaches it and keeps the plan for
the rest of the job, so a rollback into a stage, or a restarted master, reads exactly
the same shards (a stream's ``start: latest`` is resolved once, not again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tidemill.api.data import DataSpec, StageSource
from tidemill.api.sources import SourceKind
from tidemill.data._planning import partition_leases, plan_shards
from tidemill.data._shards import Shard


@dataclass(frozen=True)
class SourcePlan:
    name: str
    kind: SourceKind
    weight: float
    priority: int
    shards: tuple[Shard, ...]

    @property
    def is_stream(self) -> bool:
        return self.kind is SourceKind.KAFKA

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "weight": self.weight,
            "priority": self.priority,
            "shards": [shard.to_dict() for shard in self.shards],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourcePlan:
        return cls(
            name=data["name"],
            kind=SourceKind(data["kind"]),
            weight=float(data["weight"]),
            priority=int(data["priority"]),
            shards=tuple(Shard.from_dict(shard) for shard in data["shards"]),
        )


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str
    epochs: int
    sources: tuple[SourcePlan, ...]
    planned_at: float

    def source(self, name: str) -> SourcePlan:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(f"stage {self.name!r} has no source {name!r}")

    @property
    def batch_sources(self) -> list[str]:
        return [source.name for source in self.sources if not source.is_stream]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "epochs": self.epochs,
            "sources": [source.to_json() for source in self.sources],
            "planned_at": self.planned_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StagePlan:
        return cls(
            index=int(data["index"]),
            name=data["name"],
            epochs=int(data["epochs"]),
            sources=tuple(SourcePlan.from_json(source) for source in data["sources"]),
            planned_at=float(data["planned_at"]),
        )


def plan_stage(spec: DataSpec, index: int) -> StagePlan:
    """Split every source of stage ``index`` (talks to the catalog, files and broker).

    Raises :class:`~tidemill.data.DataError` naming the source that cannot be planned.
    """
    stage = spec.stages[index]
    return StagePlan(
        index=index,
        name=stage.name,
        epochs=stage.epochs,
        sources=tuple(_plan_source(spec, source) for source in stage.sources),
        planned_at=time.time(),
    )


def _plan_source(spec: DataSpec, source: StageSource) -> SourcePlan:
    if source.kind is SourceKind.KAFKA:
        shards = partition_leases(source)
    else:
        shards = plan_shards(source, rows_per_shard=spec.rows_per_shard)
    return SourcePlan(
        name=source.display_name,
        kind=source.kind,
        weight=source.weight,
        priority=source.priority,
        shards=tuple(shards),
    )
