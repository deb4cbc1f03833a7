"""Reading one Kafka partition lease into Arrow record batches.

The partition is assigned at the position (never subscribed: the job master, not the
group coordinator, decides who reads what), messages are fetched in batches, and JSON
values are decoded into columns by Arrow's JSON reader in one call per batch. The schema
of the first batch becomes the stream's schema; a later record with a new field, or a
value of another type, stops the reader with :class:`SchemaChanged` naming its offset.
Records missing a field read it as null; a field seen only as null so far takes the type
of its first non-null value.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Sequence
from typing import cast

import pyarrow as pa
import pyarrow.json as pajson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from tidemill.api.sources import ValueFormat
from tidemill.data._errors import CorruptData, DataError, SchemaChanged, SourceNotFound
from tidemill.data._insight import SourceStats
from tidemill.data._kafka import consumer_config, epoch_ms_now, read_error, topic_partitions
from tidemill.data._reader import ShardReader
from tidemill.data._shards import PartitionLease, Shard

DEFAULT_LINGER_S = 0.1
"""How long a batch waits for more records before it is handed out short."""

_BLOCK_BYTES = 1 << 20
"""Arrow parses JSON in blocks of this size, one thread per block."""

RAW_SCHEMA = pa.schema(
    [
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("timestamp_ms", pa.int64()),
        ("offset", pa.int64()),
    ]
)


class KafkaShardReader(ShardReader):
    """One partition lease; ``position`` is the offset of the next record to read.

    Iterating blocks until records arrive and stops at the lease's end; :meth:`poll`
    returns after at most ``timeout_s`` so callers can interleave other work. ``lag_records``
    and ``lag_s`` say how far the reader is behind the partition head.
    """

    def __init__(
        self,
        shard: Shard,
        columns: Sequence[str] | None,
        start_at: int,
        batch_rows: int,
        stats: SourceStats | None,
    ) -> None:
        if shard.lease is None:
            raise ValueError(f"shard {shard.id!r} of kind {shard.kind} is not a Kafka lease")
        super().__init__(shard, start_at, stats)
        self.lease: PartitionLease = shard.lease
        self.lag_records: int | None = None
        self.lag_s: float | None = None
        self._columns = list(columns) if columns is not None else shard.columns
        self._batch_rows = batch_rows
        self._linger_s = DEFAULT_LINGER_S
        self._consumer: Consumer | None = None
        self._caught_up = False
        self._decoder = _JsonDecoder(shard) if self.lease.value_format is ValueFormat.JSON else None
        if self.lease.end_offset is not None and start_at >= self.lease.end_offset:
            self.finished = True

    def __next__(self) -> pa.RecordBatch:
        while not self.finished:
            batch = self.poll(self._linger_s)
            if batch is not None:
                return batch
        raise StopIteration

    def poll(self, timeout_s: float) -> pa.RecordBatch | None:
        """The records that arrived, waiting up to ``timeout_s`` for the first ones.

        Once records arrive, up to ``batch_rows`` are gathered for at most the reader's
        linger time. Returns None if none arrived in time or the lease has ended.
        """
        deadline = time.monotonic() + timeout_s
        while not self.finished:
            wait = min(self._linger_s, max(0.0, deadline - time.monotonic()))
            batch = self._consume(wait)
            if batch is not None:
                return batch
            if time.monotonic() >= deadline:
                break
        return None

    def _consume(self, wait_s: float) -> pa.RecordBatch | None:
        """One fetch from the client's queue, cut at the lease's end, as one batch.

        Per-message work is kept to list comprehensions over the client's messages: at
        hundreds of thousands of records a second, each Python step per record shows.
        """
        consumer = self._consumer or self._open()
        lease = self.lease
        wanted = self._batch_rows
        if lease.end_offset is not None:
            wanted = min(wanted, lease.end_offset - self.position)
        messages = self._records_only(consumer.consume(wanted, timeout=wait_s))
        offsets = cast(list[int], [m.offset() for m in messages])  # records always have one
        first = bisect_left(offsets, self.position)  # anything before the position is stale
        stop = len(offsets)
        if lease.end_offset is not None:
            stop = bisect_left(offsets, lease.end_offset, first)
        if lease.end_time_ms is not None:
            end_ms = lease.end_time_ms
            stamps = [m.timestamp()[1] for m in messages[first:stop]]
            stop = first + next((i for i, t in enumerate(stamps) if t >= end_ms), stop - first)
        kept, kept_offsets = messages[first:stop], offsets[first:stop]
        try:
            batch, nbytes = self._to_batch(kept, kept_offsets)
        except DataError:
            self.close()  # a retry re-reads from the position and meets the same record
            raise
        if kept:
            self.position = kept_offsets[-1] + 1
        self._update_lag(kept)
        if stop < len(messages):
            self._finish()
        else:
            self._check_end(self.position)
        if batch is None:
            return None
        if self._stats is not None:
            self._stats.record(batch.num_rows, nbytes)
        return batch

    def _records_only(self, messages: list[Message]) -> list[Message]:
        """Messages without the client's events; end-of-partition means caught up."""
        events = [m for m in messages if m.error() is not None]
        if not events:
            if messages:
                self._caught_up = False
            return messages
        for event in events:
            error = event.error()
            if error is not None and error.code() != KafkaError._PARTITION_EOF:
                lease = self.lease
                raise read_error(
                    self.shard.source, self.shard.id, lease.topic, lease.partition, error
                )
        self._caught_up = messages[-1].error() is not None
        return [m for m in messages if m.error() is None]

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None

    def _open(self) -> Consumer:
        lease = self.lease
        consumer = Consumer(consumer_config(lease.bootstrap, lease.group_id, lease.timeout_s))
        try:
            partitions = topic_partitions(
                consumer, self.shard.source, lease.bootstrap, [lease.topic], lease.timeout_s
            )
            if lease.partition not in partitions[lease.topic]:
                raise SourceNotFound(
                    self.shard.source,
                    f"{lease.topic} has no partition {lease.partition} "
                    f"(partitions: {partitions[lease.topic]})",
                    shard=self.shard.id,
                )
            consumer.assign([TopicPartition(lease.topic, lease.partition, self.position)])
        except BaseException:
            consumer.close()
            raise
        self._consumer = consumer
        return consumer

    def _check_end(self, next_offset: int) -> None:
        """The end offset reached, or the end time passed with nothing left to read."""
        lease = self.lease
        reached = lease.end_offset is not None and next_offset >= lease.end_offset
        passed = (
            lease.end_time_ms is not None
            and self._caught_up
            and epoch_ms_now() >= lease.end_time_ms
        )
        if reached or passed:
            self._finish()

    def _finish(self) -> None:
        self.finished = True
        if self._stats is not None:
            self._stats.drop_lag(self.shard.id)
        self.close()

    def _to_batch(
        self, messages: list[Message], offsets: list[int]
    ) -> tuple[pa.RecordBatch | None, int]:
        """The messages as a batch, and their value bytes."""
        if not messages:
            return None, 0
        values = [m.value() for m in messages]
        if self._decoder is None:
            batch = pa.RecordBatch.from_arrays(
                [
                    pa.array([m.key() for m in messages], pa.binary()),
                    pa.array(values, pa.binary()),
                    pa.array([m.timestamp()[1] for m in messages], pa.int64()),
                    pa.array(offsets, pa.int64()),
                ],
                schema=RAW_SCHEMA,
            )
            nbytes = sum(len(v) for v in values if v is not None)
            return (batch.select(self._columns) if self._columns else batch), nbytes
        if None in values:  # tombstones carry no record
            pairs = [(v, o) for v, o in zip(values, offsets, strict=True) if v is not None]
            if not pairs:
                return None, 0
            values, offsets = [v for v, _ in pairs], [o for _, o in pairs]
        records = cast(list[bytes], values)
        decoded = self._decoder.decode(records, offsets)
        nbytes = sum(map(len, records))
        return (_select(decoded, self._columns) if self._columns else decoded), nbytes

    def _update_lag(self, messages: list[Message]) -> None:
        if self._consumer is None:
            return
        lease = self.lease
        _, head = self._consumer.get_watermark_offsets(
            TopicPartition(lease.topic, lease.partition), cached=True
        )
        if head is None or head < 0:
            return
        self.lag_records = max(0, int(head) - self.position)
        if self.lag_records == 0:
            self.lag_s = 0.0
        elif messages:
            self.lag_s = max(0.0, (epoch_ms_now() - messages[-1].timestamp()[1]) / 1000)
        if self._stats is not None and self.lag_s is not None:
            self._stats.set_lag(self.shard.id, self.lag_records, self.lag_s)


def _select(batch: pa.RecordBatch, columns: Sequence[str]) -> pa.RecordBatch:
    """The named columns in order; a field no record carried yet reads as nulls."""
    arrays = [
        batch.column(name) if name in batch.schema.names else pa.nulls(batch.num_rows)
        for name in columns
    ]
    return pa.RecordBatch.from_arrays(arrays, names=list(columns))


class _JsonDecoder:
    """JSON values to columns, holding the stream's schema between batches."""

    def __init__(self, shard: Shard) -> None:
        self._shard = shard
        self._schema: pa.Schema | None = None

    def decode(self, values: list[bytes], offsets: list[int]) -> pa.RecordBatch:
        data = b"\n".join(values) + b"\n"
        multiline = data.count(b"\n") > len(values)
        known = self._known()
        # Once every field has a type, blocks parse in parallel against that schema and an
        # unknown field fails the parse; until then one block infers the types.
        settled = known is not None and self._schema is not None and known == self._schema
        try:
            table = pajson.read_json(
                pa.BufferReader(data),
                read_options=pajson.ReadOptions(
                    block_size=_BLOCK_BYTES if settled else max(len(data) + 1, _BLOCK_BYTES)
                ),
                parse_options=pajson.ParseOptions(
                    explicit_schema=known,
                    unexpected_field_behavior="error" if settled else "infer",
                    newlines_in_values=multiline,
                ),
            )
        except pa.ArrowInvalid as exc:
            raise self._locate(values, offsets, str(exc)) from None
        table = self._conform(table, values, offsets)
        self._schema = table.schema
        batches = table.combine_chunks().to_batches()
        return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)

    def _known(self) -> pa.Schema | None:
        """The schema so far, less fields only ever seen as null (their type is still open)."""
        if self._schema is None:
            return None
        return pa.schema([f for f in self._schema if not pa.types.is_null(f.type)])

    def _conform(self, table: pa.Table, values: list[bytes], offsets: list[int]) -> pa.Table:
        """Columns in the stream's order; only null-only fields may gain a type."""
        old = self._schema
        if old is None:
            return table
        added = [name for name in table.schema.names if name not in old.names]
        if added:
            raise self._locate(values, offsets, f"new field(s) {added}")
        present = set(table.schema.names)
        return pa.Table.from_arrays(
            [
                table.column(field.name) if field.name in present else pa.nulls(len(table))
                for field in old
            ],
            names=old.names,
        )

    def _locate(self, values: list[bytes], offsets: list[int], problem: str) -> Exception:
        """The first record to blame, as the error a person can act on."""
        lease = self._shard.lease
        where = f"{lease.topic}/{lease.partition}" if lease else self._shard.id
        known = self._known()
        for value, offset in zip(values, offsets, strict=True):
            try:
                record = json.loads(value)
            except ValueError as exc:
                return CorruptData(
                    self._shard.source,
                    f"record at {where} offset {offset} is not JSON ({exc}): {value[:80]!r}",
                    shard=self._shard.id,
                )
            if not isinstance(record, dict):
                return CorruptData(
                    self._shard.source,
                    f"record at {where} offset {offset} is JSON {type(record).__name__}, "
                    "not an object; use valueFormat: raw for non-object values",
                    shard=self._shard.id,
                )
            if self._schema is None or known is None:
                continue
            added = sorted(set(record) - set(self._schema.names))
            if added:
                return self._changed(where, offset, f"new field(s) {added}")
            try:
                pajson.read_json(
                    pa.BufferReader(value.replace(b"\n", b" ") + b"\n"),
                    parse_options=pajson.ParseOptions(
                        explicit_schema=known, unexpected_field_behavior="ignore"
                    ),
                )
            except pa.ArrowInvalid as exc:
                return self._changed(where, offset, str(exc))
        return CorruptData(
            self._shard.source,
            f"cannot decode records at {where} offsets {offsets[0]}-{offsets[-1]}: {problem}",
            shard=self._shard.id,
        )

    def _changed(self, where: str, offset: int, problem: str) -> SchemaChanged:
        schema = ", ".join(f"{f.name}: {f.type}" for f in self._schema or [])
        return SchemaChanged(
            self._shard.source,
            f"record at {where} offset {offset} does not match the stream's schema "
            f"({schema}): {problem}",
            shard=self._shard.id,
        )
