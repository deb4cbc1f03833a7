"""Errors from reading training data, each naming the source and, where known, the shard.

Tree::

    DataError               something about a data source stops reading
      ├─ SourceNotFound     the table, topic, files or partition named do not exist
      ├─ SourceUnreachable  the broker or catalog did not answer within the time allowed
      ├─ CorruptData        bytes that cannot be decoded (a Parquet row group, a Kafka record)
      ├─ SchemaChanged      a stream's records stopped matching the schema seen so far
      └─ UnsupportedData    valid data this reader does not handle yet (Iceberg delete files)

The job master turns these into events and applies the job's failure policy; the
message is written for the person reading that event.
"""

from __future__ import annotations


class DataError(Exception):
    """A data source cannot be read; ``source`` and ``shard`` say where.

    ``reason`` is the job event's reason when it stops a worker (and ``reported`` is
    set once the job master has posted that event).
    """

    reason = "DataSourceFailed"

    def __init__(self, source: str, message: str, *, shard: str | None = None) -> None:
        self.source = source
        self.shard = shard
        self.detail = message
        self.reported = False
        where = f"source {source!r}" + (f", shard {shard!r}" if shard else "")
        super().__init__(f"{where}: {message}")


class SourceNotFound(DataError):
    """The table, topic or files do not exist (or the glob matched nothing)."""

    reason = "DataSourceNotFound"


class SourceUnreachable(DataError):
    """The broker or catalog did not answer; retrying later may succeed."""

    reason = "DataSourceUnreachable"


class CorruptData(DataError):
    """Stored bytes cannot be decoded: a damaged Parquet file or a malformed record."""

    reason = "CorruptData"


class SchemaChanged(DataError):
    """A stream's record no longer matches the schema of the records before it."""

    reason = "SchemaChanged"


class UnsupportedData(DataError):
    """Valid data that this version of the reader cannot read correctly."""

    reason = "UnsupportedData"
