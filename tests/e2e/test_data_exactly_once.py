"""Batch then stream, exactly once, through the control plane.

A job backfills an Iceberg table (SQLite SQL catalog, local warehouse), then reads a
Kafka topic on a real tansu broker while a producer keeps writing to it. Mid-stream one
worker is killed with SIGKILL and one more is added with ``tidemill scale``. The
workers' model is a ledger (tests/e2e/ledger_train.py): at the end, every record id of
the table and of the topic must have been trained exactly once.
"""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.ledger import (
    CLUSTER,
    PARTITIONS,
    STREAM_PER_PARTITION,
    SlowProducer,
    committed_offsets,
    job,
    ledger_counts,
    make_table,
    stage_records,
)
from tidemill.data.testing import LocalBroker

pytestmark = pytest.mark.e2e


def test_backfill_then_stream_with_a_kill_and_a_join_trains_every_record_once(
    start_server: Any, broker: LocalBroker, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions=PARTITIONS)
    catalog = make_table(tmp_path)
    _, client = start_server(CLUSTER)
    result = tmp_path / "ledger.json"
    marks = tmp_path / "marks"
    marks.mkdir()
    client.submit(job(catalog, broker.bootstrap, topic, result, marks))
    client.scale("clicks", "worker", 2)  # elastic roles grow to their max unless pinned
    wait_for(lambda: stage_records(client, "clicks", "backfill") > 0, 120, "the backfill to read")
    # The stream ends at fixed offsets: its end trickles until a group of 3 has committed,
    # or on a loaded machine the job can finish before the join it is meant to test (or
    # before a replacement joins, when the joiner itself is lost).
    trained_by_three = marks / "committed-world-3"
    producer = SlowProducer(broker.bootstrap, topic, until=trained_by_three.exists)
    producer.start()

    wait_for(
        lambda: stage_records(client, "clicks", "online") > 200, 120, "the stream stage to read"
    )
    victim = next(
        r for r in client.get("clicks").replicas if r.role == "worker" and r.index == 1 and r.pid
    )
    trained_by_three.unlink(missing_ok=True)  # only a group of 3 after the kill counts
    os.kill(victim.pid, signal.SIGKILL)
    client.scale("clicks", "worker", 3)

    final = client.wait("clicks", timeout_s=240)
    producer.join(30)
    assert producer.error is None, producer.error
    assert final.phase == "Succeeded", final.message

    ledger = ledger_counts(result)
    worlds = [epoch["world_size"] for epoch in ledger["epochs"]]
    assert 3 in worlds, (worlds, epoch_events(client))

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


def epoch_events(client: Any) -> list[str]:
    """How the group changed, for a failure message."""
    changes = ("EpochStarted", "WorkerLost", "ReplicaUnresponsive", "TrainingFinished")
    return [e.message for e in client.job_events("clicks") if e.reason in changes]
