"""Compiled hashing of ids: splitmix64 mixing, virtual shards, batch dedupe and segment sums.

Sharding and the tables' hash index need a mix of the id bits (ids are often dense
ranges or multiples of a power of two, which ``id % n`` would pile onto few buckets);
dedupe uses a hash set instead of ``np.unique``'s sort, so it is linear in the batch
and keeps first-seen order, which makes gradient sums deterministic.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from tidemill.ps._ids import as_ids, as_int

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)


@numba.njit(nogil=True, cache=True)
def mix64_one(value: np.uint64) -> np.uint64:
    """splitmix64 of one value: add the golden gamma, then the finaliser (a bijection)."""
    z = value + _GAMMA
    z = (z ^ (z >> _S30)) * _MUL1
    z = (z ^ (z >> _S27)) * _MUL2
    return z ^ (z >> _S31)


@numba.njit(nogil=True, cache=True)
def _mix64(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    out = np.empty(ids.size, np.uint64)
    for i in range(ids.size):
        out[i] = mix64_one(np.uint64(ids[i]))
    return out


@numba.njit(nogil=True, cache=True)
def _virtual_shard(ids: npt.NDArray[np.int64], shards: np.uint64) -> npt.NDArray[np.int32]:
    out = np.empty(ids.size, np.int32)
    for i in range(ids.size):
        out[i] = np.int32(mix64_one(np.uint64(ids[i])) % shards)
    return out


@numba.njit(nogil=True, cache=True)
def _dedupe(
    ids: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    n = ids.size
    size = 2
    while size < 2 * n:
        size *= 2
    mask = np.uint64(size - 1)
    keys = np.full(size, -1, np.int64)
    positions = np.empty(size, np.int64)
    unique = np.empty(n, np.int64)
    inverse = np.empty(n, np.int64)
    found = 0
    for i in range(n):
        key = ids[i]
        slot = np.int64(mix64_one(np.uint64(key)) & mask)
        while True:
            if keys[slot] == key:
                inverse[i] = positions[slot]
                break
            if keys[slot] == -1:
                keys[slot] = key
                positions[slot] = found
                unique[found] = key
                inverse[i] = found
                found += 1
                break
            slot = (slot + 1) & (size - 1)
    return unique[:found].copy(), inverse


@numba.njit(nogil=True, cache=True)
def _segment_sum(
    values: npt.NDArray[np.float32], inverse: npt.NDArray[np.int64], segments: int
) -> npt.NDArray[np.float32]:
    out = np.zeros((segments, values.shape[1]), np.float32)
    for i in range(values.shape[0]):
        target = out[inverse[i]]
        source = values[i]
        for j in range(values.shape[1]):
            target[j] += source[j]
    return out


def mix64(ids: object) -> npt.NDArray[np.uint64]:
    """splitmix64 of each id (gamma added, then the finaliser): a bijection on 64 bits.

    >>> mix64([0, 1]).tolist()
    [16294208416658607535, 10451216379200822465]
    """
    return _mix64(as_ids(ids))


def virtual_shard(ids: object, virtual_shards: int) -> npt.NDArray[np.int32]:
    """The virtual shard of each id: ``mix64(id) % virtual_shards``, as int32.

    >>> virtual_shard([7, 7, 8], 4).tolist()
    [3, 3, 2]
    """
    shards = as_int(virtual_shards, "virtual_shards", minimum=1)
    if shards > 2**31 - 1:
        raise ValueError(f"virtual_shards: {shards} does not fit int32; expected 1 .. 2**31-1")
    return _virtual_shard(as_ids(ids), np.uint64(shards))


def dedupe(ids: object) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """``(unique, inverse)`` with unique ids in first-seen order and ``unique[inverse] == ids``.

    >>> unique, inverse = dedupe([5, 3, 5, 9])
    >>> unique.tolist(), inverse.tolist()
    ([5, 3, 9], [0, 1, 0, 2])
    """
    return _dedupe(as_ids(ids))


def segment_sum(values: object, inverse: object, segments: int) -> npt.NDArray[np.float32]:
    """float32 ``[segments, d]`` sums of the rows of ``values`` sharing an ``inverse`` index.

    Rows are added in index order, so the result is the same on every run.

    >>> segment_sum([[1.0], [2.0], [4.0]], [0, 1, 0], 2).tolist()
    [[5.0], [2.0]]
    """
    count = as_int(segments, "segments")
    array = np.asarray(values)
    if array.ndim != 2 or array.dtype.kind != "f":
        raise ValueError(
            f"values: expected a 2-D float array [n, d], "
            f"got dtype {array.dtype} shape {array.shape}"
        )
    index = as_ids(inverse, "inverse")
    if index.size != array.shape[0]:
        raise ValueError(
            f"inverse: has {index.size} entries but values has {array.shape[0]} rows; "
            "expected one segment index per row"
        )
    if index.size and int(index.max()) >= count:
        first = int(np.flatnonzero(index >= count)[0])
        raise ValueError(f"inverse[{first}]: {int(index[first])} is not below segments={count}")
    return _segment_sum(np.ascontiguousarray(array, dtype=np.float32), index, count)
