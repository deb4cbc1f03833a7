"""The collision-free hash index of a table: id -> row, open addressing with linear probing.

Every id keeps its own entry (the full id is stored and compared, never ``id % size``),
so two ids can never share a row. Entries are ``[id, row]`` pairs in one int64 array
(``-1`` marks an empty entry) so that a probe reads one cache line. Deletion shifts the
following entries of the run back (Knuth's Algorithm R), so no tombstones pile up and
probe chains stay short. The size is a power of two; the table keeps the load at or
below 3/4 by rehashing into a twice larger index.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from tidemill.ps._hashing import mix64_one
from tidemill.ps._prefetch import AHEAD, prefetch

EMPTY = -1
MAX_LOAD = 0.75
KEY, ROW = 0, 1


def index_size_for(rows: int) -> int:
    """The smallest power-of-two index size holding ``rows`` entries at load <= 3/4."""
    size = 8
    while rows > MAX_LOAD * size:
        size *= 2
    return size


def new_index(size: int) -> npt.NDArray[np.int64]:
    """An empty index of ``size`` (a power of two) entries."""
    return np.full((size, 2), EMPTY, np.int64)


@numba.njit(nogil=True, cache=True)
def home_of(key: np.int64, size: int) -> int:
    """The entry where the probe for ``key`` starts."""
    return int(np.int64(mix64_one(np.uint64(key)) & np.uint64(size - 1)))


@numba.njit(nogil=True, cache=True)
def find(index: npt.NDArray[np.int64], key: np.int64) -> int:
    """The entry holding ``key``, or -1."""
    size = index.shape[0]
    entry = home_of(key, size)
    while True:
        stored = index[entry, KEY]
        if stored == key:
            return entry
        if stored == EMPTY:
            return -1
        entry = (entry + 1) & (size - 1)


@numba.njit(nogil=True, cache=True)
def row_of(index: npt.NDArray[np.int64], key: np.int64) -> int:
    """The row of ``key``, or -1 when it has none."""
    entry = find(index, key)
    return -1 if entry < 0 else index[entry, ROW]


@numba.njit(nogil=True, cache=True)
def insert(index: npt.NDArray[np.int64], key: np.int64, row: int) -> None:
    """Add ``key -> row``; the key must be absent and the index below full load."""
    size = index.shape[0]
    entry = home_of(key, size)
    while index[entry, KEY] != EMPTY:
        entry = (entry + 1) & (size - 1)
    index[entry, KEY] = key
    index[entry, ROW] = row


@numba.njit(nogil=True, cache=True)
def remove(index: npt.NDArray[np.int64], entry: int) -> None:
    """Empty ``entry`` and shift later entries of its run back so every probe still ends."""
    size = index.shape[0]
    mask = size - 1
    hole = entry
    probe = entry
    while True:
        probe = (probe + 1) & mask
        key = index[probe, KEY]
        if key == EMPTY:
            break
        home = home_of(key, size)
        # the entry may move into the hole unless its home lies cyclically in (hole, probe]
        stays = hole < home <= probe if hole <= probe else home > hole or home <= probe
        if not stays:
            index[hole, KEY] = key
            index[hole, ROW] = index[probe, ROW]
            hole = probe
    index[hole, KEY] = EMPTY
    index[hole, ROW] = EMPTY


@numba.njit(nogil=True, cache=True)
def rebuild(index: npt.NDArray[np.int64], ids: npt.NDArray[np.int64]) -> None:
    """Fill an empty ``index`` with ``ids[row] -> row`` for every row."""
    for row in range(ids.size):
        insert(index, ids[row], row)


@numba.njit(nogil=True, cache=True)
def rows_of(index: npt.NDArray[np.int64], ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The row of each id, -1 where it has none; the entry of the id ``AHEAD`` places
    later is asked for first (see ``_prefetch``)."""
    out = np.empty(ids.size, np.int64)
    size = index.shape[0]
    for i in range(ids.size):
        if i + AHEAD < ids.size:
            prefetch(index, home_of(ids[i + AHEAD], size), KEY)
        out[i] = row_of(index, ids[i])
    return out
