"""``spec.data``: the job's training data as an ordered plan of stages.

A stage reads its sources until each has ended: batch sources (parquet, iceberg) after
``epochs`` passes, streams (kafka) at their ``end``. Then the next stage starts, so a
backfill followed by the live stream is two stages::

    data:
      shuffle: {seed: 7, bufferRows: 4096}
      stages:
        - {name: backfill, epochs: 1, sources: [{iceberg: {table: ads.clicks}}]}
        - name: online
          sources:
            - {kafka: {bootstrap: "broker:9092", topic: clicks}, priority: 1}
            - {parquet: {path: "replay/"}, weight: 0.2}

Within a stage, sources of higher ``priority`` fill each batch first; what they cannot
fill goes to the next priority, and sources of equal priority share by ``weight``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from tidemill.api._model import SpecModel, validate_dns_label
from tidemill.api.sources import KafkaEnd, SourceSpec

DEFAULT_ROWS_PER_SHARD = 100_000
"""Small enough that a lost worker re-reads little, large enough that leases stay few."""


class StageSource(SourceSpec):
    """A source of a stage, with its share of each batch."""

    weight: float = Field(default=1.0, gt=0, description="share among equal priorities")
    priority: int = Field(default=0, description="higher fills each batch first")


class StageSpec(SpecModel):
    """One stage of the plan: its sources, and how many passes over the batch ones."""

    name: str
    sources: list[StageSource] = Field(min_length=1)
    epochs: int = Field(default=1, ge=1, description="passes over the batch sources")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_label(value, "stage name")

    @model_validator(mode="after")
    def _unique_sources(self) -> StageSpec:
        names = [source.display_name for source in self.sources]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(
                f"sources {twice} appear twice in stage {self.name!r}; give each a distinct 'name'"
            )
        return self

    @property
    def endless_source(self) -> str | None:
        """The first stream that never ends (so neither does the stage), if any."""
        for source in self.sources:
            if source.kafka is not None and source.kafka.end is KafkaEnd.NEVER:
                return source.display_name
        return None


class ShuffleSpec(SpecModel):
    """Seeded, so a re-run and a resumed run see records in the same order."""

    seed: int = 0
    shards: bool = Field(default=True, description="shuffle shard order on every pass")
    buffer_rows: int = Field(
        default=0, ge=0, description="shuffle records within windows of this many rows"
    )
    exchange: bool = Field(
        default=False,
        description="swap records between workers every step (for streams where one "
        "partition feeds one worker)",
    )


class DataSpec(SpecModel):
    stages: list[StageSpec] = Field(min_length=1)
    shuffle: ShuffleSpec = Field(default_factory=ShuffleSpec)
    rows_per_shard: int = Field(
        default=DEFAULT_ROWS_PER_SHARD, ge=1, description="rows per batch shard (whole row groups)"
    )

    @model_validator(mode="after")
    def _stages(self) -> DataSpec:
        names = [stage.name for stage in self.stages]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"stage names must be unique; {twice} appear twice")
        for stage in self.stages[:-1]:
            endless = stage.endless_source
            if endless is not None:
                raise ValueError(
                    f"stage {stage.name!r} never ends (its kafka source {endless!r} has end: "
                    "never), so the stages after it would never run; give that source end: "
                    "timestamp or end: offsets, or make it the last stage"
                )
        return self
