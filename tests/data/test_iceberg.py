"""Iceberg on a SQL catalog (SQLite) with a local warehouse: planning, filters, snapshots."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.table import Table
from pyiceberg.types import StringType

from tests.data.conftest import open_catalog
from tidemill.data import (
    Shard,
    SourceNotFound,
    SourceSpec,
    SourceUnreachable,
    plan_shards,
    read_shard,
)

SCHEMA = pa.schema(
    [("id", pa.int64()), ("day", pa.int32()), ("score", pa.float64()), ("user", pa.string())]
)


def rows(first: int, count: int, day_of: int) -> pa.Table:
    ids = list(range(first, first + count))
    return pa.table(
        {
            "id": ids,
            "day": pa.array([day_of] * count, pa.int32()),
            "score": [i * 0.5 for i in ids],
            "user": [f"u{i % 3}" for i in ids],
        },
        schema=SCHEMA,
    )


@pytest.fixture
def table(catalog_props: dict[str, str]) -> Table:
    """ads.clicks, written in row groups of 100 by two appends: ids 0-499 on day 1,
    then ids 500-799 on day 2 (one data file each, so two snapshots)."""
    catalog = open_catalog(catalog_props)
    catalog.create_namespace("ads")
    created = catalog.create_table(
        "ads.clicks", schema=SCHEMA, properties={"write.parquet.row-group-limit": "100"}
    )
    created.append(rows(0, 500, day_of=1))
    time.sleep(0.01)  # the two snapshots get distinct commit times
    created.append(rows(500, 300, day_of=2))
    return created


def source(props: dict[str, str], **fields: object) -> SourceSpec:
    return SourceSpec.model_validate(
        {"name": "backfill", "iceberg": {"catalog": props, "table": "ads.clicks", **fields}}
    )


def read_ids(shards: list[Shard], **options: object) -> list[int]:
    return [
        i
        for shard in shards
        for batch in read_shard(shard, **options)  # type: ignore[arg-type]
        for i in batch.column("id").to_pylist()
    ]


def test_each_data_file_is_split_by_row_group(table: Table, catalog_props: dict[str, str]) -> None:
    shards = plan_shards(source(catalog_props), rows_per_shard=200)

    by_file: dict[str, list[tuple[int, int, int]]] = {}
    for shard in shards:
        assert shard.file is not None and shard.iceberg is not None
        by_file.setdefault(shard.file.path, []).append(
            (shard.file.row_group_start, shard.file.row_group_stop, shard.file.num_rows)
        )
    assert sorted(by_file.values()) == [
        [(0, 2, 200), (2, 3, 100)],
        [(0, 2, 200), (2, 4, 200), (4, 5, 100)],
    ]
    assert all(s.iceberg.snapshot_id == table.current_snapshot().snapshot_id for s in shards)  # type: ignore[union-attr]
    assert sorted(read_ids(shards)) == list(range(800))
    first = next(read_shard(shards[0]))
    assert first.schema.names == ["id", "day", "score", "user"]
    assert first.column("user").to_pylist()[:3] == [
        f"u{i % 3}" for i in first.column("id")[:3].to_pylist()
    ]


def test_shards_travel_as_json_and_read_without_the_catalog(
    table: Table, catalog_props: dict[str, str], tmp_path: Path
) -> None:
    shards = [Shard.from_json(s.to_json()) for s in plan_shards(source(catalog_props))]
    (tmp_path / "catalog.db").unlink()  # workers read from storage, never from the catalog

    assert sorted(read_ids(shards)) == list(range(800))


def test_the_row_filter_prunes_files_and_drops_rows(
    table: Table, catalog_props: dict[str, str]
) -> None:
    day_two = plan_shards(source(catalog_props, filter="day = 2"))
    some = plan_shards(source(catalog_props, filter="day = 2 and id >= 650", columns=["id"]))

    assert {s.file.path for s in day_two if s.file} == {
        task.file.file_path for task in table.scan(row_filter="day = 2").plan_files()
    }
    assert sorted(read_ids(day_two)) == list(range(500, 800))
    assert sorted(read_ids(some)) == list(range(650, 800))
    assert next(read_shard(some[0])).schema.names == ["id"]  # the filter column is not returned


def test_a_filtered_shard_resumes_exactly_after_the_committed_record(
    table: Table, catalog_props: dict[str, str]
) -> None:
    [shard] = plan_shards(
        source(catalog_props, filter="id >= 550 and id < 720"), rows_per_shard=10**6
    )
    with read_shard(shard, batch_rows=40) as reader:
        first = next(reader).column("id").to_pylist() + next(reader).column("id").to_pylist()
        committed = reader.position
    rest = read_ids([shard], start_at=committed, batch_rows=40)

    assert committed == len(first)
    assert first + rest == list(range(550, 720))


def test_a_snapshot_id_or_an_as_of_time_reads_the_table_as_it_was(
    table: Table, catalog_props: dict[str, str]
) -> None:
    first, second = table.history()
    between = datetime.fromtimestamp((first.timestamp_ms + 1) / 1000, tz=UTC)
    assert second.timestamp_ms > first.timestamp_ms + 1

    by_id = plan_shards(source(catalog_props, snapshotId=first.snapshot_id))
    as_of = plan_shards(source(catalog_props, asOf=between.isoformat()))

    assert sorted(read_ids(by_id)) == sorted(read_ids(as_of)) == list(range(500))
    with pytest.raises(SourceNotFound, match="has no snapshot 42; latest snapshots"):
        plan_shards(source(catalog_props, snapshotId=42))
    with pytest.raises(SourceNotFound, match="had no snapshot at or before 2001-01-01"):
        plan_shards(source(catalog_props, asOf="2001-01-01T00:00:00Z"))


def test_renamed_and_added_columns_are_matched_by_field_id(
    table: Table, catalog_props: dict[str, str]
) -> None:
    with table.update_schema() as update:
        update.rename_column("score", "ctr")
        update.add_column("country", StringType())

    shards = plan_shards(source(catalog_props, columns=["id", "ctr", "country"]))
    batches = [b for shard in shards for b in read_shard(shard)]

    first = min((b for b in batches), key=lambda b: b.column("id")[0].as_py())
    assert first.schema.names == ["id", "ctr", "country"]
    assert first.column("ctr").to_pylist()[:3] == [0.0, 0.5, 1.0]
    assert first.column("country").null_count == first.num_rows


def test_a_missing_table_or_namespace_is_named_with_what_exists(
    table: Table, catalog_props: dict[str, str]
) -> None:
    with pytest.raises(
        SourceNotFound, match=r"no table 'ads.views' .*tables in 'ads': \['ads.clicks'\]"
    ):
        plan_shards(
            SourceSpec.model_validate({"iceberg": {"catalog": catalog_props, "table": "ads.views"}})
        )
    with pytest.raises(SourceNotFound, match="namespace 'web' does not exist"):
        plan_shards(
            SourceSpec.model_validate({"iceberg": {"catalog": catalog_props, "table": "web.x"}})
        )


def test_an_unreachable_catalog_fails_within_its_timeout(tmp_path: Path) -> None:
    unreachable = {"uri": f"sqlite:///{tmp_path}/no/such/dir/catalog.db", "warehouse": "file:///x"}
    rest = {"uri": "http://127.0.0.1:9/catalog", "type": "rest"}

    started = time.monotonic()
    with pytest.raises(SourceUnreachable, match="cannot open catalog at sqlite:///"):
        plan_shards(source(unreachable, timeoutS=5))
    with pytest.raises(SourceUnreachable, match=r"catalog at http://127\.0\.0\.1:9/catalog"):
        plan_shards(source(rest, timeoutS=5))
    assert time.monotonic() - started < 10


def test_an_empty_table_has_no_shards(catalog_props: dict[str, str]) -> None:
    catalog = open_catalog(catalog_props)
    catalog.create_namespace("ads")
    catalog.create_table("ads.clicks", schema=SCHEMA)

    assert plan_shards(source(catalog_props)) == []
