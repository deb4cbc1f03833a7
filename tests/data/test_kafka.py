"""Kafka against a real tansu broker: leases, bounded reads, resume, lag and bad input."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from tests.data.conftest import Topic, produce
from tidemill.data import (
    CorruptData,
    DataInsight,
    KafkaShardReader,
    SchemaChanged,
    Shard,
    SourceNotFound,
    SourceSpec,
    SourceUnreachable,
    commit_offsets,
    partition_leases,
    read_shard,
)
from tidemill.data.testing import LocalBroker, free_port


def kafka(topic: Topic | str, bootstrap: str = "", **fields: Any) -> SourceSpec:
    name = topic.name if isinstance(topic, Topic) else topic
    address = topic.bootstrap if isinstance(topic, Topic) else bootstrap
    return SourceSpec.model_validate(
        {"name": "clicks", "kafka": {"bootstrap": address, "topics": [name], **fields}}
    )


def at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat()


def starts(leases: list[Shard]) -> dict[int, int]:
    return {s.lease.partition: s.lease.start_offset for s in leases if s.lease}


def read_all(shard: Shard, **options: Any) -> list[int]:
    with read_shard(shard, **options) as reader:
        return [i for batch in reader for i in batch.column("id").to_pylist()]


def first_batch(shard: Shard, **options: Any) -> pa.RecordBatch:
    with read_shard(shard, **options) as reader:
        return next(reader)


def test_earliest_and_latest_resolve_to_the_partition_bounds(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=200, partitions=2)

    earliest = partition_leases(kafka(topic, start="earliest"))
    latest = partition_leases(kafka(topic, start="latest"))

    assert [s.id for s in earliest] == [f"clicks:{topic.name}/0", f"clicks:{topic.name}/1"]
    assert starts(earliest) == {0: 0, 1: 0}
    assert starts(latest) == {0: 100, 1: 100}  # the head, though 100 records came in one batch
    assert all(s.lease and s.lease.open_ended for s in earliest + latest)


def test_a_start_time_resolves_to_the_first_record_stamped_at_or_after_it(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=200, partitions=2)
    start_ms = topic.stamps_ms[0][0] + 555  # records are 10 ms apart, alternating partitions

    leases = partition_leases(kafka(topic, start="timestamp", startTime=at(start_ms)))

    expected = {
        p: next(i for i, s in enumerate(topic.stamps_ms[p]) if s >= start_ms) for p in (0, 1)
    }
    assert starts(leases) == expected == {0: 28, 1: 28}
    after_head = partition_leases(kafka(topic, start="timestamp", startTime=at(start_ms + 10**6)))
    assert starts(after_head) == {0: 100, 1: 100}


def test_a_lease_with_end_offsets_reads_exactly_that_range(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=200, partitions=2)

    leases = partition_leases(
        kafka(topic, start="earliest", end="offsets", endOffsets={topic.name: {0: 30, 1: 100}})
    )

    assert [s.num_rows for s in leases] == [30, 100]
    assert read_all(leases[0], batch_rows=8) == [r["id"] for r in topic.records[0][:30]]
    assert read_all(leases[1]) == [r["id"] for r in topic.records[1]]


def test_an_end_time_in_the_past_becomes_an_end_offset(make_topic: Callable[..., Topic]) -> None:
    topic = make_topic(n=200, partitions=2)
    end_ms = topic.stamps_ms[1][40]

    [first, second] = partition_leases(
        kafka(topic, start="earliest", end="timestamp", endTime=at(end_ms))
    )

    assert (first.lease and first.lease.end_offset, second.lease and second.lease.end_offset) == (
        41,
        40,
    )
    assert read_all(second) == [r["id"] for r in topic.records[1][:40]]


def test_an_end_time_ahead_stops_at_the_first_later_record_or_once_caught_up_after_it(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=20, partitions=1)
    end_ms = int(time.time() * 1000) + 1500
    [lease] = partition_leases(kafka(topic, start="earliest", end="timestamp", endTime=at(end_ms)))
    assert lease.lease and lease.lease.end_time_ms == end_ms and lease.lease.end_offset is None

    produce(topic.bootstrap, topic.name, [(0, {"id": 20}, end_ms - 1), (0, {"id": 21}, end_ms)])
    assert read_all(lease) == [*range(20), 20]  # record 21 is at the end time: not included

    quiet = make_topic(n=5, partitions=1)
    [open_until] = partition_leases(
        kafka(quiet, start="earliest", end="timestamp", endTime=at(int(time.time() * 1000) + 800))
    )
    started = time.monotonic()
    assert read_all(open_until) == list(range(5))
    assert 0.5 < time.monotonic() - started < 5


def test_reading_resumes_from_the_position_of_the_last_committed_batch(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=400, partitions=2)
    [lease, _] = partition_leases(
        kafka(topic, start="earliest", end="offsets", endOffsets={topic.name: {0: 200, 1: 200}})
    )
    with read_shard(lease, batch_rows=25) as reader:
        first = [i for _ in range(3) for i in next(reader).column("id").to_pylist()]
        committed = reader.position

    rest = read_all(Shard.from_json(lease.to_json()), start_at=committed, batch_rows=25)

    assert committed == 75
    assert first + rest == [r["id"] for r in topic.records[0]]


def test_start_committed_uses_the_group_offsets_and_earliest_where_there_are_none(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=200, partitions=2)
    [lease, _] = partition_leases(kafka(topic, start="earliest", groupId="ctr-trainer"))
    with read_shard(lease, batch_rows=40) as reader:
        next(reader)
        commit_offsets({lease: reader.position})

    leases = partition_leases(kafka(topic, start="committed", groupId="ctr-trainer"))

    assert starts(leases) == {0: 40, 1: 0}
    with read_shard(leases[0], batch_rows=10) as resumed:
        assert next(resumed).column("id").to_pylist() == [r["id"] for r in topic.records[0][40:50]]


def test_an_open_lease_follows_a_live_stream_and_reports_its_lag(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=100, partitions=1)
    insight = DataInsight()
    [lease] = partition_leases(kafka(topic, start="earliest"))
    reader = read_shard(lease, batch_rows=30, stats=insight.source("clicks"))
    assert isinstance(reader, KafkaShardReader)

    first = next(reader)
    behind = insight.snapshot()["clicks"]
    rest = [reader.poll(1.0) for _ in range(3)]
    assert reader.poll(0.3) is None  # caught up: nothing new within the wait
    produce(
        topic.bootstrap,
        topic.name,
        [(0, {"id": 100, "user": "u", "score": 1.0}, int(time.time() * 1000))],
    )
    live = reader.poll(5.0)
    reader.close()

    assert first.num_rows == 30 and behind.lag_records == 70 and behind.lag_s is not None
    assert behind.lag_s > 50  # the records were stamped about a minute ago
    assert sum(b.num_rows for b in rest if b is not None) == 70
    assert live is not None and live.column("id").to_pylist() == [100]
    assert reader.position == 101 and reader.lag_records == 0 and reader.lag_s == 0.0
    assert insight.snapshot()["clicks"].records == 101


def test_json_values_become_columns_and_raw_values_stay_bytes(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=10, partitions=1)
    [lease] = partition_leases(kafka(topic, start="earliest"))
    [raw] = partition_leases(kafka(topic, start="earliest", valueFormat="raw"))

    batch = first_batch(lease, columns=["score", "id"])
    raw_batch = first_batch(raw)

    assert batch.schema.names == ["score", "id"] and batch.column("id").to_pylist() == list(
        range(10)
    )
    assert raw_batch.schema.names == ["key", "value", "timestamp_ms", "offset"]
    assert raw_batch.column("value")[0].as_py() == b'{"id": 0, "user": "u0", "score": 0.0}'
    assert raw_batch.column("timestamp_ms").to_pylist() == topic.stamps_ms[0]


def test_a_schema_change_mid_stream_names_the_topic_partition_and_offset(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=10, partitions=1)
    now = int(time.time() * 1000)
    produce(
        topic.bootstrap,
        topic.name,
        [(0, {"id": 10, "user": None, "score": 1.5}, now), (0, {"id": 11, "clicks": 3}, now)],
    )
    [lease] = partition_leases(kafka(topic, start="earliest"))
    with read_shard(lease, batch_rows=10) as reader:
        next(reader)
        with pytest.raises(SchemaChanged) as caught:
            next(reader)
        with pytest.raises(SchemaChanged, match="offset 11"):
            next(reader)  # trying again meets the same record, never skips it

    message = str(caught.value)
    assert f"record at {topic.name}/0 offset 11 does not match" in message
    assert "new field(s) ['clicks']" in message
    assert reader.position == 10  # nothing past the last good batch was handed out


def test_a_field_seen_only_as_null_takes_the_type_of_its_first_value(
    make_topic: Callable[..., Topic],
) -> None:
    topic = make_topic(n=0, partitions=1)
    now = int(time.time() * 1000)
    produce(topic.bootstrap, topic.name, [(0, {"id": i, "tag": None}, now) for i in range(4)])
    produce(topic.bootstrap, topic.name, [(0, {"id": 4, "tag": "new"}, now), (0, {"id": 5}, now)])
    [lease] = partition_leases(kafka(topic, start="earliest"))

    with read_shard(lease, batch_rows=4) as reader:
        batches = [next(reader), next(reader)]

    assert [b.schema.names for b in batches] == [["id", "tag"], ["id", "tag"]]
    assert batches[1].column("tag").to_pylist() == ["new", None]
    assert str(batches[1].schema.field("tag").type) == "string"


def test_a_value_of_another_type_is_a_schema_change_and_garbage_is_corrupt(
    make_topic: Callable[..., Topic],
) -> None:
    typed = make_topic(n=5, partitions=1)
    now = int(time.time() * 1000)
    produce(typed.bootstrap, typed.name, [(0, {"id": "six", "user": "u", "score": 1.0}, now)])
    garbled = make_topic(n=5, partitions=1)
    produce(garbled.bootstrap, garbled.name, [(0, b"\x00not json", now)])

    [lease] = partition_leases(kafka(typed, start="earliest"))
    with read_shard(lease, batch_rows=5) as reader:
        next(reader)
        with pytest.raises(SchemaChanged, match=f"{typed.name}/0 offset 5 does not match"):
            next(reader)
    [bad] = partition_leases(kafka(garbled, start="earliest"))
    with pytest.raises(CorruptData, match=f"record at {garbled.name}/0 offset 5 is not JSON"):
        read_all(bad)


def test_a_missing_topic_is_named_with_the_topics_that_exist(
    broker: LocalBroker, make_topic: Callable[..., Topic]
) -> None:
    topic = make_topic(n=1, partitions=1)

    with pytest.raises(
        SourceNotFound, match=r"no topic\(s\) \['nope'\] on 127.0.0.1:\d+; topics there: \[.*'t-"
    ):
        partition_leases(kafka("nope", broker.bootstrap))
    [lease] = partition_leases(kafka(topic, start="earliest"))
    moved = Shard.from_dict(
        {**lease.to_dict(), "lease": {**lease.to_dict()["lease"], "partition": 3}}
    )
    with pytest.raises(SourceNotFound, match=f"{topic.name} has no partition 3"):
        read_all(moved)


def test_an_unreachable_broker_fails_within_the_timeout() -> None:
    spec = kafka("clicks", f"127.0.0.1:{free_port()}", timeoutS=1)

    started = time.monotonic()
    with pytest.raises(
        SourceUnreachable, match=r"no Kafka broker answered at 127.0.0.1:\d+ within 1s"
    ):
        partition_leases(spec)

    assert time.monotonic() - started < 4
