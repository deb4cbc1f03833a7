"""Source specs: what a job file may say about where its training data comes from.

A source is a one-key mapping in the job file, optionally named::

    sources:
      - {name: backfill, iceberg: {catalog: {uri: "sqlite:///cat.db", warehouse: "file:///wh"},
                                   table: ads.clicks, filter: "day >= 20261101"}}
      - {kafka: {bootstrap: "broker:9092", topics: [clicks], start: latest}}
      - {parquet: {path: "s3://bucket/clicks/*.parquet", columns: [user, item, label]}}

Field names are camelCase in files (``snapshotId``, ``startTime``) like the rest of the job
file. Every check that can run without touching the data runs here, so ``tidemill
validate`` reports it with the field path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from tidemill.api._model import SpecModel


class SourceKind(StrEnum):
    PARQUET = "parquet"
    ICEBERG = "iceberg"
    KAFKA = "kafka"


class KafkaStart(StrEnum):
    """Where a stream starts. ``committed`` falls back to ``earliest`` without a commit."""

    EARLIEST = "earliest"
    LATEST = "latest"
    COMMITTED = "committed"
    TIMESTAMP = "timestamp"


class KafkaEnd(StrEnum):
    """Where a stream ends: never, at the first record at/after ``endTime``, or at offsets."""

    NEVER = "never"
    TIMESTAMP = "timestamp"
    OFFSETS = "offsets"


class ValueFormat(StrEnum):
    """``json``: each value is one JSON object, decoded into columns. ``raw``: bytes as is."""

    JSON = "json"
    RAW = "raw"


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the epoch; a time without a zone is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class ParquetSource(SpecModel):
    """Parquet files: one file, a directory (searched recursively), a glob, or an fsspec URL."""

    path: str = Field(min_length=1, description="file, directory, glob or fsspec URL")
    columns: list[str] | None = Field(default=None, description="all columns when unset")


class IcebergSource(SpecModel):
    """An Iceberg table read through a pyiceberg catalog, pinned to one snapshot."""

    catalog: str | dict[str, str] = Field(
        default="default",
        description=(
            "catalog name from ~/.pyiceberg.yaml, or its properties (uri, warehouse, ...; "
            "'name' defaults to 'default' and selects the tables of a SQL catalog)"
        ),
    )
    table: str = Field(description="namespace.table, e.g. 'ads.clicks'")
    columns: list[str] | None = Field(default=None, description="all columns when unset")
    filter: str | None = Field(default=None, description='row filter, e.g. "day >= 20261101"')
    snapshot_id: int | None = Field(default=None, description="read this snapshot")
    as_of: datetime | None = Field(default=None, description="read the snapshot current then")
    timeout_s: float = Field(default=30.0, gt=0, description="limit for each catalog call")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if "." not in value.strip(".") or not all(value.split(".")):
            raise ValueError(f"{value!r} is not namespace.table; write e.g. 'ads.clicks'")
        return value

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from pyiceberg.expressions.parser import parse

        try:
            parse(value)
        except Exception as exc:  # pyparsing raises several types; all mean "cannot parse"
            column = getattr(exc, "col", None)  # pyparsing's own text lists its whole grammar
            where = f" at character {column}" if isinstance(column, int) else ""
            raise ValueError(
                f"cannot parse row filter {value!r}{where}; write comparisons joined by and/or, "
                "e.g. \"day >= 20261101 and country = 'NL'\""
            ) from None
        return value

    @model_validator(mode="after")
    def _one_snapshot(self) -> IcebergSource:
        if self.snapshot_id is not None and self.as_of is not None:
            raise ValueError("set snapshotId or asOf, not both")
        return self


class KafkaSource(SpecModel):
    """One or more Kafka topics, each partition becoming one lease."""

    bootstrap: str = Field(min_length=1, description="host:port[,host:port...]")
    topics: list[str] = Field(min_length=1)
    start: KafkaStart = KafkaStart.LATEST
    start_time: datetime | None = Field(default=None, description="with start: timestamp")
    end: KafkaEnd = KafkaEnd.NEVER
    end_time: datetime | None = Field(default=None, description="with end: timestamp")
    end_offsets: dict[str, dict[int, int]] | None = Field(
        default=None, description="with end: offsets; {topic: {partition: offset}}, exclusive"
    )
    group_id: str | None = Field(default=None, description="consumer group for committed offsets")
    value_format: ValueFormat = ValueFormat.JSON
    timeout_s: float = Field(default=10.0, gt=0, description="limit for each broker call")

    @model_validator(mode="before")
    @classmethod
    def _single_topic(cls, data: Any) -> Any:
        # The job-file sketch writes `topic: clicks`; accept it as a one-item `topics`.
        if isinstance(data, dict) and "topic" in data:
            data = dict(data)
            if "topics" in data:
                raise ValueError("set topic or topics, not both")
            data["topics"] = [data.pop("topic")]
        return data

    @model_validator(mode="after")
    def _bounds(self) -> KafkaSource:
        if self.start is KafkaStart.TIMESTAMP and self.start_time is None:
            raise ValueError("start: timestamp needs startTime (e.g. 2026-11-01T00:00:00Z)")
        if self.start is not KafkaStart.TIMESTAMP and self.start_time is not None:
            raise ValueError(
                f"startTime is only read with start: timestamp (start is {self.start})"
            )
        if self.start is KafkaStart.COMMITTED and not self.group_id:
            raise ValueError("start: committed needs groupId, the group whose offsets to use")
        if self.end is KafkaEnd.TIMESTAMP and self.end_time is None:
            raise ValueError("end: timestamp needs endTime (e.g. 2026-11-02T00:00:00Z)")
        if self.end is not KafkaEnd.TIMESTAMP and self.end_time is not None:
            raise ValueError(f"endTime is only read with end: timestamp (end is {self.end})")
        if self.end is KafkaEnd.OFFSETS and not self.end_offsets:
            raise ValueError("end: offsets needs endOffsets, e.g. {clicks: {0: 1000, 1: 1000}}")
        if self.end is not KafkaEnd.OFFSETS and self.end_offsets is not None:
            raise ValueError(f"endOffsets is only read with end: offsets (end is {self.end})")
        unknown = sorted(set(self.end_offsets or {}) - set(self.topics))
        if unknown:
            raise ValueError(f"endOffsets names topics {unknown} that are not in topics")
        return self


class SourceSpec(SpecModel):
    """One entry of a stage's ``sources``: exactly one of parquet, iceberg or kafka."""

    name: str | None = Field(default=None, description="shown in events and metrics")
    parquet: ParquetSource | None = None
    iceberg: IcebergSource | None = None
    kafka: KafkaSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [kind for kind in SourceKind if getattr(self, kind.value) is not None]
        if len(given) != 1:
            seen = ", ".join(given) if given else "none"
            raise ValueError(f"a source needs exactly one of parquet, iceberg, kafka (got {seen})")
        return self

    @property
    def kind(self) -> SourceKind:
        return SourceKind(type(self.spec).__name__.removesuffix("Source").lower())

    @property
    def spec(self) -> ParquetSource | IcebergSource | KafkaSource:
        """The one source this entry holds."""
        return next(s for s in (self.parquet, self.iceberg, self.kafka) if s is not None)

    @property
    def display_name(self) -> str:
        """``name`` if set, else the table, topics or path: what people recognise."""
        if self.name:
            return self.name
        spec = self.spec
        if isinstance(spec, ParquetSource):
            return spec.path
        if isinstance(spec, IcebergSource):
            return spec.table
        return ",".join(spec.topics)
