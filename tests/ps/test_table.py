"""ShardTable: collision-free rows, admission, eviction, bad input and memory."""

from __future__ import annotations

import numpy as np
import pytest

from tidemill.ps._config import TableConfig, init_rows
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable

INT64_MAX = 2**63 - 1
SGD_LR_1 = OptimizerConfig("sgd", lr=1.0)


def adversarial_ids() -> np.ndarray:
    """Ids that share low bits (a table using ``id % 2**k`` would pile them up), the two
    extremes, a dense range and a sparse random spread."""
    strided = [2**k for k in range(1, 63)] + [m * 2**40 for m in range(1, 200)]
    dense = list(range(1, 1000))
    sparse = np.random.default_rng(1).integers(0, INT64_MAX, size=2000).tolist()
    ids = np.array([0, INT64_MAX, *strided, *dense, *sparse], dtype=np.int64)
    return np.unique(ids)


def test_every_id_gets_its_own_row_even_ids_that_collide_mod_powers_of_two() -> None:
    config = TableConfig("t", dim=4, optimizer=SGD_LR_1, init_scale=0.5)
    table = ShardTable(config, capacity=8)
    ids = adversarial_ids()
    assert np.array_equal(table.pull(ids, step=0), init_rows(config, ids))
    assert table.rows == ids.size
    marks = -np.repeat(np.arange(ids.size, dtype=np.float32)[:, None], 4, axis=1)
    assert table.push(ids, marks, step=0) == ids.size  # SGD with lr 1 adds the mark
    expected = init_rows(config, ids) - marks
    assert np.array_equal(table.peek(ids), expected)
    assert np.array_equal(table.pull(ids[::-1], step=1), expected[::-1])


def test_rows_start_from_a_pure_function_of_seed_id_and_column() -> None:
    config = TableConfig("t", dim=16, init_scale=0.05, seed=3, ttl_steps=1)
    ids = np.array([9, 2**62, 77], np.int64)
    start = init_rows(config, ids)
    assert start.dtype == np.float32 and start.shape == (3, 16)
    assert np.abs(start).max() <= 0.05 and np.abs(start).min() > 0
    assert len({row.tobytes() for row in start}) == 3
    one = ShardTable(config)
    other = ShardTable(config, capacity=2)
    other.pull(np.arange(500), step=0)
    assert np.array_equal(one.pull(ids, step=0), other.pull(ids, step=0))
    one.push(ids, np.ones((3, 16), np.float32), step=0)
    assert sorted(one.evict(step=5).tolist()) == sorted(ids.tolist())
    assert np.array_equal(one.pull(ids, step=6), start)  # re-created as it first was
    reseeded = TableConfig("t", dim=16, init_scale=0.05, seed=4)
    assert not np.array_equal(init_rows(reseeded, ids), start)


def test_an_id_pulled_under_admit_min_count_times_has_no_row_gets_zeros_and_no_updates() -> None:
    config = TableConfig("t", dim=3, admit_min_count=3)
    table = ShardTable(config)
    for step in range(2):
        assert table.pull([11, 11, 11, 12], step=step).tolist() == [[0.0] * 3] * 4
    assert table.rows == 0
    assert table.push([11], np.ones((1, 3), np.float32), step=2) == 0
    assert table.pull([11], step=2).tolist() == init_rows(config, [11]).tolist()
    assert table.has_rows([11, 12]).tolist() == [True, False]
    assert table.export().counts.tolist() == [3]
    assert table.admitted == 1 and table.pulled_rows == 9


def test_ttl_evicts_rows_neither_pulled_nor_pushed_for_ttl_steps() -> None:
    table = ShardTable(TableConfig("t", dim=2, ttl_steps=10))
    table.pull([1, 2, 3], step=0)
    table.pull([2], step=4)
    table.push([3], np.ones((1, 2), np.float32), step=6)
    assert table.evict(step=9).tolist() == []
    assert table.evict(step=10).tolist() == [1]
    assert table.evict(step=15).tolist() == [2]
    assert table.has_rows([1, 2, 3]).tolist() == [False, False, True]
    assert table.evicted == 2 and table.rows == 1


@pytest.mark.parametrize("push", ["push", "push_summed"])
def test_a_push_of_the_last_pulls_ids_after_an_eviction_moved_rows_updates_the_right_rows(
    push: str,
) -> None:
    table = ShardTable(TableConfig("t", dim=2, optimizer=SGD_LR_1, ttl_steps=2))
    table.pull([1], step=0)
    pulled = table.pull([2, 3], step=5)
    assert table.evict(step=6).tolist() == [1]  # the last row (id 3) moves into id 1's place
    assert getattr(table, push)([2, 3], np.ones((2, 2), np.float32), step=6) == 2
    assert table.peek([2, 3]).tolist() == (pulled - 1).tolist()
    assert table.rows == 2


def test_pulls_stay_within_max_rows_by_evicting_the_least_frequently_pulled_rows() -> None:
    config = TableConfig("t", dim=4, max_rows=128, optimizer=SGD_LR_1)
    table = ShardTable(config, capacity=4)
    hot = np.arange(32)
    for step in range(5):
        table.pull(hot, step=step)
    table.push(hot, np.ones((32, 4), np.float32), step=5)
    rng = np.random.default_rng(2)
    for step in range(6, 60):
        batch = np.concatenate([hot[:4], rng.integers(1000, 10**9, size=40)])
        out = table.pull(batch, step=step)
        assert table.rows <= 128
        assert table.has_rows(batch).all()  # the rows a pull returns are never the ones evicted
        assert np.array_equal(out[4:], init_rows(config, batch[4:]))
    assert table.has_rows(hot).all()
    assert np.array_equal(table.peek(hot), init_rows(config, hot) - 1)
    assert table.evicted > 0


def test_a_pull_larger_than_the_budget_returns_zeros_for_what_does_not_fit() -> None:
    table = ShardTable(TableConfig("t", dim=2, max_rows=10))
    out = table.pull(np.arange(25), step=0)
    assert table.rows == 10
    assert table.has_rows(np.arange(25)).sum() == 10
    assert (out[~table.has_rows(np.arange(25))] == 0).all()


def test_evict_trims_an_oversized_table_to_max_rows_by_pull_count() -> None:
    source = ShardTable(TableConfig("t", dim=2))
    source.pull(np.arange(150), step=0)
    source.pull(np.arange(100), step=1)
    table = ShardTable(TableConfig("t", dim=2, max_rows=100))
    table.load(source.export(), replace=True)
    assert table.rows == 150
    assert sorted(table.evict(step=2).tolist()) == list(range(100, 150))
    assert table.rows == 100


def test_memory_stays_under_twice_the_raw_row_bytes_at_200k_rows() -> None:
    table = ShardTable(TableConfig("t", dim=64, optimizer=OptimizerConfig("adagrad")))
    ids = np.arange(200_000, dtype=np.int64) * 7_919 + 13
    for start in range(0, ids.size, 20_000):
        table.pull(ids[start : start + 20_000], step=0)
    raw = 200_000 * (64 + 64) * 4
    assert table.rows == 200_000
    assert table.memory_bytes <= 2 * raw
    assert table.memory_bytes >= raw


def test_rows_start_on_a_page_boundary_through_growth_and_rollback() -> None:
    """Rows that start mid-cache-line made pull + push 25-35% slower (ps/_aligned.py)."""
    table = ShardTable(TableConfig("t", dim=64, optimizer=OptimizerConfig("adagrad")), capacity=8)
    table.begin(0)
    aligned = []
    for start in range(0, 50_000, 5_000):
        table.pull(np.arange(start, start + 5_000, dtype=np.int64), step=0)
        aligned.append(table._rows.ctypes.data % 4096 == 0)
    table.rollback()
    aligned.append(table._rows.ctypes.data % 4096 == 0)
    assert table.rows == 0
    assert all(aligned), aligned


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: t.pull(np.array([1.0, 2.0]), step=0), "ids: dtype float64 is not an integer"),
        (lambda t: t.pull([4, -2], step=0), r"ids\[1\]: -2 is negative"),
        (lambda t: t.pull([1, 2**63], step=0), r"ids\[1\]: 9223372036854775808 is above 2\*\*63-1"),
        (lambda t: t.pull([1], step=-1), "step: -1 is out of range"),
        (
            lambda t: t.pull([1], step=0, out=np.empty((1, 3))),
            "out: expected a C-contiguous float32",
        ),
        (
            lambda t: t.push([1], np.ones((1, 2)), step=0),
            r"grads: expected a float array of shape \(1, 3\)",
        ),
        (lambda t: t.push([1, 2], np.ones((2, 3), int), step=0), "grads: expected a float array"),
        (
            lambda t: t.push([5, 6, 5], np.ones((3, 3)), step=0),
            r"ids\[2\]: 5 repeats an earlier id",
        ),
        (lambda t: t.set_version(-3), "version: -3 is out of range"),
    ],
)
def test_bad_calls_are_refused_naming_the_argument(call: object, message: str) -> None:
    table = ShardTable(TableConfig("t", dim=3))
    with pytest.raises(ValueError, match=message):
        call(table)  # type: ignore[operator]


def test_int32_and_uint64_ids_address_the_same_rows_as_int64() -> None:
    table = ShardTable(TableConfig("t", dim=2))
    first = table.pull(np.array([3, 4], np.int32), step=0)
    assert np.array_equal(table.pull(np.array([3, 4], np.uint64), step=1), first)
    assert table.rows == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dim": 0}, "dim: 0 is out of range; expected 1"),
        ({"name": ""}, "name: '' is not valid"),
        ({"admit_min_count": 0}, "admit_min_count: 0 is out of range"),
        ({"ttl_steps": 0}, "ttl_steps: 0 is out of range"),
        ({"max_rows": -5}, "max_rows: -5 is out of range"),
        ({"admission_sketch_width": 1000}, "admission_sketch_width: 1000 is not a power of two"),
        ({"init_scale": float("inf")}, "init_scale: inf is not valid"),
        ({"optimizer": "adam"}, "optimizer: expected an OptimizerConfig"),
    ],
)
def test_bad_table_settings_name_the_field(fields: dict[str, object], message: str) -> None:
    settings: dict[str, object] = {"name": "t", "dim": 4, **fields}
    with pytest.raises(ValueError, match=message):
        TableConfig(**settings)  # type: ignore[arg-type]


def test_counters_count_what_happened() -> None:
    table = ShardTable(TableConfig("t", dim=2, ttl_steps=1))
    table.pull([1, 2, 2], step=0)
    table.push([1, 3], np.ones((2, 2), np.float32), step=0)
    table.evict(step=1)
    assert (table.admitted, table.pulled_rows, table.pushed_rows, table.evicted) == (2, 3, 1, 2)
