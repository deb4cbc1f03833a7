"""The "Parameter servers" section of ``tidemill describe``: per table, what the PS
shards hold and how fast rows move, and which shards the job master could not reach.

Pure functions of their inputs (``now`` is passed in), like :mod:`tidemill.cli.render`.
"""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from tidemill.api.status import PSInsightView, PSTableInsightView
from tidemill.cli.units import age, byte_size, clock, plain_table, rate


def ps_insight(view: PSInsightView, now: float) -> list[RenderableType]:
    """Shards (reachable or why not), when polled, then one row per table."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("Shards", shard_summary(view))
    if view.updated_at is not None:
        head.add_row("Updated", f"{clock(view.updated_at)} ({age(view.updated_at, now)} ago)")
    parts: list[RenderableType] = [head]
    for shard in view.unreachable:
        message = f"  ps-{shard.index} at {shard.address} unreachable: {shard.error}"
        parts.append(Text(message, style="yellow"))
    parts.append(_tables(view.tables) if view.tables else Text("  no tables reported yet"))
    return parts


def shard_summary(view: PSInsightView) -> Text:
    """'2 reachable' or '1 reachable, 1 unreachable' (the latter in yellow)."""
    down = len(view.unreachable)
    text = f"{len(view.shards) - down} reachable"
    return Text(f"{text}, {down} unreachable", style="yellow") if down else Text(text)


def staleness(table: PSTableInsightView) -> str:
    """'max 3, mean 0.42' steps; '0' when every pull saw every push (sync mode)."""
    if table.staleness_max_steps == 0:
        return "0"
    return f"max {table.staleness_max_steps}, mean {table.staleness_mean_steps:.2f}"


def shard_split(rows: list[int | None]) -> str:
    """'ps-0 1,204 · ps-1 1,180 · ps-2 -': rows per shard, '-' for one that did not answer."""
    return " · ".join(f"ps-{i} {'-' if n is None else f'{n:,}'}" for i, n in enumerate(rows))


def _tables(tables: list[PSTableInsightView]) -> Table:
    table = plain_table(
        "TABLE",
        "ROWS",
        "MEMORY",
        "ADMITTED",
        "EVICTED",
        "PULL ROWS/S",
        "PUSH ROWS/S",
        "STALENESS",
        "ROWS BY SHARD",
    )
    for entry in tables:
        table.add_row(
            entry.name,
            f"{entry.rows:,}",
            byte_size(entry.memory_bytes),
            f"{entry.admitted:,}",
            f"{entry.evicted:,}",
            rate(entry.pull_rows_per_s),
            rate(entry.push_rows_per_s),
            staleness(entry),
            shard_split(entry.shard_rows) or "-",
        )
    return table
