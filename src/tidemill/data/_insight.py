"""Data insight: how much each source delivered, how fast, and how far streams lag.

Readers update a :class:`SourceStats` as they hand out batches; the worker reports
:meth:`DataInsight.snapshot` to the job master, which shows it in ``tidemill describe``,
the REST API and ``/metrics``. Counters are guarded by a lock because readers may run on
prefetch threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceSnapshot:
    """One source's counters at one moment (JSON-ready with ``dataclasses.asdict``).

    ``bytes`` is the Arrow size of delivered batches for files and the value bytes of
    delivered messages for Kafka. ``lag_records`` sums the records between each lease's
    position and its partition head; ``lag_s`` is the largest wall-clock age of the last
    record read on a partition that is behind (0 when caught up). Both are None for
    sources without leases.
    """

    source: str
    records: int
    bytes: int
    records_per_s: float
    elapsed_s: float
    lag_records: int | None
    lag_s: float | None


class SourceStats:
    """Counters for one source, shared by all readers of its shards in this process."""

    def __init__(self, source: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._records = 0
        self._bytes = 0
        self._first_at: float | None = None
        self._lags: dict[str, tuple[int, float]] = {}

    def record(self, records: int, nbytes: int) -> None:
        """Count a delivered batch."""
        with self._lock:
            if self._first_at is None:
                self._first_at = self._clock()
            self._records += records
            self._bytes += nbytes

    def set_lag(self, shard: str, records: int, seconds: float) -> None:
        """How far one lease is behind its partition head."""
        with self._lock:
            self._lags[shard] = (records, seconds)

    def drop_lag(self, shard: str) -> None:
        """Forget a lease that finished or moved to another worker."""
        with self._lock:
            self._lags.pop(shard, None)

    def snapshot(self) -> SourceSnapshot:
        with self._lock:
            elapsed = 0.0 if self._first_at is None else self._clock() - self._first_at
            lags = list(self._lags.values())
            return SourceSnapshot(
                source=self.source,
                records=self._records,
                bytes=self._bytes,
                records_per_s=self._records / elapsed if elapsed > 0 else 0.0,
                elapsed_s=elapsed,
                lag_records=sum(r for r, _ in lags) if lags else None,
                lag_s=max(s for _, s in lags) if lags else None,
            )


class DataInsight:
    """All sources of one process, by name.

    Example::

        >>> insight = DataInsight()
        >>> insight.source("clicks").record(100, 4096)
        >>> insight.snapshot()["clicks"].records
        100
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, SourceStats] = {}

    def source(self, name: str) -> SourceStats:
        with self._lock:
            if name not in self._sources:
                self._sources[name] = SourceStats(name, self._clock)
            return self._sources[name]

    def snapshot(self) -> dict[str, SourceSnapshot]:
        with self._lock:
            sources = list(self._sources.values())
        return {stats.source: stats.snapshot() for stats in sources}
