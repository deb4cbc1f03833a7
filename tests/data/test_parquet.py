"""Parquet: planning by row groups, exact resume from a position, discovery, bad files."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tidemill.data import (
    CorruptData,
    DataInsight,
    SourceNotFound,
    SourceSpec,
    plan_shards,
    read_shard,
)


def write(path: Path, first_id: int, rows: int, row_group_rows: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = list(range(first_id, first_id + rows))
    table = pa.table({"id": ids, "label": [i % 2 for i in ids], "text": [f"r{i}" for i in ids]})
    pq.write_table(table, path, row_group_size=row_group_rows, compression="zstd")


def spec(path: str | Path, **fields: object) -> SourceSpec:
    return SourceSpec.model_validate({"name": "clicks", "parquet": {"path": str(path), **fields}})


def ids_of(batches: list[pa.RecordBatch]) -> list[int]:
    return [i for batch in batches for i in batch.column("id").to_pylist()]


@pytest.fixture
def clicks(tmp_path: Path) -> Path:
    """Two files of 1000 rows in row groups of 100: ids 0-999 and 1000-1999."""
    write(tmp_path / "clicks" / "a.parquet", 0, 1000)
    write(tmp_path / "clicks" / "b.parquet", 1000, 1000)
    return tmp_path / "clicks"


def test_shards_are_whole_row_groups_packed_up_to_the_row_target(clicks: Path) -> None:
    shards = plan_shards(spec(clicks), rows_per_shard=250)

    assert [(s.file.row_group_start, s.file.row_group_stop) for s in shards if s.file] == [
        (0, 2), (2, 4), (4, 6), (6, 8), (8, 10)
    ] * 2  # fmt: skip
    assert {s.num_rows for s in shards} == {200}
    assert len({s.id for s in shards}) == len(shards)
    every_id = ids_of([b for shard in shards for b in read_shard(shard)])
    assert sorted(every_id) == list(range(2000))


def test_a_row_group_larger_than_the_target_is_a_shard_of_its_own(tmp_path: Path) -> None:
    write(tmp_path / "big.parquet", 0, 1000, row_group_rows=400)

    shards = plan_shards(spec(tmp_path / "big.parquet"), rows_per_shard=100)

    assert [s.num_rows for s in shards] == [400, 400, 200]


def test_reading_resumes_exactly_after_the_last_committed_record(clicks: Path) -> None:
    [shard, *_] = plan_shards(spec(clicks), rows_per_shard=1000)
    full = ids_of(list(read_shard(shard)))

    reader = read_shard(shard, batch_rows=30)
    taken = [next(reader) for _ in range(5)]  # batches end at row groups: 30+30+30+10+30
    committed = reader.position
    reader.close()
    rest = list(read_shard(shard, start_at=committed, batch_rows=30))

    assert committed == sum(b.num_rows for b in taken) == 130
    assert ids_of(taken) + ids_of(rest) == full == list(range(1000))


def test_a_position_at_the_end_reads_nothing_and_one_past_it_is_refused(clicks: Path) -> None:
    [shard, *_] = plan_shards(spec(clicks), rows_per_shard=1000)

    assert list(read_shard(shard, start_at=1000)) == []
    with pytest.raises(ValueError, match="start_at=1001 is outside shard"):
        read_shard(shard, start_at=1001)


def test_columns_are_projected_and_a_missing_column_is_named(clicks: Path) -> None:
    [shard, *_] = plan_shards(spec(clicks, columns=["label", "id"]))

    batch = next(read_shard(shard))
    assert batch.schema.names == ["label", "id"]
    with pytest.raises(SourceNotFound, match=r"no column\(s\) \['nope'\] in .*a.parquet"):
        plan_shards(spec(clicks, columns=["id", "nope"]))


def test_a_directory_is_searched_recursively_skipping_markers_and_hidden_files(
    tmp_path: Path,
) -> None:
    write(tmp_path / "d" / "day=1" / "part-0.parquet", 0, 100)
    write(tmp_path / "d" / "day=2" / "part-0.parquet", 100, 100)
    write(tmp_path / "d" / "_temporary" / "part-9.parquet", 900, 100)
    write(tmp_path / "d" / ".part-0.parquet", 800, 100)
    (tmp_path / "d" / "_SUCCESS").write_text("")

    shards = plan_shards(spec(tmp_path / "d"))

    assert [Path(s.file.path).parent.name for s in shards if s.file] == ["day=1", "day=2"]


def test_a_glob_matches_files_and_an_empty_glob_or_missing_path_is_an_error(
    tmp_path: Path,
) -> None:
    for day in (1, 2, 3):
        write(tmp_path / f"clicks-{day}.parquet", day * 100, 100)
    write(tmp_path / "views-1.parquet", 0, 100)

    shards = plan_shards(spec(tmp_path / "clicks-*.parquet"))

    assert [Path(s.file.path).name for s in shards if s.file] == [
        "clicks-1.parquet", "clicks-2.parquet", "clicks-3.parquet"
    ]  # fmt: skip
    with pytest.raises(SourceNotFound, match="matched no Parquet files"):
        plan_shards(spec(tmp_path / "orders-*.parquet"))
    with pytest.raises(SourceNotFound, match="source 'clicks': no file or directory at"):
        plan_shards(spec(tmp_path / "nowhere"))


def test_fsspec_urls_are_planned_and_read_through_fsspec() -> None:
    fs = fsspec.filesystem("memory")
    table = pa.table({"id": list(range(300))})
    with fs.open("/bucket/clicks/part-0.parquet", "wb") as out:
        pq.write_table(table, out, row_group_size=100)

    shards = plan_shards(spec("memory://bucket/clicks/*.parquet"))

    assert [s.file.path for s in shards if s.file] == ["memory:///bucket/clicks/part-0.parquet"]
    assert ids_of(list(read_shard(shards[0], start_at=120))) == list(range(120, 300))
    fs.rm("/bucket", recursive=True)


def test_a_damaged_row_group_is_named_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "damaged.parquet"
    write(path, 0, 300)
    chunk = pq.read_metadata(path).row_group(1).column(2)  # the 'text' column of group 1
    data = bytearray(path.read_bytes())
    start = chunk.data_page_offset
    data[start : start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    [shard] = plan_shards(spec(path))

    with read_shard(shard, batch_rows=100) as reader:
        assert ids_of([next(reader)]) == list(range(100))  # row group 0 is intact
        with pytest.raises(CorruptData) as caught:
            next(reader)

    assert f"row group 1 of {path}" in str(caught.value)
    assert caught.value.source == "clicks" and caught.value.shard == shard.id


def test_a_truncated_file_is_refused_at_planning_naming_the_file(clicks: Path) -> None:
    broken = clicks / "c.parquet"
    broken.write_bytes((clicks / "a.parquet").read_bytes()[:500])

    with pytest.raises(CorruptData, match=r"c\.parquet is not a readable Parquet file"):
        plan_shards(spec(clicks))


def test_records_and_bytes_are_counted_per_source(clicks: Path) -> None:
    insight = DataInsight()
    for shard in plan_shards(spec(clicks)):
        for _ in read_shard(shard, stats=insight.source("clicks")):
            pass

    counters = insight.snapshot()["clicks"]
    assert counters.records == 2000
    assert counters.bytes > 2000 * 8
    assert counters.records_per_s > 0
    assert counters.lag_records is None
