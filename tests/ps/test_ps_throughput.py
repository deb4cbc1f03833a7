"""Pull+push rows/s through two loopback PS processes (printed, not asserted: 2 shared cores)."""

from __future__ import annotations

import os
import time

import numpy as np

from tidemill.ps import PSClient

from .conftest import SHARED_CONFIG, PSProcesses

ID_SPACE = 1_000_000
UNIQUE = 4096
STEPS = int(os.environ.get("TIDEMILL_PS_BENCH_STEPS", "20"))


def zipf_batch(rng: np.random.Generator) -> np.ndarray:
    """Ids of a 1M id space drawn Zipf-like until the batch holds 4,096 unique ids."""
    seen: dict[int, None] = {}
    drawn: list[np.ndarray] = []
    while len(seen) < UNIQUE:
        chunk = (rng.zipf(1.1, size=2048) * 7919) % ID_SPACE
        drawn.append(chunk)
        seen.update(dict.fromkeys(chunk.tolist()))
    ids = np.concatenate(drawn)
    return ids[np.isin(ids, list(seen)[:UNIQUE])]


def test_pull_and_push_rows_per_second_through_two_shards(shared_ps: PSProcesses) -> None:
    rng = np.random.default_rng(0)
    batches = [zipf_batch(rng) for _ in range(STEPS + 1)]
    with PSClient(SHARED_CONFIG, shared_ps.addresses, tables=["speed"]) as client:
        pulled = client.pull_many({"speed": batches[0]})["speed"]  # warm-up: compile, connect
        client.push_pulled({"speed": (pulled, np.ones_like(pulled.rows))})
        client.advance()
        unique_rows = 0
        started = time.perf_counter()
        for ids in batches[1:]:
            pulled = client.pull_many({"speed": ids})["speed"]
            client.push_pulled({"speed": (pulled, np.full_like(pulled.rows, 0.01))})
            client.advance()
            unique_rows += len(pulled.ids)
        elapsed = time.perf_counter() - started
        rows = sum(shard["tables"]["speed"]["rows"] for shard in client.stats())
    print(
        f"\nPS pull+push, 2 loopback shards, dim 64, {STEPS} batches of {UNIQUE} unique ids"
        f" (Zipf over {ID_SPACE:,}): {unique_rows / elapsed:,.0f} unique rows/s"
        f" ({elapsed / STEPS * 1000:.1f} ms/step; {rows:,} rows held)"
    )
    assert rows >= UNIQUE
