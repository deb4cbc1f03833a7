"""Shuffling: shard order per epoch, and a bounded buffer that mixes records in a worker.

Both are seeded and deterministic, so a job re-run with the same seed sees the same
order, and a restored buffer continues exactly where the checkpointed one stopped: its
state (the records it holds and its generator) is saved with the model state.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from tidemill.data._shards import Shard

_RNG_KEY = b"tidemill.shuffle.rng"


def shuffle_shards(shards: Sequence[Shard], *, seed: int, epoch: int) -> list[Shard]:
    """The shards in an order fixed by ``(seed, epoch)``, whatever order they came in.

    Example::

        >>> shuffle_shards([], seed=7, epoch=0)
        []
    """
    ordered = sorted(shards, key=lambda shard: shard.id)
    random.Random(f"{seed}:{epoch}").shuffle(ordered)
    return ordered


class ShuffleBuffer:
    """Holds up to about ``capacity_rows`` records and hands out random ones.

    Push batches while :attr:`full` is false, pop while it is true, and :meth:`drain`
    at the end of the input. Each pop copies the buffer once (Arrow ``take``), so the
    cost per pop grows with the capacity, not with the data set.

    Example::

        >>> buffer = ShuffleBuffer(capacity_rows=4, seed=1)
        >>> buffer.push(pa.record_batch({"x": [1, 2, 3, 4]}))
        >>> sorted(buffer.pop(4).column("x").to_pylist())
        [1, 2, 3, 4]
    """

    def __init__(self, capacity_rows: int, seed: int) -> None:
        if capacity_rows < 1:
            raise ValueError(f"capacity_rows must be at least 1, got {capacity_rows}")
        self.capacity_rows = capacity_rows
        self._rng = np.random.Generator(np.random.PCG64(seed))
        self._table: pa.Table | None = None
        self._pending: list[pa.RecordBatch] = []
        self._schema: pa.Schema | None = None
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    @property
    def full(self) -> bool:
        return self._rows >= self.capacity_rows

    def push(self, batch: pa.RecordBatch) -> None:
        if self._schema is None:
            self._schema = batch.schema
        elif not batch.schema.equals(self._schema):
            raise ValueError(
                f"batch schema ({batch.schema}) differs from the buffer's ({self._schema})"
            )
        self._pending.append(batch)
        self._rows += batch.num_rows

    def pop(self, rows: int) -> pa.RecordBatch:
        """``rows`` records chosen at random (fewer if the buffer holds fewer)."""
        table = self._combined()
        if table is None or rows < 1:
            raise ValueError(f"cannot pop {rows} rows from a buffer of {self._rows}")
        count = min(rows, table.num_rows)
        chosen = self._rng.choice(table.num_rows, size=count, replace=False)
        keep = np.ones(table.num_rows, dtype=bool)
        keep[chosen] = False
        out = table.take(pa.array(chosen))
        self._table = table.filter(pa.array(keep))
        self._rows = self._table.num_rows
        return _one_batch(out)

    def drain(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Everything left, in random order, ``batch_rows`` at a time."""
        while self._rows:
            yield self.pop(batch_rows)

    def state(self) -> bytes:
        """The held records and generator state, to save with a checkpoint."""
        table = self._combined()
        if table is None:
            table = pa.table({})
        meta = {_RNG_KEY: json.dumps(self._rng.bit_generator.state).encode()}
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema.with_metadata(meta)) as writer:
            writer.write_table(table)
        return sink.getvalue()

    @classmethod
    def restore(cls, state: bytes, capacity_rows: int) -> ShuffleBuffer:
        """A buffer that continues exactly as the one whose :meth:`state` was taken."""
        table = pa.ipc.open_stream(state).read_all()
        buffer = cls(capacity_rows, seed=0)
        buffer._rng.bit_generator.state = json.loads(table.schema.metadata[_RNG_KEY])
        if table.num_columns:
            buffer._table = table.replace_schema_metadata(None)
            buffer._schema = buffer._table.schema
            buffer._rows = table.num_rows
        return buffer

    def _combined(self) -> pa.Table | None:
        if self._pending:
            parts = [self._table] if self._table is not None else []
            parts.append(pa.Table.from_batches(self._pending))
            self._table = pa.concat_tables(parts)
            self._pending = []
        return self._table


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    batches = table.combine_chunks().to_batches()
    return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=table.schema)


def shuffled(
    batches: Iterable[pa.RecordBatch], *, capacity_rows: int, seed: int, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """``batches`` re-cut into ``batch_rows``-row batches of records mixed by a buffer.

    Example::

        >>> data = [pa.record_batch({"x": list(range(i, i + 4))}) for i in (0, 4, 8)]
        >>> sum(b.num_rows for b in shuffled(data, capacity_rows=6, seed=3, batch_rows=5))
        12
    """
    buffer = ShuffleBuffer(capacity_rows, seed)
    for batch in batches:
        buffer.push(batch)
        while buffer.full:
            yield buffer.pop(batch_rows)
    yield from buffer.drain(batch_rows)
