"""Records per second through ``tidemill.data.loader`` next to the raw read of the same data.

One worker outside the elastic loop: the loader plans the stage and leases every shard in
its own process, then hands out batches of ``--batch`` records. Planning is timed with the
reading, as a training script sees it. For each source, on the same data:

- raw read: parquet, ``pyarrow.dataset`` ``to_batches(columns, batch_size)`` over the same
  files; iceberg, pyiceberg's ``scan(selected_fields).to_arrow_batch_reader()`` of the same
  table on a SQL catalog (SQLite); kafka, a plain confluent-kafka loop (assign, ``consume``
  a batch, its values joined by newlines into one ``pyarrow.json.read_json`` call, the
  cheapest honest way from JSON values to columns) on a real broker (tansu, started here);
- the loader with ``output="arrow"`` (all columns), with ``shuffle.bufferRows`` (all
  columns, records shuffled within windows), and with ``output="torch"`` (the numeric
  columns, as tensors; its raw read reads those columns only).

Every side runs once untimed (imports, page cache, catalog), then the sides take turns
``--repeats`` times so drift of the machine hits all of them; the best run of each side is
kept (other work on a shared machine only ever slows a run down), with records per wall
second and per CPU second of this process (reader threads included). Prints the ratios
loader / raw read and writes ``benchmarks/results/loader_throughput.json``.

    python benchmarks/loader_throughput.py [--rows 8000000] [--messages 300000] [--batch 4096]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.json as pajson
import torch
from data_throughput import (
    consume_values,
    produce_clicks,
    timed,
    write_iceberg,
    write_parquet,
    write_report,
)

import tidemill.data
from tidemill.data.testing import LocalBroker

RESULTS = Path(__file__).parent / "results" / "loader_throughput.json"
NUMERIC = ["id", "item", "hour", "score", "label"]
SHUFFLE_ROWS = 8192

Read = Callable[[], int]


def loader_sides(source: dict[str, Any], batch: int) -> dict[str, tuple[str, Read]]:
    """The loader's three sides, each with the raw-read side it is compared to."""

    def run(columns: list[str] | None, output: Literal["arrow", "torch"], buffer_rows: int) -> Read:
        plan = {
            "stages": [{"name": "bench", "sources": [source]}],
            "shuffle": {"seed": 0, "bufferRows": buffer_rows},
        }

        def read() -> int:
            batches = tidemill.data.loader(batch, columns, output=output, spec=plan)
            if output == "arrow":
                return sum(table.num_rows for table in batches)
            return sum(len(tensors["id"]) for tensors in batches)

        return read

    return {
        "loader arrow": ("raw", run(None, "arrow", 0)),
        f"loader arrow, bufferRows {SHUFFLE_ROWS}": ("raw", run(None, "arrow", SHUFFLE_ROWS)),
        "loader torch": ("raw, numeric columns", run(NUMERIC, "torch", 0)),
    }


def measure(
    source: str, raw: dict[str, Read], ours: dict[str, tuple[str, Read]], repeats: int
) -> list[dict[str, Any]]:
    """Best records per wall and per CPU second of every side (and the median per wall
    second), the sides taking turns; ratios are of the best runs."""
    sides: dict[str, Read] = {**raw, **{name: read for name, (_, read) in ours.items()}}
    counts = {name: read() for name, read in sides.items()}
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"{source}: sides read different record counts: {counts}")
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, read in sides.items():
            records, wall_s, cpu_s = timed(read)
            wall[name].append(records / wall_s)
            cpu[name].append(records / max(cpu_s, 1e-9))
    records = counts[next(iter(sides))]

    def figures(name: str) -> dict[str, Any]:
        return {
            "side": name,
            "records_per_s": round(max(wall[name])),
            "records_per_cpu_s": round(max(cpu[name])),
            "median_records_per_s": round(statistics.median(wall[name])),
        }

    rows = [
        {"source": source, "records": records, **figures(name), "baseline": None} for name in raw
    ]
    for name, (baseline, _) in ours.items():
        row = {"source": source, "records": records, **figures(name), "baseline": baseline}
        row["ratio"] = round(max(wall[name]) / max(wall[baseline]), 3)
        row["cpu_ratio"] = round(max(cpu[name]) / max(cpu[baseline]), 3)
        rows.append(row)
    return rows


def count(batches: Iterable[pa.RecordBatch | pa.Table]) -> int:
    return sum(b.num_rows for b in batches)


def parquet_sides(root: Path, rows: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    paths = write_parquet(root, rows)

    def raw(columns: list[str] | None) -> Read:
        dataset = ds.dataset(paths, format="parquet")
        return lambda: count(dataset.to_batches(columns=columns, batch_size=batch))

    source = {"parquet": {"path": str(root / "clicks")}}
    return measure(
        "parquet",
        {"raw": raw(None), "raw, numeric columns": raw(NUMERIC)},
        loader_sides(source, batch),
        repeats,
    )


def iceberg_sides(root: Path, rows: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    catalog, props = write_iceberg(root, rows)

    def raw(columns: tuple[str, ...]) -> Read:
        def read() -> int:
            scan = catalog.load_table("ads.clicks").scan(selected_fields=columns)
            return count(scan.to_arrow_batch_reader())

        return read

    source = {"iceberg": {"catalog": props, "table": "ads.clicks"}}
    return measure(
        "iceberg",
        {"raw": raw(("*",)), "raw, numeric columns": raw(tuple(NUMERIC))},
        loader_sides(source, batch),
        repeats,
    )


def kafka_sides(messages: int, batch: int, repeats: int) -> list[dict[str, Any]]:
    with LocalBroker() as broker:
        broker.create_topic("clicks", partitions=1)
        produce_clicks(broker.bootstrap, "clicks", messages)

        def raw(columns: list[str] | None) -> Read:
            def decode(values: list[bytes]) -> int:
                table = pajson.read_json(pa.BufferReader(b"\n".join(values) + b"\n"))
                return int((table.select(columns) if columns else table).num_rows)

            return lambda: consume_values(broker.bootstrap, "clicks", messages, batch, decode)

        source = {
            "kafka": {
                "bootstrap": broker.bootstrap,
                "topics": ["clicks"],
                "start": "earliest",
                "end": "offsets",
                "endOffsets": {"clicks": {0: messages}},
            }
        }
        return measure(
            "kafka",
            {"raw": raw(None), "raw, numeric columns": raw(NUMERIC)},
            loader_sides(source, batch),
            repeats,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000, help="Parquet and Iceberg rows")
    parser.add_argument("--messages", type=int, default=300_000, help="Kafka records")
    parser.add_argument("--batch", type=int, default=4096, help="records per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side (best kept)")
    parser.add_argument("--sources", default="parquet,iceberg,kafka", help="comma-separated")
    args = parser.parse_args()
    wanted = set(args.sources.split(","))
    load_before = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        runs: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "parquet": lambda: parquet_sides(root, args.rows, args.batch, args.repeats),
            "iceberg": lambda: iceberg_sides(root, args.rows, args.batch, args.repeats),
            "kafka": lambda: kafka_sides(args.messages, args.batch, args.repeats),
        }
        for name, run in runs.items():
            if name in wanted:
                began = time.perf_counter()
                rows += run()
                print(f"{name}: written and measured in {time.perf_counter() - began:.0f} s")
    print(
        f"{'source':<8} {'side':<32} {'records':>9} {'rec/s':>12} {'ratio':>6} "
        f"{'rec/cpu-s':>12} {'ratio':>6}  baseline"
    )
    for row in rows:
        ratio = f"{row['ratio']:>6.2f}" if row["baseline"] else " " * 6
        cpu_ratio = f"{row['cpu_ratio']:>6.2f}" if row["baseline"] else " " * 6
        print(
            f"{row['source']:<8} {row['side']:<32} {row['records']:>9} "
            f"{row['records_per_s']:>12,} {ratio} {row['records_per_cpu_s']:>12,} {cpu_ratio}"
            f"  {row['baseline'] or ''}"
        )
    print(f"load average during the run: {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    settings = {
        "torch": torch.__version__,
        "batch": args.batch,
        "shuffle_buffer_rows": SHUFFLE_ROWS,
        "repeats": args.repeats,
    }
    write_report(RESULTS, "loader_throughput", load_before, settings, rows)


if __name__ == "__main__":
    main()
