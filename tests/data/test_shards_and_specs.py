"""Shard ids and JSON, source specs and their errors, insight counters, the public names."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

import tidemill.data
from tidemill.data import (
    DataError,
    DataInsight,
    FileRange,
    IcebergFile,
    PartitionLease,
    Shard,
    SourceKind,
    SourceNotFound,
    SourceSpec,
    ValueFormat,
)

FILE = Shard(
    id="clicks:/d/a.parquet#rg0-2",
    source="clicks",
    kind=SourceKind.ICEBERG,
    columns=("id", "label"),
    file=FileRange("/d/a.parquet", 0, 2, 200),
    iceberg=IcebergFile("ads.clicks", "file:///m.json", 42, 0, (("uri", "sqlite://"),), "day > 1"),
)
LEASE = Shard(
    id="clicks:clicks/3",
    source="clicks",
    kind=SourceKind.KAFKA,
    lease=PartitionLease(
        "b:9092", "clicks", 3, 100, None, 1_700_000_000_000, ValueFormat.JSON, "g", 5.0
    ),
)


@pytest.mark.parametrize("shard", [FILE, LEASE], ids=["iceberg file", "kafka lease"])
def test_a_shard_survives_the_trip_through_json_and_stays_hashable(shard: Shard) -> None:
    back = Shard.from_json(shard.to_json())

    assert back == shard and hash(back) == hash(shard)
    assert isinstance(back.kind, SourceKind)


def test_sizes_and_start_positions_of_files_and_leases() -> None:
    assert (FILE.num_rows, FILE.start_position) == (200, 0)
    assert (LEASE.num_rows, LEASE.start_position) == (None, 100)
    assert LEASE.lease is not None and not LEASE.lease.open_ended


def error_of(document: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as caught:
        SourceSpec.model_validate(document)
    return str(caught.value)


def test_a_source_holds_exactly_one_kind() -> None:
    assert "exactly one of parquet, iceberg, kafka (got none)" in error_of({"name": "x"})
    assert "(got parquet, kafka)" in error_of(
        {"parquet": {"path": "a"}, "kafka": {"bootstrap": "b", "topics": ["t"]}}
    )


def test_kafka_bounds_need_their_values() -> None:
    base = {"bootstrap": "b:9092", "topics": ["clicks"]}

    assert "needs startTime" in error_of({"kafka": {**base, "start": "timestamp"}})
    assert "needs groupId" in error_of({"kafka": {**base, "start": "committed"}})
    assert "needs endOffsets" in error_of({"kafka": {**base, "end": "offsets"}})
    assert "endTime is only read with end: timestamp" in error_of(
        {"kafka": {**base, "endTime": "2026-01-01T00:00:00Z"}}
    )
    assert "names topics ['views'] that are not in topics" in error_of(
        {"kafka": {**base, "end": "offsets", "endOffsets": {"views": {0: 1}}}}
    )


def test_the_job_file_spellings_are_accepted() -> None:
    spec = SourceSpec.model_validate(
        {"kafka": {"bootstrap": "b:9092", "topic": "clicks", "start": "timestamp",
                   "startTime": "2026-11-01T00:00:00Z", "endOffsets": None}}
    )  # fmt: skip

    assert spec.kafka is not None and spec.kafka.topics == ["clicks"]
    assert spec.kind is SourceKind.KAFKA and spec.display_name == "clicks"


def test_iceberg_filters_and_snapshots_are_checked_before_any_data_is_read() -> None:
    table = {"table": "ads.clicks"}

    assert "cannot parse row filter 'day >>= 3'" in error_of(
        {"iceberg": {**table, "filter": "day >>= 3"}}
    )
    assert "set snapshotId or asOf, not both" in error_of(
        {"iceberg": {**table, "snapshotId": 1, "asOf": "2026-01-01T00:00:00Z"}}
    )
    assert "is not namespace.table" in error_of({"iceberg": {"table": "clicks"}})


def test_errors_name_the_source_and_shard() -> None:
    error = SourceNotFound("clicks", "no topic(s) ['x']", shard="clicks:x/0")

    assert str(error) == "source 'clicks', shard 'clicks:x/0': no topic(s) ['x']"
    assert isinstance(error, DataError) and error.source == "clicks"


def test_insight_adds_records_and_bytes_and_sums_lag_over_leases() -> None:
    now = [100.0]
    insight = DataInsight(clock=lambda: now[0])
    stats = insight.source("clicks")
    stats.record(1000, 50_000)
    now[0] = 102.0
    stats.record(1000, 50_000)
    stats.set_lag("clicks:clicks/0", 30, 1.5)
    stats.set_lag("clicks:clicks/1", 12, 4.0)

    snap = insight.snapshot()["clicks"]

    assert (snap.records, snap.bytes, snap.records_per_s) == (2000, 100_000, 1000.0)
    assert (snap.lag_records, snap.lag_s) == (42, 4.0)
    stats.drop_lag("clicks:clicks/1")
    assert insight.snapshot()["clicks"].lag_records == 30


def test_the_public_names_are_exactly_these_and_resolve() -> None:
    assert sorted(tidemill.data.__all__) == sorted(
        [
            "DEFAULT_BATCH_ROWS", "DEFAULT_ROWS_PER_SHARD", "CorruptData", "DataError",
            "DataInsight", "FileRange", "IcebergFile", "IcebergSource", "KafkaEnd",
            "KafkaShardReader", "KafkaSource", "KafkaStart", "Loader", "ParquetSource",
            "PartitionLease", "SchemaChanged", "Shard", "ShardReader", "SourceKind",
            "SourceNotFound", "SourceSnapshot", "SourceSpec", "SourceStats",
            "SourceUnreachable", "UnsupportedData", "ValueFormat", "commit_offsets",
            "loader", "partition_leases", "plan_shards", "read_shard",
        ]
    )  # fmt: skip
    assert all(getattr(tidemill.data, name) is not None for name in tidemill.data.__all__)
