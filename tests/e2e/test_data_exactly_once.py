"""Batch then stream, exactly once, through the control plane.

A job backfills an Iceberg table (SQLite SQL catalog, local warehouse), then reads a
Kafka topic on a real tansu broker while a producer keeps writing to it. Mid-stream one
worker is killed with SIGKILL and one more is added with ``tidemill scale``. The
workers' model is a ledger (tests/e2e/ledger_train.py): at the end, every record id of
the table and of the topic must have been trained exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from pyiceberg.catalog import load_catalog

from tests.e2e.harness import wait_for
from tidemill.data.testing import LocalBroker

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).resolve().parent / "ledger_train.py"
CLUSTER = "nodes:\n  - {name: n, cpu: 8, memory: 16Gi}\n"
TABLE_ROWS = 3000
STREAM_PER_PARTITION = 900
PARTITIONS = 2


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    with LocalBroker() as running:
        yield running


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
    """Writes ids TABLE_ROWS.. round-robin over the partitions, about 100 a second."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
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
                if offset % 6 == 5:
                    producer.poll(0)
                    time.sleep(0.06)
            if producer.flush(15):
                raise RuntimeError("records were not delivered")
        except BaseException as exc:  # reported by the test
            self.error = exc


def job(catalog: dict[str, str], bootstrap: str, topic: str, result: Path) -> dict[str, Any]:
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


def stage_records(client: Any, stage: str) -> int:
    data = client.get("clicks").data
    if data is None:
        return 0
    return sum(s.records for st in data.stages if st.name == stage for s in st.sources)


def test_backfill_then_stream_with_a_kill_and_a_join_trains_every_record_once(
    start_server: Any, broker: LocalBroker, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    catalog = make_table(tmp_path)
    _, client = start_server(CLUSTER)
    result = tmp_path / "ledger.json"
    client.submit(job(catalog, broker.bootstrap, topic, result))
    client.scale("clicks", "worker", 2)  # elastic roles grow to their max unless pinned
    wait_for(lambda: stage_records(client, "backfill") > 0, 120, "the backfill to read")
    producer = SlowProducer(broker.bootstrap, topic)
    producer.start()

    wait_for(lambda: stage_records(client, "online") > 200, 120, "the stream stage to read")
    victim = next(
        r for r in client.get("clicks").replicas if r.role == "worker" and r.index == 1 and r.pid
    )
    os.kill(victim.pid, signal.SIGKILL)
    client.scale("clicks", "worker", 3)

    final = client.wait("clicks", timeout_s=240)
    producer.join(30)
    assert producer.error is None, producer.error
    assert final.phase == "Succeeded", final.message

    ledger = json.loads(result.read_text())
    counts = ledger["counts"]
    twice = [i for i, c in enumerate(counts) if c > 1]
    lost = [i for i, c in enumerate(counts) if c == 0]
    assert not twice, f"{len(twice)} records trained more than once, e.g. {twice[:10]}"
    assert not lost, f"{len(lost)} records never trained, e.g. {lost[:10]}"
    worlds = [epoch["world_size"] for epoch in ledger["epochs"]]
    assert 3 in worlds, worlds

    reasons = [event.reason for event in client.job_events("clicks")]
    assert "WorkerLost" in reasons, reasons
    assert reasons.count("StageStarted") == 2 and reasons.count("StageFinished") == 2, reasons
    insight = client.get("clicks").data
    assert insight is not None
    assert [stage.state for stage in insight.stages] == ["done", "done"]
    backfill, online = insight.stages
    assert backfill.sources[0].shards_done > 0
    assert backfill.sources[0].shards_pending == backfill.sources[0].shards_in_flight == 0
    stream = online.sources[0]
    assert sum(stream.workers.values()) == stream.records > STREAM_PER_PARTITION
    assert stream.shards_done == PARTITIONS and stream.lag_records is None
    assert committed_offsets(broker.bootstrap, topic) == [STREAM_PER_PARTITION] * PARTITIONS


def committed_offsets(bootstrap: str, topic: str) -> list[int]:
    """The trainer's consumer-group offsets, as any Kafka tool would read them."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "clicks-trainer"})
    try:
        wanted = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return [tp.offset for tp in consumer.committed(wanted, timeout=10)]
    finally:
        consumer.close()
