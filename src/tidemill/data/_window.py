"""One shard as a worker reads it: window after window, each optionally shuffled.

A window is a run of consecutive records of the shard. Its records are handed out in
an order fixed by ``(seed, shard, window start)``, so after a rollback the window is
read again from its start, shuffled the same way, and the first ``taken`` records are
skipped: the records handed out after a resume are exactly those not handed out
before. A file shard is cut into windows of exactly ``window_rows`` records from where
reading starts (a window boundary), on a read-ahead thread that also decodes and
shuffles them; a Kafka window is what one poll returned (its end offset is recorded).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import replace

import numpy as np
import pyarrow as pa

from tidemill.data._insight import SourceStats
from tidemill.data._kafka_reader import KafkaShardReader
from tidemill.data._prefetch import Prefetched
from tidemill.data._progress import Cursor
from tidemill.data._reader import DEFAULT_BATCH_ROWS, ShardReader, read_shard
from tidemill.data._shards import Shard

UNSHUFFLED_WINDOW_ROWS = DEFAULT_BATCH_ROWS
"""Window of an unshuffled file shard: large, since handing it out only slices it."""

Window = tuple[int, pa.RecordBatch]
"""A window's start position and its records (shuffled when a seed is set)."""


class ShardWindows:
    """Hands out the records of ``shard`` from ``cursor`` on; see the module docstring.

    ``window_rows`` is the window of a file (recorded in every cursor, so a job that
    changes it still resumes a window of the old size) and the most one poll of a
    stream returns.
    """

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
        self._seed = seed
        self._window_rows = window_rows
        self._columns = columns
        self._stats = stats
        self._window: pa.RecordBatch | None = None
        self._start = self._end = cursor.next_position
        self._taken = 0
        self._exhausted = False
        self._reader: ShardReader | None = None
        self._windows: Prefetched[Window] | None = None
        if self.is_stream:
            if cursor.in_window:
                self._reopen_stream(cursor)
        else:
            # A file shard resumes inside its window by cutting windows from its start.
            start = cursor.start if cursor.in_window else cursor.next_position
            rows = cursor.rows if cursor.in_window else window_rows
            self._open_file(start, rows, window_rows)
            if cursor.in_window:
                self._resume_file(cursor)

    @property
    def cursor(self) -> Cursor:
        if self._window is None or self._taken >= self._window.num_rows:
            return Cursor.at(self._end)
        return Cursor(self._start, self._window.num_rows, self._taken, self._end)

    @property
    def finished(self) -> bool:
        """Every record of the shard was handed out (open-ended leases never finish)."""
        used_up = self._window is None or self._taken >= self._window.num_rows
        return used_up and self._exhausted

    @property
    def is_stream(self) -> bool:
        return self.shard.lease is not None

    @property
    def decoded(self) -> bool:
        """A file shard read to its end (the rest waits in memory): time to open the next."""
        return self._exhausted or (self._windows is not None and self._windows.done)

    def take(self, rows: int, wait_s: float = 0.0) -> pa.RecordBatch | None:
        """Up to ``rows`` records of the current window (opening the next one if needed);
        None when nothing is there now (a stream) or the shard is finished."""
        window = self._window
        if window is None or self._taken >= window.num_rows:
            window = self._next_stream_window(wait_s) if self.is_stream else self._next_file()
            if window is None:
                return None
        count = min(rows, window.num_rows - self._taken)
        out = window.slice(self._taken, count)
        self._taken += count
        return out

    def close(self) -> None:
        if self._windows is not None:
            self._windows.close()  # closes the reader once its thread is out of it
            self._windows = None
        elif self._reader is not None:
            self._reader.close()
        self._reader = None

    # --- files ----------------------------------------------------------------------

    def _open_file(self, start: int, first_rows: int, window_rows: int) -> None:
        """Start decoding now, on a thread, while earlier shards are handed out."""
        reader = read_shard(
            self.shard,
            self._columns,
            start,
            batch_rows=max(window_rows, DEFAULT_BATCH_ROWS),
            stats=self._stats,
        )
        self._reader = reader
        windows = _cut(reader, start, first_rows, window_rows, self._shuffler())
        self._windows = Prefetched(windows, close=reader.close)

    def _next_file(self) -> pa.RecordBatch | None:
        found = None if self._windows is None else next(self._windows, None)
        if found is None:
            self._exhausted = True
            self.close()
            return None
        start, records = found
        self._window, self._start, self._end, self._taken = (
            records,
            start,
            start + records.num_rows,
            0,
        )
        return records

    def _resume_file(self, cursor: Cursor) -> None:
        records = self._next_file()
        self._check_same(cursor, records)
        self._taken = cursor.taken

    def _shuffler(self) -> _Shuffle | None:
        if self._seed is None:
            return None
        return _Shuffle(self._seed, zlib.crc32(self.shard.id.encode()))

    # --- streams --------------------------------------------------------------------

    def _next_stream_window(self, wait_s: float) -> pa.RecordBatch | None:
        start = self._end
        reader = self._stream_reader()
        records = reader.poll(wait_s)
        if reader.finished:
            self._exhausted = True
        if records is None or records.num_rows == 0:
            return None
        shuffle = self._shuffler()
        self._window = records if shuffle is None else shuffle(records, start)
        self._start, self._end, self._taken = start, reader.position, 0
        return self._window

    def _reopen_stream(self, cursor: Cursor) -> None:
        """Read the window the cursor is in again (up to its end offset), then skip."""
        lease = self.shard.lease
        if lease is None:
            raise TypeError(f"shard {self.shard.id!r} is not a stream")
        bounded = replace(self.shard, lease=replace(lease, end_offset=cursor.end))
        with read_shard(bounded, self._columns, cursor.start, stats=None) as reader:
            batches = list(reader)
        if not batches:
            self._check_same(cursor, None)
        records = _concat(batches)
        self._check_same(cursor, records)
        shuffle = self._shuffler()
        self._window = records if shuffle is None else shuffle(records, cursor.start)
        self._start, self._end, self._taken = cursor.start, cursor.next_position, cursor.taken

    def _stream_reader(self) -> KafkaShardReader:
        if self._reader is None:
            self._reader = read_shard(
                self.shard,
                self._columns,
                self._end,
                batch_rows=self._window_rows,
                stats=self._stats,
            )
        if not isinstance(self._reader, KafkaShardReader):
            raise TypeError(f"shard {self.shard.id!r} is not a stream")
        return self._reader

    def _check_same(self, cursor: Cursor, records: pa.RecordBatch | None) -> None:
        got = 0 if records is None else records.num_rows
        if got != cursor.rows:
            raise RuntimeError(
                f"shard {self.shard.id!r}: the window at {cursor.start} held {cursor.rows} "
                f"records when it was read and {got} now; the data changed under the job"
            )


class _Shuffle:
    """The records of a window in the order fixed by (seed, shard, window start)."""

    def __init__(self, seed: int, shard_key: int) -> None:
        self._seed, self._shard_key = seed, shard_key

    def __call__(self, records: pa.RecordBatch, start: int) -> pa.RecordBatch:
        if records.num_rows < 2:
            return records
        rng = np.random.default_rng([self._seed, self._shard_key, start])
        return records.take(pa.array(rng.permutation(records.num_rows)))


def _cut(
    batches: Iterator[pa.RecordBatch],
    start: int,
    first_rows: int,
    window_rows: int,
    shuffle: _Shuffle | None,
) -> Iterator[Window]:
    """Windows of exactly ``window_rows`` records (the first ``first_rows``, the last
    what is left), each shuffled when asked; runs on the read-ahead thread."""
    pending: list[pa.RecordBatch] = []
    have, size = 0, first_rows
    for batch in batches:
        pending.append(batch)
        have += batch.num_rows
        while have >= size:
            window, pending = _split(pending, size)
            have -= size
            yield start, window if shuffle is None else shuffle(window, start)
            start, size = start + window.num_rows, window_rows
    if have:
        window = _concat(pending)
        yield start, window if shuffle is None else shuffle(window, start)


def _split(batches: list[pa.RecordBatch], rows: int) -> tuple[pa.RecordBatch, list[pa.RecordBatch]]:
    """The first ``rows`` records as one batch, and the rest as they were."""
    taken: list[pa.RecordBatch] = []
    while rows > 0:
        batch = batches.pop(0)
        if batch.num_rows > rows:
            batches.insert(0, batch.slice(rows))
            batch = batch.slice(0, rows)
        taken.append(batch)
        rows -= batch.num_rows
    return _concat(taken), batches


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    table = pa.Table.from_batches(batches)
    combined = table.combine_chunks().to_batches()
    return combined[0] if combined else pa.RecordBatch.from_pylist([], schema=table.schema)
