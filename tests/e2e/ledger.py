"""Shared by the end-to-end tests whose workers are ledgers (tests/e2e/ledger_train.py):
an Iceberg table of ids, a producer writing more ids to a Kafka topic, the job that
backfills the table then reads the topic, and the checks a user would make."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Consumer, Producer, TopicPartition
from pyiceberg.catalog import load_catalog

SCRIPT = Path(__file__).resolve().parent / "ledger_train.py"
CLUSTER = "nodes:\n  - {name: n, cpu: 8, memory: 16Gi}\n"
TABLE_ROWS = 3000
STREAM_PER_PARTITION = 900
PARTITIONS = 2


def make_table(folder: Path) -> dict[str, str]:
    """ads.clicks with ids 0..TABLE_ROWS-1, written by three appends (three data files)."""
    warehouse = folder / "warehouse"
    warehouse.mkdir()
    props = {"uri": f"sqlite:///{folder / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    catalog = load_catalog("default", **props)
    catalog.create_namespace("ads")
    schema = pa.schema([("id", pa.int64()), ("clicked", pa.bool_())])
    table = catalog.create_table("ads.clicks", schema=schema)
    step = TABLE_ROWS // 3
    for low in range(0, TABLE_ROWS, step):
        ids = list(range(low, min(low + step, TABLE_ROWS)))
        table.append(pa.table({"id": ids, "clicked": [i % 3 == 0 for i in ids]}, schema=schema))
    return props


class SlowProducer(threading.Thread):
    """Writes ids TABLE_ROWS.. round-robin over the partitions, about 100 a second.

    With ``until``, the last ``reserve`` records trickle, about 4 a second, for as long
    as ``until()`` is false: the stream ends at fixed offsets, and this keeps it (and
    the job) going, with records to train on, until what a test waits for has happened.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        until: Callable[[], bool] | None = None,
        reserve: int = 200,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.until, self.reserve = until, reserve
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 2})
            total = STREAM_PER_PARTITION * PARTITIONS
            for offset in range(total):
                record = {"id": TABLE_ROWS + offset, "clicked": offset % 2 == 0}
                producer.produce(
                    self.topic, json.dumps(record).encode(), partition=offset % PARTITIONS
                )
                self.written += 1
                if self._trickling(total - offset):
                    producer.poll(0)
                    time.sleep(0.25)
                elif offset % 6 == 5:
                    producer.poll(0)
                    time.sleep(0.06)
            if producer.flush(15):
                raise RuntimeError("records were not delivered")
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _trickling(self, left: int) -> bool:
        return self.until is not None and left <= self.reserve and not self.until()


def job(
    catalog: dict[str, str], bootstrap: str, topic: str, result: Path, marks: Path | None = None
) -> dict[str, Any]:
    """The job; with ``marks``, rank 0 touches ``marks/committed-world-N`` at each commit
    it makes in a group of N workers."""
    end = {topic: {p: STREAM_PER_PARTITION for p in range(PARTITIONS)}}
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "clicks"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 2,
                    "minReplicas": 1,
                    "maxReplicas": 3,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, str(SCRIPT)],
                    "env": {
                        "LEDGER_SIZE": str(TABLE_ROWS + STREAM_PER_PARTITION * PARTITIONS),
                        "LEDGER_RESULT": str(result),
                        "LEDGER_BATCH": "32",
                        "LEDGER_STEP_S": "0.02",
                        **({"LEDGER_MARKS": str(marks)} if marks else {}),
                    },
                    "restartPolicy": "OnFailure",
                }
            },
            "restartBackoffSeconds": 0.5,
            "data": {
                "shuffle": {"seed": 5, "bufferRows": 100},
                "rowsPerShard": 400,
                "stages": [
                    {
                        "name": "backfill",
                        "sources": [{"iceberg": {"catalog": catalog, "table": "ads.clicks"}}],
                    },
                    {
                        "name": "online",
                        "sources": [
                            {
                                "kafka": {
                                    "bootstrap": bootstrap,
                                    "topic": topic,
                                    "start": "earliest",
                                    "end": "offsets",
                                    "endOffsets": end,
                                    "groupId": "clicks-trainer",
                                }
                            }
                        ],
                    },
                ],
            },
        },
    }


def stage_records(client: Any, name: str, stage: str) -> int:
    """Records the job's insight counts as read in ``stage`` so far."""
    data = client.get(name).data
    if data is None:
        return 0
    return sum(s.records for st in data.stages if st.name == stage for s in st.sources)


def ledger_counts(result: Path) -> dict[str, Any]:
    """The ledger rank 0 wrote, checked: every record id trained exactly once."""
    ledger: dict[str, Any] = json.loads(result.read_text())
    counts = ledger["counts"]
    twice = [i for i, c in enumerate(counts) if c > 1]
    lost = [i for i, c in enumerate(counts) if c == 0]
    assert not twice, f"{len(twice)} records trained more than once, e.g. {twice[:10]}"
    assert not lost, f"{len(lost)} records never trained, e.g. {lost[:10]}"
    return ledger


def committed_offsets(bootstrap: str, topic: str, group: str = "clicks-trainer") -> list[int]:
    """The trainer's consumer-group offsets, as any Kafka tool would read them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        wanted = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return [tp.offset for tp in consumer.committed(wanted, timeout=10)]
    finally:
        consumer.close()
