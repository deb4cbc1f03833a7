"""A replica's memory bounds its tables: past the row budget it derives from the role's
memory, a shard evicts its least-used rows (and counts them), and the rows it keeps are
untouched."""

from __future__ import annotations

import numpy as np

from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
from tidemill.ps._budget import row_budgets, row_bytes

TABLE = TableConfig("user", 8, OptimizerConfig("sgd", lr=1.0), init_scale=0.1)


def test_a_shard_at_its_memory_budget_evicts_least_used_rows_and_says_so() -> None:
    memory = 200 * row_bytes(TABLE) * 10 // 6  # room for 200 rows at the 0.6 share
    config = PSConfig((TABLE,), memory_bytes=memory)
    assert row_budgets(config.tables, memory)[0].config.max_rows == 200
    with PSServer(config, index=0) as server, PSClient(config, [server.address]) as client:
        hot = np.arange(50)
        for _ in range(3):  # the hot ids are pulled often: least-used rows go first
            client.pull("user", hot)
        client.push("user", hot, np.ones((50, 8), np.float32))
        client.advance()
        kept = client.pull("user", hot)
        for start in range(1000, 3000, 100):
            client.pull("user", np.arange(start, start + 100))
        stats = client.stats()[0]["tables"]["user"]
        assert stats["rows"] <= 200 and stats["budget_from"] == "memory"
        assert stats["memory_evicted"] >= 1800
        assert np.array_equal(client.pull("user", hot), kept), "kept rows are intact"


def test_a_lower_max_rows_wins_and_is_not_memory_pressure() -> None:
    table = TableConfig("user", 8, max_rows=10)
    budgeted = row_budgets((table,), 2**30)[0]
    assert (budgeted.config.max_rows, budgeted.by_memory) == (10, False)
