"""Data for the ctr_ps example: synthetic clicks drawn from planted embeddings.

Every click joins a user (active ids scattered over a 10^9 id space), an item (10^8),
the item's category, a bag of one to four tags and four dense features. Each user, item,
category and tag has a true 4-dimensional embedding; the click is drawn as

    Bernoulli(sigmoid(2 u.i + 1.5 u.c + 1.5 i.mean(tags) + w.dense + bias))

so a model that learns the embeddings back from the clicks predicts them well. Users,
items and tags are Zipf-popular: a few ids carry most clicks, most ids are rare.

It writes, in ``--dir`` (default ``examples/ctr_ps/ctr-data``):

- ``backfill/``: the past clicks as Parquet files (stage 1 of the job);
- ``holdout.parquet``: clicks kept apart for ``train.py``'s AUC;

then starts a tansu broker (a real Kafka-protocol broker, in memory) on ``--port``
(default 19092) with the topic ``ctr_clicks`` (2 partitions), produces the live clicks
(stage 2) at ``--rate`` a second, and keeps the broker up until Ctrl-C or
``--linger-s``. With the defaults the data is what ``examples/ctr_ps/job.yaml`` reads::

    python examples/ctr_ps/prepare.py
    tidemill run examples/ctr_ps/job.yaml          # in another terminal

Other sizes, folder or port make it write ``DIR/job.yaml``, the example's job file
with the data section changed to match; it says which file to run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from sklearn.metrics import roc_auc_score

from tidemill.api.loader import load_job_file, load_job_text, with_data_paths
from tidemill.data.testing import free_port, tansu_binary

EXAMPLE = Path(__file__).resolve().parent
EXAMPLE_JOB = EXAMPLE / "job.yaml"
TOPIC = "ctr_clicks"
PARTITIONS = 2
TRUE_DIM = 4
MAX_TAGS = 4
TAG_COLUMNS = tuple(f"tag_{k}" for k in range(MAX_TAGS))
DENSE_COLUMNS = tuple(f"dense_{k}" for k in range(4))
NO_TAG = -1
"""Fills the tag columns past a click's bag (a bag is one to four tags)."""

SCHEMA = pa.schema(
    [
        ("user", pa.int64()),
        ("item", pa.int64()),
        ("category", pa.int64()),
        *((name, pa.int64()) for name in TAG_COLUMNS),
        *((name, pa.float64()) for name in DENSE_COLUMNS),
        ("label", pa.int64()),
    ]
)
"""The types JSON stream records decode to as well, so both stages yield the same columns."""


def zipf(count: int, exponent: float, shift: float) -> npt.NDArray[np.float64]:
    """Popularity of ``count`` ids by rank: ``1 / (rank + shift) ** exponent``, normalised."""
    weights = 1.0 / (np.arange(count) + shift) ** exponent
    popularity: npt.NDArray[np.float64] = weights / weights.sum()
    return popularity


@dataclass(frozen=True)
class Vocabulary:
    """One sparse feature's active ids, their planted embeddings and popularity."""

    ids: npt.NDArray[np.int64]
    vectors: npt.NDArray[np.float64]
    popularity: npt.NDArray[np.float64]

    @classmethod
    def planted(
        cls, rng: np.random.Generator, count: int, id_space: int, mean: float, exponent: float
    ) -> Vocabulary:
        ids = rng.choice(id_space, count, replace=False).astype(np.int64)
        # A shared offset gives every id a part of its effect that is its own (a bias of
        # sorts), learnt from few clicks; the rest is the interaction with the partner.
        vectors = mean / np.sqrt(TRUE_DIM) + rng.normal(0.0, 0.6, (count, TRUE_DIM))
        return cls(ids, vectors, zipf(count, exponent, shift=5.0))

    def draw(self, rng: np.random.Generator, shape: int | tuple[int, ...]) -> npt.NDArray[np.intp]:
        return rng.choice(len(self.ids), shape, p=self.popularity)


class PlantedClicks:
    """The world the clicks come from; the same ``seed`` gives the same world."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.users = Vocabulary.planted(rng, 20_000, 10**9, mean=0.8, exponent=1.05)
        self.items = Vocabulary.planted(rng, 5_000, 10**8, mean=0.8, exponent=1.05)
        self.categories = Vocabulary.planted(rng, 50, 10**4, mean=0.0, exponent=0.0)
        self.tags = Vocabulary.planted(rng, 1_000, 10**6, mean=0.0, exponent=1.0)
        self.item_category = rng.integers(0, len(self.categories.ids), len(self.items.ids))
        self.dense_weights = np.array([0.8, -0.6, 0.4, 0.0])
        self.bias = -2.0

    def sample(self, rows: int, rng: np.random.Generator) -> tuple[pa.Table, npt.NDArray[Any]]:
        """``rows`` clicks, and the planted logit of each (what a perfect model knows)."""
        user, item = self.users.draw(rng, rows), self.items.draw(rng, rows)
        category = self.item_category[item]
        bag_sizes = rng.integers(1, MAX_TAGS + 1, rows)
        in_bag = np.arange(MAX_TAGS)[None, :] < bag_sizes[:, None]
        tags = self.tags.draw(rng, (rows, MAX_TAGS))
        tag_mean = (self.tags.vectors[tags] * in_bag[..., None]).sum(1) / bag_sizes[:, None]
        dense = rng.standard_normal((rows, len(DENSE_COLUMNS)))
        u, i = self.users.vectors[user], self.items.vectors[item]
        logit = (
            2.0 * (u * i).sum(1)
            + 1.5 * (u * self.categories.vectors[category]).sum(1)
            + 1.5 * (i * tag_mean).sum(1)
            + dense @ self.dense_weights
            + self.bias
        )
        labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
        tag_ids = np.where(in_bag, self.tags.ids[tags], NO_TAG)
        columns = {
            "user": self.users.ids[user],
            "item": self.items.ids[item],
            "category": self.categories.ids[category],
            **{name: tag_ids[:, k] for k, name in enumerate(TAG_COLUMNS)},
            **{name: dense[:, k] for k, name in enumerate(DENSE_COLUMNS)},
            "label": labels,
        }
        return pa.table(columns, schema=SCHEMA), logit


@dataclass(frozen=True)
class Sizes:
    backfill_rows: int
    backfill_files: int
    holdout_rows: int
    stream_per_partition: int


def write_parquet(
    folder: Path, world: PlantedClicks, sizes: Sizes, rng: np.random.Generator
) -> str:
    """``backfill/`` and ``holdout.parquet``; returns the AUCs a perfect model and the dense
    features alone reach on the held-out clicks, the ceiling and the floor for a model."""
    backfill = folder / "backfill"
    shutil.rmtree(backfill, ignore_errors=True)
    backfill.mkdir(parents=True)
    (folder / ".gitignore").write_text("*\n")
    per_file, extra = divmod(sizes.backfill_rows, sizes.backfill_files)
    for index in range(sizes.backfill_files):
        table, _ = world.sample(per_file + (index < extra), rng)
        pq.write_table(table, backfill / f"part-{index:03d}.parquet", row_group_size=2_500)
    holdout, logit = world.sample(sizes.holdout_rows, rng)
    pq.write_table(holdout, folder / "holdout.parquet")
    labels = holdout.column("label").to_numpy()
    dense = np.stack([holdout.column(name).to_numpy() for name in DENSE_COLUMNS], axis=1)
    perfect = roc_auc_score(labels, logit)
    dense_only = roc_auc_score(labels, dense @ world.dense_weights)
    return (
        f"held-out AUC of the planted model {perfect:.3f}, of its dense part alone {dense_only:.3f}"
    )


def job_document(folder: Path, bootstrap: str, per_partition: int) -> dict[str, Any]:
    """The example's job file with the data section (and the worker's ``--data``) pointing
    at ``folder``, the broker and the stream's end."""
    document: dict[str, Any] = yaml.safe_load(EXAMPLE_JOB.read_text())
    worker = document["spec"]["roles"]["worker"]
    worker["workingDir"] = str(EXAMPLE)
    command = worker["command"]
    command[command.index("--data") + 1] = str(folder)
    backfill, online = document["spec"]["data"]["stages"]
    backfill["sources"][0]["parquet"]["path"] = str(folder / "backfill")
    kafka = online["sources"][0]["kafka"]
    kafka["bootstrap"] = bootstrap
    kafka["endOffsets"] = {TOPIC: dict.fromkeys(range(PARTITIONS), per_partition)}
    return document


def job_to_run(folder: Path, bootstrap: str, per_partition: int) -> Path:
    """``examples/ctr_ps/job.yaml`` when it reads this data; else ``folder/job.yaml``, the
    same job with the data section changed, written whole under a temporary name first."""
    document = job_document(folder, bootstrap, per_partition)
    example = load_job_file(EXAMPLE_JOB)
    wanted = load_job_text(yaml.safe_dump(document, sort_keys=False))
    example_argv = example.spec.roles["worker"].argv
    example_folder = (EXAMPLE / example_argv[example_argv.index("--data") + 1]).resolve()
    if (
        example_folder == folder
        and wanted.spec.data is not None
        and example.spec.data == with_data_paths(wanted.spec.data, EXAMPLE)
    ):
        return EXAMPLE_JOB
    path = folder / "job.yaml"
    partial = path.with_suffix(".yaml.partial")
    header = f"# Written by examples/ctr_ps/prepare.py for its data in {folder}.\n"
    partial.write_text(header + yaml.safe_dump(document, sort_keys=False))
    partial.replace(path)
    return path


@contextmanager
def broker(port: int, timeout_s: float = 15.0) -> Iterator[str]:
    """tansu on ``127.0.0.1:port`` (0: a free one) until the block ends; yields its
    bootstrap address."""
    port = port or free_port()
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise SystemExit(
                f"port {port} is taken ({error.strerror}): stop what listens there, or pass "
                "--port with a free one and run the job file this script then writes"
            ) from error
    bootstrap = f"127.0.0.1:{port}"
    url = f"tcp://{bootstrap}"
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    admin.list_topics(timeout=1)
                    break
                except KafkaException:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(
                            f"tansu did not answer on {bootstrap} within {timeout_s:g}s; "
                            f"its log:\n{log.read().decode(errors='replace')[-4000:]}"
                        ) from None
                    time.sleep(0.05)
            futures = admin.create_topics([NewTopic(TOPIC, PARTITIONS, replication_factor=1)])
            futures[TOPIC].result(timeout=timeout_s)
            yield bootstrap
        finally:
            # tansu does not stop on SIGTERM within seconds, and holds nothing on disk.
            process.kill()
            process.wait(timeout=10)


def produce(
    bootstrap: str,
    world: PlantedClicks,
    per_partition: int,
    rate: float,
    rng: np.random.Generator,
) -> None:
    """``per_partition`` clicks to each partition as JSON, about ``rate`` records a second."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    total = per_partition * PARTITIONS
    tick_s = 0.05
    per_tick = max(1, round(rate * tick_s))
    started = time.monotonic()
    written = 0
    while written < total:
        batch, _ = world.sample(min(per_tick, total - written), rng)
        for record in batch.to_pylist():
            producer.produce(TOPIC, json.dumps(record).encode(), partition=written % PARTITIONS)
            written += 1
        producer.poll(0)
        if written % max(total // 5, 1) < batch.num_rows:
            say(f"stream: {written:,} of {total:,} clicks written")
        time.sleep(max(0.0, started + written / rate - time.monotonic()))
    if producer.flush(30):
        raise RuntimeError("the broker did not acknowledge every record within 30 s")


def say(text: str) -> None:
    print(text, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM ends the script like Ctrl-C, so the broker is stopped on the way out."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=EXAMPLE / "ctr-data", help="output folder")
    parser.add_argument(
        "--port", type=int, default=19092, help="the broker's port (0: any free one)"
    )
    parser.add_argument("--backfill-rows", type=int, default=60_000, help="clicks in Parquet")
    parser.add_argument("--backfill-files", type=int, default=6, help="Parquet files")
    parser.add_argument("--holdout-rows", type=int, default=10_000, help="held-out clicks")
    parser.add_argument(
        "--stream-per-partition", type=int, default=10_000, help="stream clicks per partition"
    )
    parser.add_argument("--rate", type=float, default=2_000.0, help="stream clicks per second")
    parser.add_argument(
        "--linger-s",
        type=float,
        default=None,
        help="stop the broker this long after the stream is written (default: at Ctrl-C)",
    )
    parser.add_argument("--seed", type=int, default=0, help="of the planted world")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    stop_on_sigterm()
    try:
        serve(args)
    except KeyboardInterrupt:
        say("stopped")


def serve(args: argparse.Namespace) -> None:
    """Parquet, broker, job file, stream; the broker stops when this returns or is interrupted."""
    folder = args.dir.resolve()
    sizes = Sizes(
        args.backfill_rows, args.backfill_files, args.holdout_rows, args.stream_per_partition
    )
    world = PlantedClicks(args.seed)
    rng = np.random.default_rng(args.seed + 1)
    ceiling = write_parquet(folder, world, sizes, rng)
    say(f"parquet: {sizes.backfill_rows:,} clicks in {folder / 'backfill'}, {ceiling}")
    with broker(args.port) as bootstrap:
        say(f"broker: {bootstrap}, topic {TOPIC!r} ({PARTITIONS} partitions)")
        job = job_to_run(folder, bootstrap, sizes.stream_per_partition)
        say(f"job file: {job}\n\nin another terminal: tidemill run {job}\n")
        produce(bootstrap, world, sizes.stream_per_partition, args.rate, rng)
        say(f"stream: all {sizes.stream_per_partition * PARTITIONS:,} clicks written")
        if args.linger_s is None:
            say("keeping the broker up until Ctrl-C")
            signal.pause()
        else:
            say(f"keeping the broker up for {args.linger_s:g} s (Ctrl-C stops it sooner)")
            time.sleep(args.linger_s)
        say("stopping the broker")


if __name__ == "__main__":
    main()
