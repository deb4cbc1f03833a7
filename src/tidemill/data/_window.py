"""One shard as a worker reads it: window after window, each optionally shuffled.

A window is a run of consecutive records of the shard. Its records are handed out in
an order fixed by ``(seed, shard, window start)``, so after a rollback the window is
read again from its start, shuffled the same way, and the first ``taken`` records are
skipped: the records handed out after a resume are exactly those not handed out
before. Files cut windows at exactly ``window_rows`` records; a Kafka window is what
one poll returned (its end is the offset after it, recorded in the cursor).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa

from tidemill.data._insight import SourceStats
from tidemill.data._kafka_reader import KafkaShardReader
from tidemill.data._progress import Cursor
from tidemill.data._reader import DEFAULT_BATCH_ROWS, ShardReader, read_shard
from tidemill.data._shards import Shard


class ShardWindows:
    """Hands out the records of ``shard`` from ``cursor`` on; see the module docstring."""

    def __init__(
        self,
        shard: Shard,
        index: int,
        cursor: Cursor,
        *,
        window_rows: int,
        seed: int | None,
        columns: Sequence[str] | None,
        stats: SourceStats | None,
    ) -> None:
        self.shard = shard
        self.index = index
        self._window_rows = window_rows
        self._seed = seed
        self._columns = columns
        self._stats = stats
        self._window: pa.RecordBatch | None = None
        self._start = self._end = cursor.next_position
        self._taken = 0
        self._carry: list[pa.RecordBatch] = []
        self._reader: ShardReader | None = None
        self._exhausted = False
        if cursor.in_window:
            self._reopen(cursor)

    @property
    def cursor(self) -> Cursor:
        if self._window is None or self._taken >= self._window.num_rows:
            return Cursor.at(self._end)
        return Cursor(self._start, self._window.num_rows, self._taken, self._end)

    @property
    def finished(self) -> bool:
        """Every record of the shard was handed out (open-ended leases never finish)."""
        used_up = self._window is None or self._taken >= self._window.num_rows
        return used_up and self._exhausted and not self._carry

    @property
    def is_stream(self) -> bool:
        return self.shard.lease is not None

    def take(self, rows: int, wait_s: float = 0.0) -> pa.RecordBatch | None:
        """Up to ``rows`` records of the current window (opening the next one if needed);
        None when nothing is there now (a stream) or the shard is finished."""
        window = self._window
        if window is None or self._taken >= window.num_rows:
            window = self._next_window(wait_s)
            if window is None:
                return None
        count = min(rows, window.num_rows - self._taken)
        out = window.slice(self._taken, count)
        self._taken += count
        return out

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # --- windows ------------------------------------------------------------------

    def _next_window(self, wait_s: float) -> pa.RecordBatch | None:
        start = self._end
        if self.is_stream:
            records = self._poll(wait_s)
            if records is None:
                return None
            end = self._open_reader().position
        else:
            records = self._file_rows(self._window_rows)
            if records is None:
                return None
            end = start + records.num_rows
        self._set_window(records, start, end)
        return self._window

    def _set_window(self, records: pa.RecordBatch, start: int, end: int) -> None:
        self._start, self._end, self._taken = start, end, 0
        if self._seed is not None and records.num_rows > 1:
            key = [self._seed, zlib.crc32(self.shard.id.encode()), start]
            order = np.random.default_rng(key).permutation(records.num_rows)
            records = records.take(pa.array(order))
        self._window = records

    def _reopen(self, cursor: Cursor) -> None:
        """Read the window the cursor is in again, then skip what was handed out."""
        lease = self.shard.lease
        if lease is not None:
            bounded = replace(self.shard, lease=replace(lease, end_offset=cursor.end))
            with read_shard(bounded, self._columns, cursor.start, stats=None) as reader:
                batches = list(reader)
            records = _concat(batches)
            self._start = self._end = cursor.next_position
        else:
            self._start = self._end = cursor.start
            records = self._file_rows(cursor.rows)
        if records is None or records.num_rows != cursor.rows:
            got = 0 if records is None else records.num_rows
            raise RuntimeError(
                f"shard {self.shard.id!r}: the window at {cursor.start} held {cursor.rows} "
                f"records when it was read and {got} now; the data changed under the job"
            )
        self._set_window(records, cursor.start, cursor.next_position)
        self._taken = cursor.taken

    def _open_reader(self) -> ShardReader:
        if self._reader is None:
            # Files decode in large batches that windows slice (decoding costs per call);
            # a stream's batch is one poll, which is the window.
            batch_rows = (
                self._window_rows if self.is_stream else max(self._window_rows, DEFAULT_BATCH_ROWS)
            )
            self._reader = read_shard(
                self.shard,
                self._columns,
                self._end,
                batch_rows=batch_rows,
                stats=self._stats,
            )
        return self._reader

    def _poll(self, wait_s: float) -> pa.RecordBatch | None:
        reader = self._open_reader()
        if not isinstance(reader, KafkaShardReader):
            raise TypeError(f"shard {self.shard.id!r} is not a stream")
        batch = reader.poll(wait_s)
        if reader.finished:
            self._exhausted = True
        if batch is None or batch.num_rows == 0:
            return None
        return batch

    def _file_rows(self, rows: int) -> pa.RecordBatch | None:
        """Exactly ``rows`` records (fewer at the end of the shard), keeping the rest."""
        have = sum(batch.num_rows for batch in self._carry)
        reader = self._open_reader() if not self._exhausted else None
        while have < rows and reader is not None:
            batch = next(reader, None)
            if batch is None:
                self._exhausted = True
                self.close()
                break
            self._carry.append(batch)
            have += batch.num_rows
        if have == 0:
            return None
        taken: list[pa.RecordBatch] = []
        while self._carry and rows > 0:
            batch = self._carry.pop(0)
            if batch.num_rows > rows:
                self._carry.insert(0, batch.slice(rows))
                batch = batch.slice(0, rows)
            taken.append(batch)
            rows -= batch.num_rows
        return _concat(taken)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches)
    combined = table.combine_chunks().to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=table.schema)
