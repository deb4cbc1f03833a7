"""Data for the clicks_stream example: an Iceberg table of past clicks and a live Kafka topic.

It builds, in ``--dir`` (default ``./clicks-data``):

- ``catalog.db`` and ``warehouse/``: a pyiceberg SQL catalog (SQLite) holding the table
  ``ads.clicks``, one data file per day from 20261101 to 20261107. The job backfills
  the days before 20261107; ``train.py`` keeps day 20261107 as its held-out slice.
- a tansu broker (a real Kafka-protocol broker, in memory, on a free port) with the
  topic ``clicks`` of two partitions;
- ``job.yaml``: the job, with the catalog, the broker and the stream's end filled in.

Then it produces the stream (day 20261108) at a steady rate and keeps the broker up
until Ctrl-C or ``--linger-s``: the broker keeps its records in memory, so leave this
running while the job trains::

    python examples/clicks_stream/prepare.py
    tidemill run clicks-data/job.yaml          # in another terminal

Every click has four features and a label drawn from a logistic model with fixed
weights, so logistic regression can learn it (0.89 accuracy is the best possible).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from pathlib import Path
from types import FrameType

import numpy as np
import pyarrow as pa
from confluent_kafka import Producer
from pyiceberg.catalog import load_catalog

from tidemill.data.testing import LocalBroker

FEATURES = ("f0", "f1", "f2", "f3")
WEIGHTS = np.array([2.0, -3.0, 1.5, 2.5])
BIAS = -0.5
DAYS = tuple(range(20261101, 20261108))
HOLDOUT_DAY = DAYS[-1]
LIVE_DAY = 20261108
TOPIC = "clicks"
PARTITIONS = 2
EXAMPLE = Path(__file__).resolve().parent

SCHEMA = pa.schema(
    [("day", pa.int64()), *((name, pa.float64()) for name in FEATURES), ("label", pa.int64())]
)
"""The types JSON stream records decode to, so both stages yield the same columns."""

JOB = """\
# Written by examples/clicks_stream/prepare.py. Keep prepare.py running while the job
# trains: its broker holds the stream in memory.
#   tidemill run {job_path}
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {{name: clicks-stream}}
spec:
  mode: allreduce
  roles:
    worker:
      replicas: 2
      minReplicas: 1          # elastic: kill -9 a worker and the other goes on in place
      maxReplicas: 2
      resources: {{cpu: 1, memory: 1Gi}}
      command: [python, train.py, --holdout, "day = {holdout_day}"]
      workingDir: {example}
      restartPolicy: OnFailure
      maxRestarts: 2
  data:
    shuffle: {{seed: 7, bufferRows: 4096}}   # records shuffled within 4,096-row windows
    rowsPerShard: 10000                    # whole row groups; here a day's file each
    stages:
      - name: backfill                     # the past days, read once
        epochs: 1
        sources:
          - iceberg:
              catalog: {{uri: {uri}, warehouse: {warehouse}}}
              table: ads.clicks
              filter: "day < {holdout_day}"
      - name: online                       # then the stream, from its first record
        sources:
          - kafka:
              bootstrap: {bootstrap}
              topic: {topic}
              start: earliest
              end: offsets                 # ends the job; leave it out to train forever
              endOffsets: {{{topic}: {end_offsets}}}
              groupId: clicks-trainer      # offsets committed only with the model
"""


def clicks(rows: int, day: int, rng: np.random.Generator) -> pa.Table:
    """``rows`` clicks of one day: label ~ Bernoulli(sigmoid(WEIGHTS . features + BIAS))."""
    features = rng.standard_normal((rows, len(FEATURES)))
    chance = 1.0 / (1.0 + np.exp(-(features @ WEIGHTS + BIAS)))
    labels = (rng.random(rows) < chance).astype(np.int64)
    columns = {name: features[:, i] for i, name in enumerate(FEATURES)}
    return pa.table(
        {"day": np.full(rows, day, dtype=np.int64), **columns, "label": labels}, schema=SCHEMA
    )


def make_table(folder: Path, rows: int, rng: np.random.Generator) -> dict[str, str]:
    """``ads.clicks`` in a fresh SQLite catalog, one append (one data file) per day."""
    shutil.rmtree(folder / "warehouse", ignore_errors=True)
    (folder / "catalog.db").unlink(missing_ok=True)
    warehouse = folder / "warehouse"
    warehouse.mkdir(parents=True)
    catalog_props = {"uri": f"sqlite:///{folder / 'catalog.db'}", "warehouse": warehouse.as_uri()}
    catalog = load_catalog("default", **catalog_props)
    catalog.create_namespace("ads")
    table = catalog.create_table("ads.clicks", schema=SCHEMA)
    for index, day in enumerate(DAYS):
        table.append(clicks(rows // len(DAYS) + (index < rows % len(DAYS)), day, rng))
    return catalog_props


def write_job(
    folder: Path, catalog_props: dict[str, str], bootstrap: str, per_partition: int
) -> Path:
    """``job.yaml``, written whole under a temporary name first, so no reader sees half."""
    path = folder / "job.yaml"
    text = JOB.format(
        job_path=path,
        holdout_day=HOLDOUT_DAY,
        example=json.dumps(str(EXAMPLE)),
        uri=json.dumps(catalog_props["uri"]),
        warehouse=json.dumps(catalog_props["warehouse"]),
        bootstrap=json.dumps(bootstrap),
        topic=TOPIC,
        end_offsets="{" + ", ".join(f"{p}: {per_partition}" for p in range(PARTITIONS)) + "}",
    )
    partial = path.with_suffix(".yaml.partial")
    partial.write_text(text)
    partial.replace(path)
    return path


def produce(bootstrap: str, per_partition: int, rate: float, rng: np.random.Generator) -> None:
    """Write ``per_partition`` clicks to each partition, about ``rate`` records a second."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    total = per_partition * PARTITIONS
    tick_s = 0.05
    per_tick = max(1, round(rate * tick_s))
    started = time.monotonic()
    written = 0
    while written < total:
        batch = clicks(min(per_tick, total - written), LIVE_DAY, rng).to_pylist()
        for record in batch:
            producer.produce(TOPIC, json.dumps(record).encode(), partition=written % PARTITIONS)
            written += 1
        producer.poll(0)
        if written % max(total // 10, 1) < len(batch):
            say(f"stream: {written:,} of {total:,} records written")
        time.sleep(max(0.0, started + written / rate - time.monotonic()))
    if producer.flush(30):
        raise RuntimeError("the broker did not acknowledge every record within 30 s")
    say(f"stream: all {total:,} records written")


def say(text: str) -> None:
    print(text, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM ends the script like Ctrl-C, so the broker is stopped on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("clicks-data"), help="output folder")
    parser.add_argument("--table-rows", type=int, default=42_000, help="rows of ads.clicks")
    parser.add_argument(
        "--stream-per-partition", type=int, default=5_000, help="stream records per partition"
    )
    parser.add_argument("--rate", type=float, default=500.0, help="stream records per second")
    parser.add_argument(
        "--linger-s",
        type=float,
        default=None,
        help="stop the broker this long after the stream is written (default: at Ctrl-C)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    try:
        serve(args)
    except KeyboardInterrupt:
        say("stopped")


def serve(args: argparse.Namespace) -> None:
    """Table, broker, job file, stream; the broker stops when this returns or is interrupted."""
    folder = args.dir.resolve()
    rng = np.random.default_rng(args.seed)
    catalog_props = make_table(folder, args.table_rows, rng)
    say(f"table: ads.clicks, {args.table_rows:,} rows, catalog {catalog_props['uri']}")
    with LocalBroker() as broker:
        broker.create_topic(TOPIC, partitions=PARTITIONS)
        say(f"broker: {broker.bootstrap}, topic {TOPIC!r} ({PARTITIONS} partitions)")
        job = write_job(folder, catalog_props, broker.bootstrap, args.stream_per_partition)
        say(f"job file: {job}\n\nin another terminal: tidemill run {args.dir / 'job.yaml'}\n")
        produce(broker.bootstrap, args.stream_per_partition, args.rate, rng)
        if args.linger_s is None:
            say("keeping the broker up until Ctrl-C")
            signal.pause()
        else:
            say(f"keeping the broker up for {args.linger_s:g} s (Ctrl-C stops it sooner)")
            time.sleep(args.linger_s)
        say("stopping the broker")


if __name__ == "__main__":
    main()
