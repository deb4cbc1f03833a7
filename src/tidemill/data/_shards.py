"""Shards: the unit of work the job master hands to a worker, and what the worker reports.

A shard is self-contained: it carries everything a worker needs to read it (file URL and
row groups, or broker, topic, partition and offsets), so a worker needs no catalog call
and no copy of the job file to start reading. It is immutable, hashable, and travels as
JSON between the master and workers; its ``id`` is stable across re-planning of the same
data, so progress recorded against an id survives a master restart.

Positions inside a shard (``start_at`` of the readers, the positions workers commit) are
record counts from the shard's first record for files, and Kafka offsets for leases.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from tidemill.api.sources import SourceKind, ValueFormat


@dataclass(frozen=True)
class FileRange:
    """Row groups ``[row_group_start, row_group_stop)`` of one Parquet file."""

    path: str
    row_group_start: int
    row_group_stop: int
    num_rows: int


@dataclass(frozen=True)
class IcebergFile:
    """How to read an Iceberg data file of a pinned snapshot without asking the catalog."""

    table: str
    metadata_location: str
    snapshot_id: int
    schema_id: int
    io_properties: tuple[tuple[str, str], ...]
    filter: str | None


@dataclass(frozen=True)
class PartitionLease:
    """One Kafka partition from ``start_offset``; ``end_offset`` is exclusive.

    With neither ``end_offset`` nor ``end_time_ms`` the lease is open-ended: it is read
    until the job moves on. ``end_time_ms`` ends it at the first record stamped at or after
    that time (or, once that time has passed, when the reader catches up with the head).
    """

    bootstrap: str
    topic: str
    partition: int
    start_offset: int
    end_offset: int | None
    end_time_ms: int | None
    value_format: ValueFormat
    group_id: str | None
    timeout_s: float

    @property
    def open_ended(self) -> bool:
        return self.end_offset is None and self.end_time_ms is None


@dataclass(frozen=True)
class Shard:
    """A piece of one source; exactly one of ``file`` or ``lease`` is set.

    Example::

        >>> shard = Shard("c:a.parquet#rg0-1", "c", SourceKind.PARQUET,
        ...               file=FileRange("a.parquet", 0, 1, 100))
        >>> Shard.from_json(shard.to_json()) == shard   # what the master sends a worker
        True
    """

    id: str
    source: str
    kind: SourceKind
    columns: tuple[str, ...] | None = None
    file: FileRange | None = None
    iceberg: IcebergFile | None = None
    lease: PartitionLease | None = None

    @property
    def num_rows(self) -> int | None:
        """Records in the shard, when known before reading (files and bounded leases)."""
        if self.file is not None:
            return self.file.num_rows
        if self.lease is not None and self.lease.end_offset is not None:
            return max(0, self.lease.end_offset - self.lease.start_offset)
        return None

    @property
    def start_position(self) -> int:
        """The position of the first record: 0 for files, the start offset for leases."""
        return self.lease.start_offset if self.lease is not None else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Shard:
        file = data.get("file")
        iceberg = data.get("iceberg")
        lease = data.get("lease")
        columns = data.get("columns")
        return cls(
            id=data["id"],
            source=data["source"],
            kind=SourceKind(data["kind"]),
            columns=tuple(columns) if columns is not None else None,
            file=FileRange(**file) if file else None,
            iceberg=(
                IcebergFile(
                    **{
                        **iceberg,
                        "io_properties": tuple(
                            (str(k), str(v)) for k, v in iceberg["io_properties"]
                        ),
                    }
                )
                if iceberg
                else None
            ),
            lease=(
                PartitionLease(**{**lease, "value_format": ValueFormat(lease["value_format"])})
                if lease
                else None
            ),
        )

    @classmethod
    def from_json(cls, text: str) -> Shard:
        return cls.from_dict(json.loads(text))


def file_shard_id(source: str, path: str, row_group_start: int, row_group_stop: int) -> str:
    """``source:path#rg2-4``: readable in events, stable while the files are unchanged."""
    return f"{source}:{path}#rg{row_group_start}-{row_group_stop}"


def lease_id(source: str, topic: str, partition: int) -> str:
    """``source:topic/3``: one lease per partition per source."""
    return f"{source}:{topic}/{partition}"
