"""Shuffling: per-epoch shard order and the in-worker buffer are seeded and repeatable."""

from __future__ import annotations

import pyarrow as pa
import pytest

from tidemill.data import FileRange, Shard, ShuffleBuffer, SourceKind, shuffle_shards, shuffled


def shards(count: int) -> list[Shard]:
    return [
        Shard(
            id=f"clicks:part-{i:03d}.parquet#rg0-1",
            source="clicks",
            kind=SourceKind.PARQUET,
            file=FileRange(f"part-{i:03d}.parquet", 0, 1, 100),
        )
        for i in range(count)
    ]


def batches(count: int, rows: int) -> list[pa.RecordBatch]:
    return [pa.record_batch({"id": list(range(b * rows, (b + 1) * rows))}) for b in range(count)]


def ids(out: list[pa.RecordBatch]) -> list[int]:
    return [i for b in out for i in b.column("id").to_pylist()]


def test_the_same_seed_and_epoch_give_the_same_order_whatever_the_input_order() -> None:
    planned = shards(50)

    once = shuffle_shards(planned, seed=7, epoch=3)
    again = shuffle_shards(list(reversed(planned)), seed=7, epoch=3)

    assert [s.id for s in once] == [s.id for s in again]
    assert sorted(s.id for s in once) == [s.id for s in planned]
    assert [s.id for s in once] != [s.id for s in planned]


def test_each_epoch_and_each_seed_has_its_own_order() -> None:
    planned = shards(50)
    orders = {
        tuple(s.id for s in shuffle_shards(planned, seed=seed, epoch=epoch))
        for seed, epoch in [(7, 0), (7, 1), (7, 2), (8, 0)]
    }

    assert len(orders) == 4


def test_the_buffer_hands_out_every_record_once_in_a_seeded_order() -> None:
    first = ids(list(shuffled(batches(20, 50), capacity_rows=300, seed=11, batch_rows=64)))
    second = ids(list(shuffled(batches(20, 50), capacity_rows=300, seed=11, batch_rows=64)))
    other = ids(list(shuffled(batches(20, 50), capacity_rows=300, seed=12, batch_rows=64)))

    assert first == second != other
    assert sorted(first) == list(range(1000))
    assert first[:50] != list(range(50))


def test_the_buffer_holds_at_most_its_capacity_plus_one_batch() -> None:
    buffer = ShuffleBuffer(capacity_rows=300, seed=1)
    largest = 0
    for batch in batches(20, 50):
        buffer.push(batch)
        largest = max(largest, len(buffer))
        while buffer.full:
            buffer.pop(64)

    assert largest <= 300 + 50
    assert 0 < len(buffer) < 300


def test_a_restored_buffer_continues_exactly_as_the_original() -> None:
    data = batches(20, 50)
    original = ShuffleBuffer(capacity_rows=200, seed=5)
    for batch in data[:8]:
        original.push(batch)
        while original.full:
            original.pop(32)
    restored = ShuffleBuffer.restore(original.state(), capacity_rows=200)

    def finish(buffer: ShuffleBuffer) -> list[int]:
        out = []
        for batch in data[8:]:
            buffer.push(batch)
            while buffer.full:
                out.append(buffer.pop(32))
        return ids(out + list(buffer.drain(32)))

    assert len(restored) == len(original)
    assert finish(restored) == finish(original)


def test_batches_of_another_schema_are_refused() -> None:
    buffer = ShuffleBuffer(capacity_rows=10, seed=0)
    buffer.push(pa.record_batch({"id": [1, 2]}))

    with pytest.raises(ValueError, match="differs from the buffer's"):
        buffer.push(pa.record_batch({"user": ["a"]}))
