"""Parameter-server insight as the job master sees it: each PS shard's STATS, per table.

The master polls every PS replica (:mod:`tidemill.master.ps_poller`) and hands each
answer, or the reason there was none, to a :class:`PSInsightBook`. The shards' counters
grow from each shard's start, so rates are deltas between two answers of the same shard;
a shard whose counters went back restarted, and gets no rate until its next answer.
Totals add up the shards that answered the last poll; the others show as unreachable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tidemill.api.status import PSInsightView, PSShardInsightView, PSTableInsightView

COUNTERS = ("rows", "memory_bytes", "admitted", "evicted", "pulled_rows", "pushed_rows")
"""Per-table STATS fields that add up over shards."""


@dataclass(frozen=True)
class TableStats:
    """One table on one shard, as its STATS answer says."""

    rows: int
    memory_bytes: int
    admitted: int
    evicted: int
    pulled_rows: int
    pushed_rows: int
    applied_step: int
    pulls: int
    staleness_max_steps: int
    staleness_mean_steps: float
    memory_evicted: int = 0
    """Rows evicted to keep the table within the replica's memory."""
    row_budget: int | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> TableStats:
        budget = raw.get("row_budget")
        return cls(
            **{name: int(raw[name]) for name in COUNTERS},
            applied_step=int(raw["applied_step"]),
            pulls=int(raw["pulls"]),
            staleness_max_steps=int(raw["staleness_max_steps"]),
            staleness_mean_steps=float(raw["staleness_mean_steps"]),
            memory_evicted=int(raw.get("memory_evicted", 0)),
            row_budget=None if budget is None else int(budget),
        )


@dataclass
class _Shard:
    address: str
    at: float | None = None
    """When it last answered."""
    error: str = "not polled yet"
    tables: dict[str, TableStats] = field(default_factory=dict)
    rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    """table -> (pull rows/s, push rows/s) over its last two answers."""


class PSInsightBook:
    """What the PS shards last said, and the rates between their last two answers.

    >>> book = PSInsightBook(["127.0.0.1:7001"])
    >>> stats = {"rows": 5, "memory_bytes": 640, "admitted": 5, "evicted": 0,
    ...     "pulled_rows": 8, "pushed_rows": 8, "epoch": 0, "applied_step": 0,
    ...     "pulls": 1, "staleness_max_steps": 0, "staleness_mean_steps": 0.0}
    >>> book.answered(0, {"index": 0, "tables": {"user": stats}}, now=10.0)
    >>> book.answered(0, {"index": 0, "tables": {"user": {**stats, "pushed_rows": 28}}}, now=12.0)
    >>> table = book.view(now=12.0).tables[0]
    >>> table.rows, table.push_rows_per_s
    (5, 10.0)
    """

    def __init__(self, addresses: Sequence[str]) -> None:
        self._shards = [_Shard(address) for address in addresses]
        self._warnings: list[tuple[int, str]] = []

    def take_warnings(self) -> list[tuple[int, str]]:
        """(shard, message) for each table that evicted rows under memory pressure since
        the last call: the master makes each a Warning event."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def answered(self, index: int, answer: Mapping[str, Any], now: float) -> None:
        """Shard ``index``'s STATS answer (``{"index", "tables": {name: counters}}``)."""
        shard = self._shards[index]
        tables = {name: TableStats.parse(raw) for name, raw in answer["tables"].items()}
        rates: dict[str, tuple[float, float]] = {}
        took = now - shard.at if shard.at is not None else 0.0
        for name, stats in tables.items():
            before = shard.tables.get(name)
            evicted = stats.memory_evicted - (before.memory_evicted if before else 0)
            if evicted > 0:
                self._warnings.append((index, _memory_warning(index, name, stats, evicted)))
            if before is None or took <= 0:
                continue
            pulled = stats.pulled_rows - before.pulled_rows
            pushed = stats.pushed_rows - before.pushed_rows
            if pulled >= 0 and pushed >= 0:  # else the shard restarted: counters began again
                rates[name] = (pulled / took, pushed / took)
        shard.tables, shard.rates, shard.at, shard.error = tables, rates, now, ""

    def failed(self, index: int, error: str) -> None:
        """Shard ``index`` gave no answer: down, slow, or not speaking the PS protocol."""
        shard = self._shards[index]
        shard.error = error or "no answer"
        shard.rates = {}

    def view(self, now: float) -> PSInsightView:
        answering = [shard if not shard.error else None for shard in self._shards]
        names = sorted({name for s in answering if s is not None for name in s.tables})
        return PSInsightView(
            updated_at=now,
            shards=[
                PSShardInsightView(
                    index=index, address=shard.address, reachable=not shard.error, error=shard.error
                )
                for index, shard in enumerate(self._shards)
            ],
            tables=[self._table(name, answering) for name in names],
        )

    def _table(self, name: str, answering: Sequence[_Shard | None]) -> PSTableInsightView:
        held = [(s.tables[name], s.rates.get(name)) for s in answering if s and name in s.tables]
        stats = [entry for entry, _ in held]
        rates = [rate for _, rate in held if rate is not None]
        pulls = sum(entry.pulls for entry in stats)
        staleness_total = sum(entry.staleness_mean_steps * entry.pulls for entry in stats)
        return PSTableInsightView(
            name=name,
            **{counter: sum(getattr(entry, counter) for entry in stats) for counter in COUNTERS},
            pull_rows_per_s=round(sum(pull for pull, _ in rates), 1),
            push_rows_per_s=round(sum(push for _, push in rates), 1),
            staleness_max_steps=max((entry.staleness_max_steps for entry in stats), default=0),
            staleness_mean_steps=round(staleness_total / pulls, 3) if pulls else 0.0,
            applied_step=min((entry.applied_step for entry in stats), default=None),
            shard_rows=[
                s.tables[name].rows if s is not None and name in s.tables else None
                for s in answering
            ],
        )


def _memory_warning(index: int, table: str, stats: TableStats, evicted: int) -> str:
    return (
        f"PS replica {index}: table {table!r} reached the {stats.row_budget or 0:,} rows its "
        f"share of the replica's memory holds; evicted {evicted:,} least-used rows (they "
        "start again from their initial values if seen again). Raise the ps role's "
        "resources.memory, or bound the table with eviction.ttlSteps"
    )
