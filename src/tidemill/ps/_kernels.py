"""Compiled kernels of a table: touch/admit, create, gather, push, evict, load and rollback.

A table's storage is a tuple ``store = (rows, meta, tally)``:

- ``rows``  float32 ``[capacity, dim + state_width]``: weights then optimizer state;
- ``meta``  int64 ``[capacity, 3]``: id, last step pulled or pushed, version;
- ``tally`` uint32 ``[capacity, 3]``: pull count, update count (Adam's step), undo mark.

Rows ``0 .. n-1`` are live; a deleted row is replaced by the last one, so live rows stay
dense and a full scan is a slice. The undo log (see ``_undo``) has two parts: ``saved``,
a store of the rows that existed at the cut as they were before their first change in
the epoch (``saved_n`` of them), and ``created``, the ids of rows created since the cut
(``created_n``). The caller reserves room in every array before a call: kernels never
allocate table storage.
"""

from __future__ import annotations

import numba
import numpy as np
import numpy.typing as npt

from tidemill.ps._hashing import mix64_one
from tidemill.ps._index import ROW, find, insert, remove, row_of, rows_of
from tidemill.ps._optimizers import apply_updates
from tidemill.ps._prefetch import AHEAD, prefetch, prefetch_row

ID, LAST_STEP, VERSION = range(3)
COUNT, UPDATES, MARK = range(3)
COUNT_MAX = 2**32 - 1
_SKETCH_GAMMA = np.uint64(0xD6E8FEB86659FD93)
_MANTISSA_SHIFT = np.uint64(11)

Rows = npt.NDArray[np.float32]
Meta = npt.NDArray[np.int64]
Tally = npt.NDArray[np.uint32]
Store = tuple[Rows, Meta, Tally]
Index = npt.NDArray[np.int64]
Ids = npt.NDArray[np.int64]


@numba.njit(nogil=True, cache=True)
def init_row(out: Rows, seed: np.uint64, scale: float, key: np.int64) -> None:
    """Uniform values in [-scale, scale) that depend only on (seed, id, column)."""
    base = mix64_one(mix64_one(seed) ^ np.uint64(key))
    for column in range(out.size):
        bits = mix64_one(base + np.uint64(column)) >> _MANTISSA_SHIFT
        unit = np.float64(bits) * (1.0 / 9007199254740992.0)
        out[column] = np.float32((2.0 * unit - 1.0) * scale)


@numba.njit(nogil=True, cache=True)
def init_rows_kernel(ids: Ids, seed: np.uint64, scale: float, dim: int) -> Rows:
    out = np.empty((ids.size, dim), np.float32)
    for i in range(ids.size):
        init_row(out[i], seed, scale, ids[i])
    return out


@numba.njit(nogil=True, cache=True)
def _save_rows(slots: Ids, store: Store, saved: Store, saved_n: int, epoch: int) -> int:
    """Save each row of ``slots`` (-1 skipped) before its first change in this epoch
    (rows created in it carry its mark already); the new saved length.

    One call per batch with plain copy loops: a call per row, even inlined, costs
    reference-count updates of every array it is handed, more than the row's own copy."""
    if epoch == 0:
        return saved_n
    rows, meta, tally = store
    saved_rows, saved_meta, saved_tally = saved
    for i in range(slots.size):
        if i + 2 * AHEAD < slots.size and slots[i + 2 * AHEAD] >= 0:
            prefetch(tally, slots[i + 2 * AHEAD], 0)
            prefetch(meta, slots[i + 2 * AHEAD], 0)
        if i + AHEAD < slots.size:
            ahead = slots[i + AHEAD]
            if ahead >= 0 and tally[ahead, MARK] != epoch:
                prefetch_row(rows, ahead, rows.shape[1])
        row = slots[i]
        if row < 0 or tally[row, MARK] == epoch:
            continue
        for column in range(rows.shape[1]):
            saved_rows[saved_n, column] = rows[row, column]
        for column in range(meta.shape[1]):
            saved_meta[saved_n, column] = meta[row, column]
        for column in range(tally.shape[1]):
            saved_tally[saved_n, column] = tally[row, column]
        tally[row, MARK] = epoch
        saved_n += 1
    return saved_n


@numba.njit(nogil=True, cache=True)
def _delete(index: Index, store: Store, n: int, entry: int) -> int:
    """Delete the row of index ``entry``, moving the last row into its place; the new n."""
    rows, meta, tally = store
    row = index[entry, ROW]
    remove(index, entry)
    last = n - 1
    if row != last:
        rows[row] = rows[last]
        meta[row] = meta[last]
        tally[row] = tally[last]
        index[find(index, meta[row, ID]), ROW] = row
    return last


@numba.njit(nogil=True, cache=True)
def _sketch_count(
    sketch: npt.NDArray[np.uint32],
    log: Meta,
    log_n: int,
    key: np.int64,
    ceiling: int,
    logging: bool,
) -> tuple[int, int]:
    """Count ``key`` once in the count-min sketch (conservative update, saturating at
    ``ceiling``); returns (estimate, new log length). Never under-counts."""
    depth, width = sketch.shape
    estimate = ceiling
    for d in range(depth):
        cell = np.int64(mix64_one(np.uint64(key) + np.uint64(d + 1) * _SKETCH_GAMMA)) & (width - 1)
        estimate = min(estimate, int(sketch[d, cell]))
    target = min(estimate + 1, ceiling)
    for d in range(depth):
        cell = np.int64(mix64_one(np.uint64(key) + np.uint64(d + 1) * _SKETCH_GAMMA)) & (width - 1)
        if sketch[d, cell] < target:
            if logging:
                log[log_n, 0] = d * width + cell
                log[log_n, 1] = sketch[d, cell]
                log_n += 1
            sketch[d, cell] = target
    return target, log_n


@numba.njit(nogil=True, cache=True)
def touch(
    index: Index,
    store: Store,
    saved: Store,
    saved_n: int,
    epoch: int,
    unique: Ids,
    step: int,
    version: int,
    sketch: npt.NDArray[np.uint32],
    sketch_log: Meta,
    sketch_n: int,
    admit_min: int,
) -> tuple[Ids, npt.NDArray[np.uint32], int, int]:
    """Count a pull of each (unique) id: refresh existing rows, count the others toward
    admission. Returns (row or -1 per id, count to create with or 0 per id, saved length,
    sketch log length)."""
    _, meta, tally = store
    slots = rows_of(index, unique)
    saved_n = _save_rows(slots, store, saved, saved_n, epoch)
    admit = np.zeros(unique.size, np.uint32)
    for i in range(unique.size):
        key = unique[i]
        row = slots[i]
        if row >= 0:
            if tally[row, COUNT] < COUNT_MAX:
                tally[row, COUNT] += 1
            meta[row, LAST_STEP] = step
            meta[row, VERSION] = version
        elif admit_min <= 1:
            admit[i] = 1
        else:
            seen, sketch_n = _sketch_count(sketch, sketch_log, sketch_n, key, admit_min, epoch != 0)
            if seen >= admit_min:
                admit[i] = seen
    return slots, admit, saved_n, sketch_n


@numba.njit(nogil=True, cache=True)
def create(
    index: Index,
    store: Store,
    n: int,
    created_ids: Ids,
    created_n: int,
    epoch: int,
    new_ids: Ids,
    counts: npt.NDArray[np.uint32],
    init: tuple[np.uint64, float, int],
    state0: Rows,
    step: int,
    version: int,
) -> tuple[Ids, int, int]:
    """Create a row per id (absent ids only) from ``init = (seed, scale, dim)`` and
    ``state0``, logging their ids when an epoch is open; returns (their rows, n, created
    length)."""
    rows, meta, tally = store
    seed, scale, dim = init
    created = np.empty(new_ids.size, np.int64)
    for i in range(new_ids.size):
        key = new_ids[i]
        row = n
        n += 1
        insert(index, key, row)
        init_row(rows[row, :dim], seed, scale, key)
        rows[row, dim:] = state0
        meta[row, ID] = key
        meta[row, LAST_STEP] = step
        meta[row, VERSION] = version
        tally[row, COUNT] = counts[i]
        tally[row, UPDATES] = 0
        tally[row, MARK] = epoch
        if epoch != 0:
            created_ids[created_n] = key
            created_n += 1
        created[i] = row
    return created, n, created_n


@numba.njit(nogil=True, cache=True)
def gather(rows: Rows, slots: Ids, inverse: Ids, dim: int, out: Rows) -> None:
    """``out[i] = weights of the row of id i``, zeros where the id has no row."""
    for i in range(inverse.size):
        row = slots[inverse[i]]
        if row < 0:
            out[i] = 0.0
        else:
            for column in range(dim):
                out[i, column] = rows[row, column]


@numba.njit(nogil=True, cache=True)
def push(
    store: Store,
    saved: Store,
    saved_n: int,
    epoch: int,
    slots: Ids,
    grads: Rows,
    step: int,
    version: int,
    kind: int,
    params: npt.NDArray[np.float64],
) -> tuple[int, int]:
    """Apply the optimizer to each row of ``slots`` (those of unique ids; -1 where an id
    has none); returns (rows updated, saved length)."""
    rows, meta, tally = store
    updated = 0
    saved_n = _save_rows(slots, store, saved, saved_n, epoch)
    steps = np.empty(slots.size, np.uint32)
    for i in range(slots.size):
        row = slots[i]
        if row < 0:
            continue
        if tally[row, UPDATES] < COUNT_MAX:
            tally[row, UPDATES] += 1
        steps[i] = tally[row, UPDATES]
        meta[row, LAST_STEP] = step
        meta[row, VERSION] = version
        updated += 1
    apply_updates(kind, params, rows, slots, grads, steps)
    return updated, saved_n


@numba.njit(nogil=True, cache=True)
def delete(
    index: Index, store: Store, n: int, saved: Store, saved_n: int, epoch: int, ids: Ids
) -> tuple[int, int]:
    """Delete the rows of ``ids`` (absent ids are skipped); returns (n, saved length)."""
    saved_n = _save_rows(rows_of(index, ids), store, saved, saved_n, epoch)
    for i in range(ids.size):
        entry = find(index, ids[i])
        if entry < 0:
            continue
        n = _delete(index, store, n, entry)
    return n, saved_n


@numba.njit(nogil=True, cache=True)
def put(index: Index, store: Store, n: int, ids: Ids, source: Store) -> int:
    """Write ``source``'s rows (mark column aside) under ``ids``, creating absent ones;
    returns n. Used by load; nothing is logged."""
    rows, meta, tally = store
    source_rows, source_meta, source_tally = source
    for i in range(ids.size):
        key = ids[i]
        row = row_of(index, key)
        if row < 0:
            row = n
            n += 1
            insert(index, key, row)
        rows[row] = source_rows[i]
        meta[row, ID] = key
        meta[row, LAST_STEP] = source_meta[i, LAST_STEP]
        meta[row, VERSION] = source_meta[i, VERSION]
        tally[row, COUNT] = source_tally[i, COUNT]
        tally[row, UPDATES] = source_tally[i, UPDATES]
        tally[row, MARK] = 0
    return n


@numba.njit(nogil=True, cache=True)
def rollback(
    index: Index,
    store: Store,
    n: int,
    saved: Store,
    created: Ids,
    sketch: npt.NDArray[np.uint32],
    sketch_log: Meta,
) -> int:
    """Delete the rows created since the cut, then put back each saved row (in place, or
    anew where it was deleted) and each logged sketch cell, newest first; returns n.

    Rows exist after it exactly when they existed at the cut: a row that existed then
    is saved once, before its first change (its deletion included), and a row that did
    not can only have come back by a create, which is logged."""
    rows, meta, tally = store
    for i in range(created.size):
        entry = find(index, created[i])
        if entry >= 0:
            n = _delete(index, store, n, entry)
    saved_rows, saved_meta, saved_tally = saved
    for i in range(saved_rows.shape[0]):
        key = saved_meta[i, ID]
        entry = find(index, key)
        if entry >= 0:
            row = index[entry, ROW]
        else:
            row = n
            n += 1
            insert(index, key, row)
        rows[row] = saved_rows[i]
        meta[row] = saved_meta[i]
        tally[row] = saved_tally[i]
    flat = sketch.reshape(-1)
    for i in range(sketch_log.shape[0] - 1, -1, -1):
        flat[sketch_log[i, 0]] = sketch_log[i, 1]
    return n
