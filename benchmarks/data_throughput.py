"""Records per second through tidemill's shard readers next to the plain read of the same data.

One worker's view: every shard of a source read in turn with ``read_shard`` (Arrow
record batches out), against the library a user would otherwise call on the same bytes:

- parquet: ``pyarrow.dataset`` scanning the same files (threaded, with read-ahead);
- iceberg: pyiceberg's own scan (``to_arrow_batch_reader``) of the same table on a SQL
  catalog (SQLite), and ``pyarrow.dataset`` over its data files;
- kafka: a plain confluent-kafka loop (assign, ``consume`` in batches, ``json.loads`` per
  value) on the same topic of a real broker (tansu, started here), and the same loop
  without decoding, which is the ceiling of what the client delivers.

Runs alternate between sides so drift of the machine hits both. Each side gets records per
wall second and per CPU second of this process (reader threads included); on a busy
machine the CPU figures are the steadier. Prints both ratios tidemill / plain and writes
``benchmarks/results/data_throughput.json``.

    python benchmarks/data_throughput.py [--rows 2000000] [--messages 300000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from confluent_kafka import Consumer, Producer, TopicPartition
from pyiceberg.catalog import Catalog, load_catalog

from tidemill.data import SourceSpec, partition_leases, plan_shards, read_shard
from tidemill.data.testing import LocalBroker

RESULTS = Path(__file__).parent / "results" / "data_throughput.json"
FILES = 4
ROW_GROUP_ROWS = 100_000
KAFKA_BATCH = 10_000


def click_table(first: int, rows: int) -> pa.Table:
    """A click log: the columns a CTR model trains on (built by Arrow kernels, so tens of
    millions of rows take seconds)."""
    ids = pa.array(np.arange(first, first + rows, dtype=np.int64))
    return pa.table(
        {
            "id": ids,
            "user": pc.binary_join_element_wise(
                "u", pc.cast(pc.remainder(ids, 100_003), pa.string()), ""
            ),
            "item": pc.multiply(ids, 7),
            "hour": pc.cast(pc.remainder(ids, 24), pa.int32()),
            "score": pc.divide(pc.cast(ids, pa.float64()), 3.0),
            "label": pc.cast(pc.remainder(ids, 2), pa.int8()),
        }
    )


def write_parquet(root: Path, rows: int) -> list[str]:
    """``rows`` clicks in ``FILES`` Parquet files under ``root/clicks``."""
    per_file = rows // FILES
    paths = []
    for index in range(FILES):
        path = root / "clicks" / f"part-{index}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(click_table(index * per_file, per_file), path, row_group_size=ROW_GROUP_ROWS)
        paths.append(str(path))
    return paths


def write_iceberg(root: Path, rows: int) -> tuple[Catalog, dict[str, str]]:
    """``rows`` clicks in table ``ads.clicks`` (``FILES`` appends) on a SQLite catalog;
    returns the catalog and its properties."""
    warehouse = root / "warehouse"
    warehouse.mkdir()
    props = {"uri": f"sqlite:///{root / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    catalog = load_catalog("default", **props)
    catalog.create_namespace("ads")
    per_file = rows // FILES
    table = catalog.create_table(
        "ads.clicks",
        schema=click_table(0, 1).schema,
        properties={"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)},
    )
    for index in range(FILES):
        table.append(click_table(index * per_file, per_file))
    return catalog, props


def produce_clicks(bootstrap: str, topic: str, messages: int) -> None:
    """``messages`` clicks as JSON values on partition 0 of ``topic``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for row in click_table(0, messages).to_pylist():
        while True:
            try:
                producer.produce(topic, json.dumps(row).encode(), partition=0)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush(60)


def consume_values(
    bootstrap: str, topic: str, messages: int, batch: int, use: Callable[[list[bytes]], int]
) -> int:
    """The plain confluent-kafka loop: assign partition 0 from offset 0, ``consume`` up
    to ``batch`` messages at a time and hand each batch's values to ``use``."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    while seen < messages:
        wanted = min(batch, messages - seen)  # more would wait out the timeout at the end
        got = [m for m in consumer.consume(wanted, timeout=1.0) if m.error() is None]
        values = [m.value() or b"" for m in got[:wanted]]
        if values:
            seen += use(values)
    consumer.close()
    return seen


def timed(read: Callable[[], int]) -> tuple[int, float, float]:
    """Records read, wall seconds, and CPU seconds of this process (all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    records = read()
    return records, time.perf_counter() - wall, time.process_time() - cpu


def compare(
    name: str, ours: Callable[[], int], plain: dict[str, Callable[[], int]], repeats: int
) -> list[dict[str, Any]]:
    """Median records per wall second and per CPU second of each side, over ``repeats``
    alternating runs. On a shared machine the CPU figure is the steadier of the two;
    the wall figure is what a worker sees, parallel decoding included."""
    sides = {"tidemill": ours, **plain}
    wall: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    counts: dict[str, int] = {}
    for _ in range(repeats):
        for side, read in sides.items():
            records, wall_s, cpu_s = timed(read)
            counts[side] = records
            wall[side].append(records / wall_s)
            cpu[side].append(records / max(cpu_s, 1e-9))
    if len(set(counts.values())) != 1:
        raise RuntimeError(f"{name}: sides read different record counts: {counts}")
    ours_wall, ours_cpu = statistics.median(wall["tidemill"]), statistics.median(cpu["tidemill"])
    return [
        {
            "source": name,
            "baseline": side,
            "records": counts[side],
            "tidemill_records_per_s": round(ours_wall),
            "baseline_records_per_s": round(statistics.median(wall[side])),
            "ratio": round(ours_wall / statistics.median(wall[side]), 3),
            "tidemill_records_per_cpu_s": round(ours_cpu),
            "baseline_records_per_cpu_s": round(statistics.median(cpu[side])),
            "cpu_ratio": round(ours_cpu / statistics.median(cpu[side]), 3),
        }
        for side in plain
    ]


def read_all(shards: list[Any]) -> Callable[[], int]:
    """One worker reading every shard in turn; planning (the job master's part) is not timed."""

    def read() -> int:
        return sum(batch.num_rows for shard in shards for batch in read_shard(shard))

    return read


def parquet_rows(root: Path, rows: int, repeats: int) -> list[dict[str, Any]]:
    paths = write_parquet(root, rows)
    spec = SourceSpec.model_validate({"parquet": {"path": str(root / "clicks")}})

    def plain() -> int:
        return sum(b.num_rows for b in ds.dataset(paths, format="parquet").to_batches())

    return compare("parquet", read_all(plan_shards(spec)), {"pyarrow.dataset": plain}, repeats)


def iceberg_rows(root: Path, rows: int, repeats: int) -> list[dict[str, Any]]:
    catalog, props = write_iceberg(root, rows)
    table = catalog.load_table("ads.clicks")
    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    spec = SourceSpec.model_validate({"iceberg": {"catalog": props, "table": "ads.clicks"}})

    def pyiceberg_scan() -> int:
        return sum(
            b.num_rows for b in catalog.load_table("ads.clicks").scan().to_arrow_batch_reader()
        )

    def pyarrow_files() -> int:
        return sum(b.num_rows for b in ds.dataset(files, format="parquet").to_batches())

    return compare(
        "iceberg",
        read_all(plan_shards(spec)),
        {"pyiceberg scan": pyiceberg_scan, "pyarrow.dataset on its files": pyarrow_files},
        repeats,
    )


def kafka_rows(messages: int, repeats: int) -> list[dict[str, Any]]:
    with LocalBroker() as broker:
        broker.create_topic("clicks", partitions=1)
        produce_clicks(broker.bootstrap, "clicks", messages)
        spec = SourceSpec.model_validate(
            {
                "kafka": {
                    "bootstrap": broker.bootstrap,
                    "topics": ["clicks"],
                    "start": "earliest",
                    "end": "offsets",
                    "endOffsets": {"clicks": {0: messages}},
                }
            }
        )

        def consume(use: Callable[[list[bytes]], int]) -> Callable[[], int]:
            return lambda: consume_values(broker.bootstrap, "clicks", messages, KAFKA_BATCH, use)

        return compare(
            "kafka",
            read_all(partition_leases(spec)),
            {
                "confluent-kafka + json.loads": consume(lambda v: len([json.loads(x) for x in v])),
                "confluent-kafka, no decoding": consume(len),
            },
            repeats,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="Parquet and Iceberg rows")
    parser.add_argument("--messages", type=int, default=300_000, help="Kafka records")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side (median kept)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        rows = [
            *parquet_rows(root, args.rows, args.repeats),
            *iceberg_rows(root, args.rows, args.repeats),
            *kafka_rows(args.messages, args.repeats),
        ]
    print(
        f"{'source':<8} {'baseline':<30} {'records':>9} {'tidemill rec/s':>15} "
        f"{'baseline rec/s':>15} {'ratio':>6} {'rec/cpu-s':>11} {'baseline':>11} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row['source']:<8} {row['baseline']:<30} {row['records']:>9} "
            f"{row['tidemill_records_per_s']:>15,} {row['baseline_records_per_s']:>15,} "
            f"{row['ratio']:>6.2f} {row['tidemill_records_per_cpu_s']:>11,} "
            f"{row['baseline_records_per_cpu_s']:>11,} {row['cpu_ratio']:>6.2f}"
        )
    print(f"load average during the run: {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    write_report(RESULTS, "data_throughput", load_before, {"repeats": args.repeats}, rows)


def write_report(
    path: Path, name: str, load_before: float, settings: dict[str, Any], rows: list[Any]
) -> None:
    """The figures as JSON, with what they were measured on."""
    report = {
        "benchmark": name,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "pyarrow": pa.__version__,
        **settings,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "results": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
