"""Row budgets from a replica's memory: a PS shard that would run out of memory evicts
its least-used rows by its tables' policy instead (and says so), never a row half-written.

The tables share :data:`TABLE_MEMORY_SHARE` of the replica's memory equally; a table's
budget is its share over the bytes one row costs (weights, optimizer state, metadata and
its slot in the hash index). A table's own ``eviction.maxRows`` wins when lower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tidemill.ps._config import TableConfig

TABLE_MEMORY_SHARE = 0.6
"""Of the replica's memory; the rest is the process, the wire buffers and growth slack
(the row arrays grow geometrically)."""
ROW_OVERHEAD_BYTES = 64
"""Metadata (id, count, updates, last step, version) and the index slot at its load factor."""


@dataclass(frozen=True)
class Budgeted:
    config: TableConfig
    """The table with its effective ``max_rows``."""
    by_memory: bool
    """The budget comes from the replica's memory (its evictions are memory pressure)."""


def row_bytes(table: TableConfig) -> int:
    return 4 * (table.dim + table.optimizer.state_width(table.dim)) + ROW_OVERHEAD_BYTES


def row_budgets(tables: tuple[TableConfig, ...], memory_bytes: int | None) -> list[Budgeted]:
    """Each table with the row budget the replica's memory allows.

    >>> from tidemill.ps._optimizers import OptimizerConfig
    >>> table = TableConfig("user", 64, OptimizerConfig("adagrad"))
    >>> row_budgets((table,), 2**30)[0].config.max_rows
    1118481
    """
    if memory_bytes is None:
        return [Budgeted(table, False) for table in tables]
    share = memory_bytes * TABLE_MEMORY_SHARE / len(tables)
    budgeted = []
    for table in tables:
        rows = max(1, int(share // row_bytes(table)))
        if table.max_rows is not None and table.max_rows <= rows:
            budgeted.append(Budgeted(table, False))
        else:
            budgeted.append(Budgeted(replace(table, max_rows=rows), True))
    return budgeted
