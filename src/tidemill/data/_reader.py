"""Reading one shard as Arrow record batches, with the position a worker commits.

A reader is an iterator of ``pyarrow.RecordBatch`` that also says where it stands:
``position`` is where reading would resume if the batches handed out so far were all
committed. Passing it back as ``start_at`` continues exactly after the last committed
record, with nothing skipped and nothing read twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType

import pyarrow as pa

from tidemill.api.sources import SourceKind
from tidemill.data._insight import SourceStats
from tidemill.data._shards import Shard

DEFAULT_BATCH_ROWS = 65_536


class ShardReader(Iterator[pa.RecordBatch]):
    """Batches of one shard; ``position`` advances as each batch is handed out.

    Positions are record counts from the shard's start for files and Kafka offsets for
    leases (the offset of the next record to read).
    """

    def __init__(self, shard: Shard, position: int, stats: SourceStats | None) -> None:
        self.shard = shard
        self.position = position
        self.finished = False
        self._stats = stats

    def __iter__(self) -> ShardReader:
        return self

    def __next__(self) -> pa.RecordBatch:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and connections; reading cannot continue afterwards."""

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class FileShardReader(ShardReader):
    """A row-group range of a Parquet or Iceberg data file."""

    def __init__(
        self,
        shard: Shard,
        batches: Iterator[pa.RecordBatch],
        start_at: int,
        stats: SourceStats | None,
    ) -> None:
        super().__init__(shard, start_at, stats)
        self._batches = batches

    def __next__(self) -> pa.RecordBatch:
        try:
            batch = next(self._batches)
        except StopIteration:
            self.finished = True
            raise
        self.position += batch.num_rows
        if self._stats is not None:
            self._stats.record(batch.num_rows, batch.nbytes)
        return batch

    def close(self) -> None:
        close = getattr(self._batches, "close", None)
        if close is not None:
            close()


def read_shard(
    shard: Shard,
    columns: Sequence[str] | None = None,
    start_at: int | None = None,
    *,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    stats: SourceStats | None = None,
) -> ShardReader:
    """Read ``shard`` from ``start_at`` (default: its first record) as record batches.

    ``columns`` overrides the source's column list. ``stats`` counts records, bytes and,
    for Kafka, the lag behind the head. Kafka leases with an end stop there; open-ended
    leases block until records arrive (use :meth:`KafkaShardReader.poll` to wait with a
    limit).

    Example::

        >>> [shard, *_] = plan_shards(SourceSpec.model_validate({"parquet": {"path": "a.parquet"}}))
        >>> with read_shard(shard, start_at=0) as reader:
        ...     for batch in reader:
        ...         committed = reader.position   # commit it with the model state
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    begin = shard.start_position if start_at is None else start_at
    _check_start(shard, begin)
    if shard.kind is SourceKind.KAFKA:
        from tidemill.data._kafka_reader import KafkaShardReader

        return KafkaShardReader(shard, columns, begin, batch_rows, stats)
    if shard.kind is SourceKind.ICEBERG:
        from tidemill.data._iceberg import read_iceberg_shard

        batches = read_iceberg_shard(shard, columns, begin, batch_rows)
    else:
        from tidemill.data._parquet import read_parquet_shard

        batches = read_parquet_shard(shard, columns, begin, batch_rows)
    return FileShardReader(shard, batches, begin, stats)


def _check_start(shard: Shard, start_at: int) -> None:
    low = shard.start_position
    high = shard.num_rows if shard.lease is None else (shard.lease.end_offset)
    if start_at < low or (high is not None and start_at > high):
        upper = "" if high is None else f" and at most {high}"
        raise ValueError(
            f"start_at={start_at} is outside shard {shard.id!r}: it must be at least {low}{upper}"
        )
