"""A job master's saved PS insight, for the tests of what the server and CLI show."""

from __future__ import annotations

from typing import Any

PS_INSIGHT: dict[str, Any] = {
    "updated_at": 1764640000.0,
    "shards": [
        {"index": 0, "address": "127.0.0.1:7000", "reachable": True, "error": ""},
        {"index": 1, "address": "127.0.0.1:7001", "reachable": True, "error": ""},
        {
            "index": 2,
            "address": "127.0.0.1:7002",
            "reachable": False,
            "error": "no STATS answer within 2 s",
        },
    ],
    "tables": [
        {
            "name": "item",
            "rows": 3000,
            "memory_bytes": 1572864,
            "admitted": 3500,
            "evicted": 500,
            "pulled_rows": 90000,
            "pushed_rows": 60000,
            "pull_rows_per_s": 1234.5,
            "push_rows_per_s": 812.0,
            "staleness_max_steps": 3,
            "staleness_mean_steps": 0.42,
            "applied_step": 118,
            "shard_rows": [2000, 1000, None],
        },
        {
            "name": "user",
            "rows": 40,
            "memory_bytes": 10240,
            "admitted": 40,
            "evicted": 0,
            "pulled_rows": 800,
            "pushed_rows": 800,
            "pull_rows_per_s": 12.0,
            "push_rows_per_s": 12.0,
            "staleness_max_steps": 0,
            "staleness_mean_steps": 0.0,
            "applied_step": 118,
            "shard_rows": [20, 20, None],
        },
    ],
}
"""What a job master saves under ``ps_insight`` with one of its three PS replicas hung."""
