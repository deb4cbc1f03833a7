"""The undo log: rollback after rows were created and old rows changed restores the cut
bit for bit, created rows cost an id each, and a cut gives back the room the epoch
before it did not need."""

from __future__ import annotations

import numpy as np

from tidemill.ps._config import TableConfig
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable
from tidemill.ps._undo import KEEP_MIN

from .test_table_versions import assert_identical

ROWS = 20_000
CONFIG = TableConfig("clicks", dim=16, optimizer=OptimizerConfig("adagrad", lr=0.1))
ROW_BYTES = 4 * (16 + 16)
SAVED_ENTRY_BYTES = ROW_BYTES + 3 * 8 + 3 * 4  # the row, its id/step/version, its tallies


def fill(table: ShardTable, ids: np.ndarray, step: int = 0) -> None:
    for start in range(0, ids.size, 4096):
        table.pull(ids[start : start + 4096], step=step)


def grads_for(ids: np.ndarray, step: int) -> np.ndarray:
    return np.cos(ids[:, None] * 0.001 + np.arange(16) + step).astype(np.float32)


def test_rollback_after_creating_rows_then_updating_old_ones_restores_the_cut_exactly() -> None:
    config = TableConfig(
        "clicks",
        dim=4,
        optimizer=OptimizerConfig("adam", lr=0.05),
        admit_min_count=2,
        ttl_steps=6,
        admission_sketch_width=1 << 12,
    )
    table = ShardTable(config, capacity=4)
    old = np.arange(0, 300, dtype=np.int64)
    for step in range(2):  # admitted on the second pull
        table.pull(old, step=step)
    table.push(old, np.ones((old.size, 4), np.float32), step=1)
    table.begin(2)
    committed = table.export()

    new = np.arange(1000, 1400, dtype=np.int64)
    for step in (3, 4):  # new rows: counted, then created
        table.pull(new, step=step)
    assert table.rows == 700
    # then old rows change: updated, evicted (TTL), one evicted row created again
    table.push(old[:200], np.full((200, 4), -2.0, np.float32), step=5)
    table.push(new, np.full((new.size, 4), 3.0, np.float32), step=5)
    assert table.evict(step=8).tolist() == old[200:].tolist()
    for step in (9, 10):
        table.pull(old[250:260], step=step)
    assert table.has_rows(old[250:260]).all()
    assert table.export().ids.size == 610

    table.rollback()
    assert_identical(table.export(), committed)  # the admission sketch included


def test_created_rows_cost_the_log_an_id_each_and_a_cut_after_a_small_epoch_frees_them() -> None:
    ids = np.arange(ROWS, dtype=np.int64) * 7_919 + 13
    plain = ShardTable(CONFIG)  # no epoch: nothing is logged
    fill(plain, ids)
    table = ShardTable(CONFIG)
    table.begin(0)
    fill(table, ids)
    assert table.rows == plain.rows == ROWS
    logged = table.memory_bytes - plain.memory_bytes
    assert 8 * ROWS <= logged <= 16 * ROWS  # ids with 1.5x room, not copies of rows

    table.begin(1)  # the next epoch may be as large: the room stays
    assert table.memory_bytes - plain.memory_bytes == logged
    table.push(ids[:100], grads_for(ids[:100], 1), step=1)
    table.begin(2)  # it was not: the ids' room goes, the 100 saved rows' room stays
    assert table.memory_bytes - plain.memory_bytes == 100 * SAVED_ENTRY_BYTES


def test_a_cut_releases_the_room_of_a_large_epoch_once_a_smaller_one_follows() -> None:
    ids = np.arange(ROWS, dtype=np.int64) * 7_919 + 13
    table = ShardTable(CONFIG)
    fill(table, ids)
    table.begin(1)
    base = table.memory_bytes

    for step in range(1, 4):  # every row changed, three times: saved once
        table.push(ids, grads_for(ids, step), step=step)
    saved = table.memory_bytes - base
    assert ROWS * SAVED_ENTRY_BYTES <= saved <= ROWS * SAVED_ENTRY_BYTES + 4096
    table.begin(4)
    assert table.memory_bytes - base == saved  # reused by an epoch of the same size
    table.push(ids, grads_for(ids, 4), step=4)
    table.begin(5)
    assert table.memory_bytes - base == saved

    few = ids[: 2 * KEEP_MIN]
    table.push(few, grads_for(few, 5), step=5)
    table.begin(6)  # room for the 2,048 rows this epoch saved, no more
    assert table.memory_bytes - base == few.size * SAVED_ENTRY_BYTES
    table.begin(7)  # an empty epoch: small room may stay, so small tables do not churn
    assert table.memory_bytes - base == few.size * SAVED_ENTRY_BYTES

    # a rollback keeps the room (the steps are about to run again) and restores the cut
    cut = table.export()
    table.push(ids, grads_for(ids, 7), step=7)
    table.rollback()
    assert_identical(table.export(), cut)
    table.push(ids[:10], grads_for(ids[:10], 7), step=7)
    table.begin(8)
    assert table.memory_bytes - base == 10 * SAVED_ENTRY_BYTES
