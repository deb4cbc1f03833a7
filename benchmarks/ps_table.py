"""In-process throughput of a parameter-server table shard, and numba compile time.

A 1M-row Adagrad table (dim 64) is filled, then trained with Zipf-distributed batches
of 4,096 unique ids: each step is ``pull`` (gather) plus ``push`` (Adagrad update),
single-threaded, as one server thread serves one table. Rows/s counts the ids of a
batch once per step (a pulled-and-pushed row). Compile time is measured in fresh
processes: cold (empty numba cache, every kernel compiled) and warm (cached).

Prints the figures and writes ``benchmarks/results/ps_table.json``. Timings on a shared
machine are noisy; the median step time is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tidemill.ps._config import TableConfig
from tidemill.ps._hashing import dedupe
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable

RESULTS = Path(__file__).parent / "results" / "ps_table.json"
FIRST_USE = (
    "import time; t = time.perf_counter(); import numpy as np; "
    "from tidemill.ps._table import ShardTable, TableConfig; "
    "table = ShardTable(TableConfig('t', dim=4, admit_min_count=2, max_rows=8, ttl_steps=1)); "
    "table.begin(1); table.pull(np.arange(20), 0); table.pull(np.arange(20), 1); "
    "table.push([1], np.ones((1, 4), np.float32), 1); table.evict(5); "
    "table.load(table.export(), replace=False); table.begin(2); table.pull([3], 6); "
    "table.rollback(); from tidemill.ps._hashing import segment_sum, virtual_shard; "
    "segment_sum(np.ones((2, 2)), [0, 0], 1); virtual_shard([1], 2); "
    "print(time.perf_counter() - t)"
)


def first_use_s(cache_dir: str) -> float:
    """Seconds to import and exercise every kernel once in a fresh process."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    done = subprocess.run(
        [sys.executable, "-c", FIRST_USE], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout.strip())


def zipf_batches(vocab: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    """Batches of ``batch`` unique ids drawn Zipf(1.1) over a shuffled vocabulary."""
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(vocab).astype(np.int64) * 2_654_435_761 % (2**61)
    batches = []
    for _ in range(count):
        unique = np.empty(0, np.int64)
        while unique.size < batch:
            ranks = (rng.zipf(1.1, size=4 * batch) - 1) % vocab
            unique = dedupe(np.concatenate([unique, shuffled[ranks]]))[0]
        batches.append(unique[:batch])
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        cold = first_use_s(cache)
        warm = first_use_s(cache)

    config = TableConfig("bench", dim=args.dim, optimizer=OptimizerConfig("adagrad"))
    table = ShardTable(config)
    started = time.perf_counter()
    vocab = np.random.default_rng(0).permutation(args.rows).astype(np.int64)
    for start in range(0, args.rows, 65_536):
        table.pull(vocab[start : start + 65_536] * 2_654_435_761 % (2**61), step=0)
    fill_s = time.perf_counter() - started

    batches = zipf_batches(args.rows, args.batch, args.steps, seed=1)
    grads = np.random.default_rng(2).standard_normal((args.batch, args.dim)).astype(np.float32)
    out = np.empty((args.batch, args.dim), np.float32)
    pull_s, push_s = [], []
    for step, ids in enumerate(batches):
        t0 = time.perf_counter()
        table.pull(ids, step=step, out=out)
        t1 = time.perf_counter()
        table.push(ids, grads, step=step)
        pull_s.append(t1 - t0)
        push_s.append(time.perf_counter() - t1)
    step_s = statistics.median(a + b for a, b in zip(pull_s, push_s, strict=True))
    raw = table.rows * (config.dim + config.state_width) * 4
    figures = {
        "rows": table.rows,
        "dim": args.dim,
        "batch_unique_ids": args.batch,
        "steps": args.steps,
        "fill_rows_per_s": round(args.rows / fill_s),
        "pull_median_ms": round(statistics.median(pull_s) * 1e3, 3),
        "push_median_ms": round(statistics.median(push_s) * 1e3, 3),
        "pull_push_rows_per_s": round(args.batch / step_s),
        "memory_bytes": table.memory_bytes,
        "memory_over_raw_rows": round(table.memory_bytes / raw, 3),
        "first_use_cold_compile_s": round(cold, 2),
        "first_use_warm_cache_s": round(warm, 2),
    }
    for name, value in figures.items():
        print(f"{name:28} {value}")
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
