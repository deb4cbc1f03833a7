"""Versions, full and delta exports, load, and rollback to the last begin, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from tidemill.ps._config import TableConfig
from tidemill.ps._export import TableExport
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable

FIELDS = ("ids", "weights", "state", "counts", "updates", "last_steps", "versions")
CONFIG = TableConfig(
    "clicks",
    dim=8,
    optimizer=OptimizerConfig("adam", lr=0.01),
    admit_min_count=2,
    ttl_steps=8,
    max_rows=300,
    admission_sketch_width=1 << 10,
)


def assert_identical(left: TableExport, right: TableExport) -> None:
    """Every array equal in dtype, shape and bits (NaN-safe through the bytes)."""
    fields = (*FIELDS, "admission_sketch", "tombstones", "tombstone_versions")
    for field in fields:
        a, b = getattr(left, field), getattr(right, field)
        assert a.dtype == b.dtype and a.shape == b.shape, field
        assert a.tobytes() == b.tobytes(), field
    assert left.version == right.version


def train(table: ShardTable, steps: range, seed: int, lowest_id: int = 0) -> None:
    """Pulls (repeats, new ids, ids seen once), pushes and evictions (TTL and LFU)."""
    rng = np.random.default_rng(seed)
    for step in steps:
        common = rng.integers(lowest_id, 200, 60)
        batch = np.concatenate([common, rng.integers(10**6, 10**6 + 400, 30)])
        pulled = table.pull(batch, step=step)
        ids = np.unique(batch)
        ids = ids[table.has_rows(ids)]
        grads = np.sin(ids[:, None] + np.arange(8) + step).astype(np.float32) + pulled[:1]
        table.push(ids, grads, step=step)
        if step % 3 == 2:
            table.evict(step=step)


def test_a_full_export_then_a_delta_rebuild_the_table_bit_for_bit() -> None:
    source = ShardTable(CONFIG, capacity=8)
    source.set_version(1)
    train(source, range(0, 12), seed=1)
    full = source.export()
    replica = ShardTable(CONFIG)
    replica.load(full, replace=True)
    assert_identical(replica.export(), full)

    source.set_version(2)
    train(source, range(12, 17), seed=2, lowest_id=100)  # ids below 100 rest
    delta = source.export(since_version=1)
    assert 0 < delta.rows < source.rows
    assert delta.tombstones.size > 0
    assert (delta.versions == 2).all() and (delta.tombstone_versions == 2).all()
    replica.load(delta, replace=False)
    assert_identical(replica.export(), source.export())
    # and it keeps training the same way
    train(source, range(24, 30), seed=3)
    train(replica, range(24, 30), seed=3)
    assert_identical(replica.export(), source.export())


def test_an_export_is_a_copy_that_later_training_does_not_change() -> None:
    table = ShardTable(CONFIG)
    train(table, range(0, 6), seed=4)
    exported = table.export()
    saved = {field: getattr(exported, field).copy() for field in FIELDS}
    train(table, range(6, 12), seed=5)
    for field in FIELDS:
        assert np.array_equal(getattr(exported, field), saved[field]), field


def test_a_delta_since_the_current_version_is_empty() -> None:
    table = ShardTable(CONFIG)
    table.set_version(3)
    train(table, range(0, 6), seed=6)
    delta = table.export(since_version=3)
    assert delta.rows == 0 and delta.tombstones.size == 0
    with pytest.raises(ValueError, match="version: 2 is below the current 3"):
        table.set_version(2)


def test_load_refuses_an_export_of_another_shape() -> None:
    table = ShardTable(CONFIG)
    other = ShardTable(TableConfig("clicks", dim=8, optimizer=OptimizerConfig("sgd")))
    other.pull([1, 2], step=0)
    with pytest.raises(ValueError, match=r"export.state: shape \(2, 0\), expected \(2, 16\)"):
        table.load(other.export(), replace=True)


def test_rollback_restores_rows_state_metadata_admission_and_tombstones_exactly() -> None:
    table = ShardTable(CONFIG, capacity=8)
    twin = ShardTable(CONFIG, capacity=8)
    for each in (table, twin):
        train(each, range(0, 10), seed=7)
        each.begin(5)
    committed = table.export()

    train(table, range(10, 25), seed=8)  # updates, creates, TTL and LFU evictions
    assert table.evicted > twin.evicted and table.admitted > twin.admitted
    table.rollback()
    assert_identical(table.export(), committed)

    # admission counts came back too: both tables now admit and train identically
    for each in (table, twin):
        train(each, range(10, 20), seed=9)
    assert_identical(table.export(), twin.export())


def test_rollback_can_repeat_and_a_new_begin_moves_the_restore_point() -> None:
    table = ShardTable(CONFIG)
    train(table, range(0, 5), seed=10)
    table.begin(1)
    first = table.export()
    for attempt in range(2):
        train(table, range(5, 9), seed=11 + attempt)
        table.rollback()
        assert_identical(table.export(), first)
    train(table, range(5, 9), seed=13)
    table.begin(2)
    second = table.export()
    train(table, range(9, 12), seed=14)
    table.rollback()
    assert_identical(table.export(), second)


def test_rollback_without_begin_says_to_call_begin() -> None:
    with pytest.raises(RuntimeError, match=r"call begin\(version\) at each commit"):
        ShardTable(CONFIG).rollback()


def test_load_ends_the_undo_epoch() -> None:
    table = ShardTable(CONFIG)
    table.begin(1)
    table.pull([1, 2], step=0)
    table.load(table.export(), replace=False)
    with pytest.raises(RuntimeError, match=r"\(load ends the epoch\)"):
        table.rollback()
