"""Data insight as the job master sees it: each worker's counters, summed per source.

Workers send their reader counters every few seconds (``insight``); a replacement
process of the same replica starts counting from zero, so its counts are added to what
the replica had reported before. The view is a ``DataInsightView`` (see
:mod:`tidemill.api.status`), saved with the master's state for the control plane.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tidemill.api.status import DataInsightView, SourceInsightView, StageInsightView
from tidemill.data._dispatch import Dispatcher

FRESH_S = 10.0
"""A rate or lag older than this is stale: its worker stopped reporting."""


@dataclass
class _Report:
    records: int = 0
    bytes: int = 0
    records_per_s: float = 0.0
    lag_records: int | None = None
    lag_s: float | None = None
    at: float = 0.0
    base_records: int = 0
    base_bytes: int = 0


@dataclass
class InsightBook:
    reports: dict[tuple[int, str, str], _Report] = field(default_factory=dict)

    def report(self, replica: str, stage: int, sources: dict[str, Any], now: float) -> None:
        """One worker's counters for the sources of ``stage`` (cumulative per process)."""
        for name, counters in sources.items():
            entry = self.reports.setdefault((stage, name, replica), _Report())
            records, nbytes = int(counters["records"]), int(counters["bytes"])
            if records < entry.records:  # a new process of this replica
                entry.base_records += entry.records
                entry.base_bytes += entry.bytes
            entry.records, entry.bytes = records, nbytes
            entry.records_per_s = float(counters.get("records_per_s") or 0.0)
            lag_records, lag_s = counters.get("lag_records"), counters.get("lag_s")
            entry.lag_records = None if lag_records is None else int(lag_records)
            entry.lag_s = None if lag_s is None else float(lag_s)
            entry.at = now

    def view(self, dispatcher: Dispatcher, now: float) -> DataInsightView:
        current = dispatcher.progress.stage
        stages = [
            self._stage(dispatcher, index, now) for index in range(len(dispatcher.spec.stages))
        ]
        name = dispatcher.spec.stages[current].name if not dispatcher.finished else None
        return DataInsightView(stage=name, updated_at=now, stages=stages)

    def _stage(self, dispatcher: Dispatcher, index: int, now: float) -> StageInsightView:
        spec = dispatcher.spec.stages[index]
        started, finished = (dispatcher.times.get(index) or [None, None])[:2]
        if finished is not None or index < dispatcher.progress.stage:
            state = "done"
        elif started is not None and index == dispatcher.progress.stage:
            state = "running"
        else:
            state = "pending"
        plan = dispatcher.plans.get(index)
        sources = []
        for source in spec.sources:
            name = source.display_name
            done, flight, pending = dispatcher.counts(index, name)
            if plan is None:
                pending = 0
            seen = self._source(index, name, source.kind.value, source.priority, source.weight, now)
            update: dict[str, object] = {
                "shards_done": done,
                "shards_in_flight": flight,
                "shards_pending": pending,
            }
            if state == "done":  # nothing is read any more: the stage's mean rate, no lag
                took = (finished or now) - (started or now)
                mean = seen.records / took if took > 0 else 0.0
                update.update(records_per_s=round(mean, 1), lag_records=None, lag_s=None)
            sources.append(seen.model_copy(update=update))
        return StageInsightView(
            name=spec.name,
            index=index,
            state=state,
            epochs=spec.epochs,
            pass_index=dispatcher.progress.pass_index if index == dispatcher.progress.stage else 0,
            started_at=started,
            finished_at=finished,
            sources=sources,
        )

    def _source(
        self, stage: int, name: str, kind: str, priority: int, weight: float, now: float
    ) -> SourceInsightView:
        mine = {r: e for (s, n, r), e in self.reports.items() if s == stage and n == name}
        fresh = [e for e in mine.values() if now - e.at <= FRESH_S]
        lags = [e for e in fresh if e.lag_records is not None]
        return SourceInsightView(
            name=name,
            kind=kind,
            priority=priority,
            weight=weight,
            records=sum(e.base_records + e.records for e in mine.values()),
            bytes=sum(e.base_bytes + e.bytes for e in mine.values()),
            records_per_s=round(sum(e.records_per_s for e in fresh), 1),
            lag_records=sum(e.lag_records or 0 for e in lags) if lags else None,
            lag_s=max(e.lag_s or 0.0 for e in lags) if lags else None,
            workers={r: e.base_records + e.records for r, e in sorted(mine.items())},
        )
