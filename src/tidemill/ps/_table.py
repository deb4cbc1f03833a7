"""One shard of a sparse embedding table: rows with their optimizer state, admission,
eviction, versioned export and an undo log for rollback to the last commit.

The server holds one :class:`ShardTable` per table and shard and calls it under a
per-table lock; the compiled kernels release the GIL, so tables run in parallel.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tidemill.ps import _kernels as k
from tidemill.ps._aligned import page_aligned_empty
from tidemill.ps._checks import checked_export_rows, checked_grads, checked_out
from tidemill.ps._config import TableConfig, init_rows
from tidemill.ps._export import TableExport
from tidemill.ps._hashing import _dedupe, _segment_sum
from tidemill.ps._ids import INT64_MAX, as_ids, as_int
from tidemill.ps._index import MAX_LOAD, index_size_for, new_index, rebuild, rows_of
from tidemill.ps._tombstones import Tombstones
from tidemill.ps._undo import UndoLog, grown

__all__ = ["ShardTable", "TableConfig", "TableExport", "init_rows"]

_SKETCH_DEPTH = 4
_LFU_HEADROOM = 64
_KEY_COUNT_MAX = 2**31 - 2
_NO_SKETCH = np.zeros((0, 0), np.uint32)


class ShardTable:
    """A collision-free table of embedding rows, trained in place by a sparse optimizer.

    Each id gets its own row (an open-addressing index stores the full id). A row's
    weights and optimizer state sit together in one float32 row; per-row metadata is
    the id, a pull count (admission and LFU eviction), an update count (Adam's step),
    the last step pulled or pushed (TTL) and the table version of its last change
    (delta export). Storage grows by 1.5x; deleted rows are filled by the last row.

    When a pull must create rows past ``max_rows``, it first evicts the least
    frequently pulled rows not in that pull, down to 1/64 of the budget below it so
    the O(rows) selection is amortised; ids that still do not fit (a pull larger
    than the budget) get zeros and no row, and are admitted by a later pull.

    Undo: :meth:`begin` opens an epoch; the first change in it of each row that existed
    at the cut saves the row, a row created in it logs only its id (see ``_undo``), and
    :meth:`rollback` restores rows, optimizer state, metadata, the admission sketch,
    the eviction log and the version bit for bit. Rows may sit elsewhere in
    memory afterwards, which nothing observes: exports are sorted by id and eviction
    breaks ties by id. The counters ``admitted``, ``evicted``,
    ``pulled_rows`` and ``pushed_rows`` are monotonic and not rolled back.

    A push of exactly the ids the last pull returned (a sync step of one rank) reuses
    the rows that pull found instead of hashing its ids again; anything that may move,
    create or delete rows, or open an epoch, forgets them first.

    >>> table = ShardTable(TableConfig("items", dim=2))
    >>> table.pull([7, 9], step=0).shape
    (2, 2)
    >>> table.push([7], np.ones((1, 2), np.float32), step=0), table.rows
    (1, 2)
    """

    _rows: k.Rows
    _meta: k.Meta
    _tally: k.Tally
    _index: k.Index
    _sketch: npt.NDArray[np.uint32]
    _n: int
    _last_pull: tuple[k.Ids, k.Ids] | None
    """The unique ids of the last pull and their rows, while no row has moved since."""

    def __init__(self, config: TableConfig, capacity: int = 1024) -> None:
        if not isinstance(config, TableConfig):
            raise ValueError(f"config: expected a TableConfig, got {config!r}")
        self.config = config
        self._capacity = as_int(capacity, "capacity", minimum=1)
        self._dim = config.dim
        self._width = config.dim + config.state_width
        self._kind = config.optimizer.code
        self._params = np.array(config.optimizer.params, np.float64)
        self._state0 = config.optimizer.initial_state(config.dim)
        self._init = (np.uint64(config.seed), float(config.init_scale), config.dim)
        self._admit_min = config.admit_min_count
        self._version = 0
        self._admitted = self._evicted = self._pulled = self._pushed = 0
        self._last_pull = None
        self._reset_storage(self._capacity)
        self._tombs = Tombstones()
        self._undo = UndoLog(self._width)

    # ---- reading state -------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows held."""
        return self._n

    @property
    def version(self) -> int:
        """The version stamped on rows changed from now on (see :meth:`set_version`)."""
        return self._version

    @property
    def memory_bytes(self) -> int:
        """Bytes of every array the table holds (rows, index, metadata, tombstones,
        sketch, undo log), their room to grow included: pages not yet written are not
        resident, so the process's RSS for them can be lower, never higher."""
        arrays = (self._rows, self._meta, self._tally, self._index, self._sketch)
        return sum(array.nbytes for array in arrays) + self._tombs.nbytes + self._undo.nbytes

    @property
    def admitted(self) -> int:
        """Rows created by pulls so far."""
        return self._admitted

    @property
    def evicted(self) -> int:
        """Rows evicted (TTL or LFU) so far."""
        return self._evicted

    @property
    def pulled_rows(self) -> int:
        """Ids pulled so far (each position of each pull)."""
        return self._pulled

    @property
    def pushed_rows(self) -> int:
        """Rows updated by pushes so far."""
        return self._pushed

    def peek(self, ids: object) -> npt.NDArray[np.float32]:
        """Weights ``[n, dim]`` of ``ids`` (zeros where no row), changing nothing.

        >>> ShardTable(TableConfig("t", dim=3)).peek([1]).tolist()
        [[0.0, 0.0, 0.0]]
        """
        keys = as_ids(ids)
        out = np.empty((keys.size, self._dim), np.float32)
        k.gather(self._rows, rows_of(self._index, keys), np.arange(keys.size), self._dim, out)
        return out

    def has_rows(self, ids: object) -> npt.NDArray[np.bool_]:
        """Whether each id has a row.

        >>> ShardTable(TableConfig("t", dim=3)).has_rows([1]).tolist()
        [False]
        """
        return rows_of(self._index, as_ids(ids)) >= 0

    # ---- training ------------------------------------------------------------------

    def pull(
        self, ids: object, step: int, out: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """Weights ``[n, dim]`` of ``ids`` (zeros for ids without a row), counting each
        id once toward admission and creating the rows of ids that reach it.

        >>> table = ShardTable(TableConfig("t", dim=2, admit_min_count=2))
        >>> table.pull([5], step=0).tolist(), table.rows
        ([[0.0, 0.0]], 0)
        >>> bool(table.pull([5], step=1).any()), table.rows
        (True, 1)
        """
        keys = as_ids(ids)
        now = as_int(step, "step")
        target = checked_out(out, keys.size, self._dim)
        unique, inverse = _dedupe(keys)
        undo = self._undo
        undo.reserve_saved(unique.size)
        if self._admit_min > 1:
            undo.reserve_sketch(_SKETCH_DEPTH * unique.size)
        slots, admit, undo.saved_n, undo.sketch_n = k.touch(
            self._index,
            self._store,
            undo.saved,
            undo.saved_n,
            undo.epoch,
            unique,
            now,
            self._version,
            self._sketch,
            undo.sketch_log,
            undo.sketch_n,
            self._admit_min,
        )
        positions = np.flatnonzero(admit)
        if positions.size:
            positions, moved = self._make_room(positions, slots)
            if moved:
                slots = rows_of(self._index, unique)
            self._reserve_rows(self._n + positions.size)
            undo.reserve_created(positions.size)
            created, self._n, undo.created_n = k.create(
                self._index,
                self._store,
                self._n,
                undo.created,
                undo.created_n,
                undo.epoch,
                unique[positions],
                admit[positions],
                self._init,
                self._state0,
                now,
                self._version,
            )
            slots[positions] = created
            self._admitted += positions.size
            self._last_pull = None
        k.gather(self._rows, slots, inverse, self._dim, target)
        self._pulled += keys.size
        self._last_pull = (unique, slots)
        return target

    def push(self, ids: object, grads: object, step: int) -> int:
        """Apply the optimizer to the row of each id with its gradient row; returns the
        rows updated (ids without a row, not admitted or evicted, are skipped).

        >>> table = ShardTable(TableConfig("t", dim=2))
        >>> _ = table.pull([1, 2], step=0)
        >>> table.push([2, 3], np.ones((2, 2), np.float32), step=0)
        1
        """
        keys, gradients, now = self._checked_push(ids, grads, step)
        slots = self._pulled_rows(keys)
        if slots is None:
            unique, inverse = _dedupe(keys)
            if unique.size != keys.size:
                first = int(np.flatnonzero(inverse != np.arange(keys.size))[0])
                raise ValueError(
                    f"ids[{first}]: {int(keys[first])} repeats an earlier id; push takes "
                    "unique ids (sum the gradients of repeated ids with dedupe and "
                    "segment_sum first)"
                )
            slots = rows_of(self._index, keys)
        return self._apply(slots, gradients, now)

    def push_summed(self, ids: object, grads: object, step: int) -> int:
        """As :meth:`push`, but an id may repeat: the gradients of its rows are summed in
        order (deterministic) and applied once, as a shard applies the pushes of every
        rank of a step; one pass finds the repeats, where a dedupe then :meth:`push` took two.

        >>> table = ShardTable(TableConfig("t", dim=2))
        >>> _ = table.pull([4], step=0)
        >>> table.push_summed([4, 4], np.ones((2, 2), np.float32), step=0)
        1
        """
        keys, gradients, now = self._checked_push(ids, grads, step)
        slots = self._pulled_rows(keys)
        if slots is None:
            unique, inverse = _dedupe(keys)
            if unique.size != keys.size:
                gradients = _segment_sum(gradients, inverse, unique.size)
            slots = rows_of(self._index, unique)
        return self._apply(slots, gradients, now)

    def _checked_push(self, ids: object, grads: object, step: int) -> tuple[k.Ids, k.Rows, int]:
        """A push's ids, gradients and step, checked."""
        keys = as_ids(ids)
        now = as_int(step, "step")
        return keys, checked_grads(grads, keys.size, self._dim), now

    def _pulled_rows(self, keys: k.Ids) -> k.Ids | None:
        """The rows of ``keys`` if they are the last pull's unique ids, in its order (so
        unique), and no row has moved since; else None."""
        last = self._last_pull
        if last is None or not np.array_equal(keys, last[0]):
            return None
        return last[1]

    def _apply(self, slots: k.Ids, gradients: k.Rows, now: int) -> int:
        """The optimizer on the rows ``slots`` (of unique ids; -1: no row) with ``gradients``."""
        undo = self._undo
        undo.reserve_saved(slots.size)
        updated, undo.saved_n = k.push(
            self._store,
            undo.saved,
            undo.saved_n,
            undo.epoch,
            slots,
            gradients,
            now,
            self._version,
            self._kind,
            self._params,
        )
        self._pushed += updated
        return int(updated)

    def evict(self, step: int) -> npt.NDArray[np.int64]:
        """Evict rows idle for ``ttl_steps`` at ``step``, then the least frequently pulled
        rows down to ``max_rows`` (ties: longest idle, then lowest id); returns the
        evicted ids, sorted, TTL ones first.

        >>> table = ShardTable(TableConfig("t", dim=2, ttl_steps=10))
        >>> _ = table.pull([1], step=0); _ = table.pull([2], step=5)
        >>> table.evict(step=10).tolist(), table.rows
        ([1], 1)
        """
        now = as_int(step, "step")
        evicted = []
        if self.config.ttl_steps is not None:
            stale = np.flatnonzero(
                self._meta[: self._n, k.LAST_STEP] <= now - self.config.ttl_steps
            )
            evicted.append(self._remove(np.sort(self._meta[stale, k.ID])))
        budget = self.config.max_rows
        if budget is not None and self._n > budget:
            evicted.append(self._remove(self._least_used(self._n - budget, np.empty(0, np.int64))))
        return np.concatenate(evicted) if evicted else np.empty(0, np.int64)

    # ---- versions, export and load -------------------------------------------------

    def set_version(self, version: int) -> None:
        """Stamp rows changed from now on with ``version`` (never lower than the current).

        >>> table = ShardTable(TableConfig("t", dim=2)); table.set_version(3); table.version
        3
        """
        value = as_int(version, "version")
        if value < self._version:
            raise ValueError(
                f"version: {value} is below the current {self._version}; versions only grow"
            )
        self._version = value

    def export(self, since_version: int | None = None) -> TableExport:
        """A copy of every row (``since_version=None``) or of the rows changed after
        ``since_version`` and the ids evicted after it, sorted by id.

        >>> table = ShardTable(TableConfig("t", dim=2)); _ = table.pull([4, 1], step=0)
        >>> table.export().ids.tolist(), table.export(since_version=0).rows
        ([1, 4], 0)
        """
        live = self._meta[: self._n]
        since = None if since_version is None else as_int(since_version, "since_version")
        every = np.arange(self._n)
        chosen = every if since is None else every[live[:, k.VERSION] > since]
        chosen = chosen[np.argsort(live[chosen, k.ID], kind="stable")]
        tombstones, tombstone_versions = self._tombs.latest(since)
        return TableExport(
            name=self.config.name,
            dim=self._dim,
            version=self._version,
            since_version=None if since_version is None else int(since_version),
            ids=live[chosen, k.ID],
            weights=self._rows[chosen, : self._dim],
            state=self._rows[chosen, self._dim :],
            counts=self._tally[chosen, k.COUNT],
            updates=self._tally[chosen, k.UPDATES],
            last_steps=live[chosen, k.LAST_STEP],
            versions=live[chosen, k.VERSION],
            tombstones=tombstones,
            tombstone_versions=tombstone_versions,
            admission_sketch=self._sketch.copy() if self._admit_min > 1 else _NO_SKETCH.copy(),
        )

    def load(self, export: TableExport, replace: bool) -> None:
        """Restore a full export (``replace=True``: the table becomes exactly it) or apply
        a delta on top (``replace=False``: tombstones deleted, then rows written).
        Ends the undo epoch: call :meth:`begin` before the next :meth:`rollback`.

        >>> source = ShardTable(TableConfig("t", dim=2)); _ = source.pull([3], step=0)
        >>> copy = ShardTable(TableConfig("t", dim=2)); copy.load(source.export(), replace=True)
        >>> bool((copy.peek([3]) == source.peek([3])).all())
        True
        """
        sketch_shape = self._sketch.shape if self._admit_min > 1 else (0, 0)
        count = checked_export_rows(export, self.config, sketch_shape)
        self._last_pull = None
        self._undo.close()
        if replace:
            self._reset_storage(max(count, self._capacity))
            self._tombs.clear()
            self._version = export.version
        else:
            self._n, _ = k.delete(
                self._index, self._store, self._n, self._undo.saved, 0, 0, export.tombstones
            )
            self._version = max(self._version, export.version)
        self._tombs.append(export.tombstones, export.tombstone_versions)
        if export.admission_sketch.size:
            self._sketch[...] = export.admission_sketch
        self._reserve_rows(self._n + count)
        meta = np.zeros((count, 4), np.int64)
        meta[:, k.LAST_STEP] = export.last_steps
        meta[:, k.VERSION] = export.versions
        tally = np.zeros((count, 3), np.uint32)
        tally[:, k.COUNT] = export.counts
        tally[:, k.UPDATES] = export.updates
        source = (
            np.concatenate([export.weights, export.state], axis=1, dtype=np.float32),
            meta,
            tally,
        )
        self._n = k.put(self._index, self._store, self._n, export.ids, source)

    # ---- undo ----------------------------------------------------------------------

    def begin(self, version: int) -> None:
        """Open a new undo epoch at ``version`` (the last commit); the previous log is
        dropped, and its room beyond twice what it held released. Costs nothing per row
        until rows change.

        >>> table = ShardTable(TableConfig("t", dim=2)); table.begin(1)
        >>> _ = table.pull([8], step=0); table.rollback(); table.rows
        0
        """
        self.set_version(version)
        self._last_pull = None
        self._undo.open(self._tally, self._n, self._version, self._tombs.count)

    def rollback(self) -> None:
        """Restore the table to its content at the last :meth:`begin`, at a cost
        proportional to the rows changed since; the epoch stays open at that point."""
        undo = self._undo
        if undo.epoch == 0:
            raise RuntimeError(
                "rollback: no undo epoch is open; call begin(version) at each commit "
                "(load ends the epoch)"
            )
        self._last_pull = None
        self._reserve_rows(max(self._n, undo.cut_rows))
        self._n = undo.rollback(self._index, self._store, self._n, self._sketch)
        self._tombs.truncate(undo.cut_tomb_n)
        self._version = undo.cut_version

    # ---- internals -----------------------------------------------------------------

    @property
    def _store(self) -> k.Store:
        return (self._rows, self._meta, self._tally)

    def _reset_storage(self, capacity: int) -> None:
        self._rows = page_aligned_empty((capacity, self._width), np.float32)
        self._meta = np.empty((capacity, 3), np.int64)
        self._tally = np.empty((capacity, 3), np.uint32)
        self._index = new_index(index_size_for(capacity))
        self._n = 0
        width = self.config.admission_sketch_width if self._admit_min > 1 else 1
        self._sketch = np.zeros((_SKETCH_DEPTH if self._admit_min > 1 else 1, width), np.uint32)

    def _reserve_rows(self, needed: int) -> None:
        self._rows = grown(self._rows, needed, self._n)
        self._meta = grown(self._meta, needed, self._n)
        self._tally = grown(self._tally, needed, self._n)
        if needed > MAX_LOAD * self._index.shape[0]:
            self._index = new_index(index_size_for(needed))
            rebuild(self._index, np.ascontiguousarray(self._meta[: self._n, k.ID]))

    def _make_room(
        self, positions: npt.NDArray[np.int64], slots: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], bool]:
        """Evict LFU rows so the new rows fit ``max_rows``; the positions that fit."""
        budget = self.config.max_rows
        if budget is None or self._n + positions.size <= budget:
            return positions, False
        protected = slots[slots >= 0]
        wanted = self._n + positions.size - budget + budget // _LFU_HEADROOM
        count = min(self._n - protected.size, wanted)
        self._remove(self._least_used(count, protected))
        return positions[: max(0, budget - self._n)], True

    def _least_used(self, count: int, protected: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Ids of the ``count`` rows least often pulled (then longest idle), not protected."""
        if count <= 0:
            return np.empty(0, np.int64)
        live = self._meta[: self._n]
        recency = live[:, k.LAST_STEP] - live[:, k.LAST_STEP].min()
        counts = np.minimum(self._tally[: self._n, k.COUNT], _KEY_COUNT_MAX).astype(np.int64)
        key = (counts << 32) | np.minimum(recency, 2**32 - 1)
        key[protected] = INT64_MAX
        if count >= self._n:
            return np.sort(live[:, k.ID])
        # ties at the cut go by id, so the choice does not depend on where rows sit in memory
        cut = np.partition(key, count - 1)[count - 1]
        below = np.flatnonzero(key < cut)
        tied = np.flatnonzero(key == cut)
        tied = tied[np.argsort(live[tied, k.ID])[: count - below.size]]
        ids: npt.NDArray[np.int64] = np.sort(live[np.concatenate([below, tied]), k.ID])
        return ids

    def _remove(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Evict the rows of ``ids`` (all present), logging tombstones; returns a copy."""
        evicted = np.array(ids, np.int64)
        self._last_pull = None
        undo = self._undo
        undo.reserve_saved(evicted.size)
        self._n, undo.saved_n = k.delete(
            self._index, self._store, self._n, undo.saved, undo.saved_n, undo.epoch, evicted
        )
        self._tombs.append(evicted, np.full(evicted.size, self._version, np.int64))
        self._evicted += evicted.size
        return evicted
