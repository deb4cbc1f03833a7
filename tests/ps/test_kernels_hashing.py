"""Hashing kernels against plain numpy, and the id checks every table call relies on."""

from __future__ import annotations

import numpy as np
import pytest

from tidemill.ps._hashing import dedupe, mix64, segment_sum, virtual_shard
from tidemill.ps._ids import as_ids

INT64_MAX = 2**63 - 1


def splitmix64_reference(value: int) -> int:
    mask = 2**64 - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_mix64_is_splitmix64_of_each_id_including_the_extremes() -> None:
    ids = [0, 1, 2, 12345, 2**32, 2**62, INT64_MAX]
    assert mix64(ids).tolist() == [splitmix64_reference(i) for i in ids]


def test_virtual_shards_are_mix64_mod_count_and_spread_dense_and_strided_ids() -> None:
    dense = np.arange(100_000, dtype=np.int64)
    strided = dense * 1024
    for ids in (dense, strided):
        shards = virtual_shard(ids, 64)
        assert shards.dtype == np.int32
        assert (shards == (mix64(ids) % np.uint64(64)).astype(np.int32)).all()
        per_shard = np.bincount(shards, minlength=64)
        assert per_shard.min() > 0.9 * per_shard.mean()
        assert per_shard.max() < 1.1 * per_shard.mean()


def test_virtual_shard_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="virtual_shards: 0 is out of range"):
        virtual_shard([1], 0)


def test_dedupe_matches_numpy_unique_in_first_seen_order() -> None:
    rng = np.random.default_rng(3)
    ids = np.minimum(rng.zipf(1.3, size=20_000), 10**6).astype(np.int64) * 7919
    unique, inverse = dedupe(ids)
    first_positions = np.unique(ids, return_index=True)[1]
    assert unique.tolist() == ids[np.sort(first_positions)].tolist()
    assert (unique[inverse] == ids).all()


def test_dedupe_of_nothing_is_nothing() -> None:
    unique, inverse = dedupe(np.empty(0, np.int64))
    assert unique.size == 0 and inverse.size == 0


def test_segment_sum_matches_numpy_add_at() -> None:
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 50, size=3_000)
    values = rng.standard_normal((ids.size, 16)).astype(np.float32)
    unique, inverse = dedupe(ids)
    expected = np.zeros((unique.size, 16), np.float32)
    np.add.at(expected, inverse, values)
    summed = segment_sum(values, inverse, unique.size)
    assert summed.dtype == np.float32
    assert np.array_equal(summed, expected)


def test_segment_sum_refuses_an_inverse_past_the_segments() -> None:
    with pytest.raises(ValueError, match=r"inverse\[1\]: 5 is not below segments=2"):
        segment_sum(np.ones((2, 3), np.float32), [0, 5], 2)


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64]
)
def test_any_integer_dtype_that_fits_is_accepted(dtype: type[np.generic]) -> None:
    assert as_ids(np.array([0, 5, 100], dtype=dtype)).tolist() == [0, 5, 100]


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (np.array([1.0, 2.0]), "dtype float64 is not an integer dtype"),
        (np.array([True, False]), "dtype bool is not an integer dtype"),
        (np.array([3, -4, -5], np.int32), r"ids\[1\]: -4 is negative"),
        (np.array([1, 2**63], np.uint64), r"ids\[1\]: 9223372036854775808 is above 2\*\*63-1"),
        ([0, 1, 2**63], r"ids\[2\]: 9223372036854775808 is above"),
        ([0, 5, 2**64], r"ids\[2\]: 18446744073709551616 is above"),
        ([0, -1, 2**64], r"ids\[1\]: -1 is negative"),
        ([0, "7"], r"ids\[1\]: '7' is not an integer"),
        ([0, 1.5], r"ids\[1\]: 1.5 is not an integer"),
        ([[1, 2]], "expected a 1-D sequence of ids"),
    ],
)
def test_bad_ids_are_refused_naming_the_first_bad_index(ids: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        as_ids(ids)
