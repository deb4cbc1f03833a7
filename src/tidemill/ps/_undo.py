"""The undo log of a table shard: what :meth:`ShardTable.rollback` needs to put the
shard back at its last cut, and no more.

Three logs, each an array with a used length:

- ``saved`` ``(rows, meta, tally)``: rows that existed at the cut, copied whole before
  their first change in the epoch. The tally's mark column holds the epoch that saved
  a row (rows created in the epoch carry it too), so a row is saved at most once and
  the log never holds more entries than the rows at the cut;
- ``created``: ids of rows created since the cut, nothing else, since rollback only
  deletes them. A fill costs 8 bytes a row here instead of a copy of the row;
- ``sketch_log``: ``(cell, old count)`` per change of the admission sketch.

A cut drops the log and sizes each array to what the epoch just closed used: room for
more than twice that (and over :data:`KEEP_MIN` entries) is released, so the room a fill
or one long epoch took goes at the first cut after an epoch that needed less than half
of it, while epochs of a steady size keep writing into the same pages. (Releasing
everything at each cut would make every epoch fault in and copy its log again: 15-35%
slower steps when an epoch saves a quarter of the rows.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tidemill.ps import _kernels as k
from tidemill.ps._aligned import page_aligned_empty

__all__ = ["KEEP_MIN", "UndoLog", "grown"]

GROWTH = 1.5
KEEP_MIN = 1024
"""Entries a log array may always keep room for, so small tables do not churn."""
EPOCH_MAX = 2**32 - 1


def grown(
    array: npt.NDArray[Any], needed: int, used: int, limit: int | None = None
) -> npt.NDArray[Any]:
    """``array`` if it has ``needed`` rows, else a copy of its first ``used`` rows with
    room for 1.5x as many (never more than ``limit``, when given, nor less than needed)."""
    if array.shape[0] >= needed:
        return array
    size = max(needed, int(array.shape[0] * GROWTH) + 16)
    if limit is not None:
        size = max(needed, min(size, limit))
    bigger = page_aligned_empty((size, *array.shape[1:]), array.dtype)
    bigger[:used] = array[:used]
    return bigger


class UndoLog:
    """The log of one table since its last cut (epoch 0: no cut, nothing logged).

    >>> log = UndoLog(width=4)
    >>> log.open(np.zeros((0, 3), np.uint32), rows=0, version=1, tomb_n=0); log.epoch
    1
    >>> log.reserve_saved(10); log.saved[0].shape  # no row existed at the cut
    (0, 4)
    """

    saved: k.Store
    created: k.Ids
    sketch_log: k.Meta

    def __init__(self, width: int) -> None:
        self.epoch = 0
        self.cut_rows = self.cut_version = self.cut_tomb_n = 0
        self.saved_n = self.created_n = self.sketch_n = 0
        self.saved = (
            np.empty((0, width), np.float32),
            np.empty((0, 3), np.int64),
            np.empty((0, 3), np.uint32),
        )
        self.created = np.empty(0, np.int64)
        self.sketch_log = np.empty((0, 2), np.int64)

    @property
    def nbytes(self) -> int:
        """Bytes of the log's arrays, their unused room included."""
        return sum(a.nbytes for a in (*self.saved, self.created, self.sketch_log))

    def open(self, tally: k.Tally, rows: int, version: int, tomb_n: int) -> None:
        """Start a new epoch at a cut of ``rows`` rows (``tally`` is the table's), dropping
        the log and the room the closed epoch did not need."""
        if self.epoch >= EPOCH_MAX:
            tally[:rows, k.MARK] = 0
            self.epoch = 0
        self.epoch += 1
        self.cut_rows, self.cut_version, self.cut_tomb_n = rows, version, tomb_n
        self._drop()

    def close(self) -> None:
        """End the epoch (a load replaced the rows): nothing is logged until the next cut."""
        self.epoch = 0
        self.saved_n = self.created_n = self.sketch_n = 0
        self._drop()

    def reserve_saved(self, extra: int) -> None:
        """Room to save ``extra`` more rows (no more than the rows at the cut not yet saved)."""
        if self.epoch:
            needed = self.saved_n + min(extra, self.cut_rows - self.saved_n)
            rows, meta, tally = (grown(a, needed, self.saved_n, self.cut_rows) for a in self.saved)
            self.saved = (rows, meta, tally)

    def reserve_created(self, extra: int) -> None:
        """Room to log ``extra`` more created ids."""
        if self.epoch:
            self.created = grown(self.created, self.created_n + extra, self.created_n)

    def reserve_sketch(self, extra: int) -> None:
        """Room to log ``extra`` more changes of sketch cells."""
        if self.epoch:
            self.sketch_log = grown(self.sketch_log, self.sketch_n + extra, self.sketch_n)

    def rollback(
        self, index: k.Index, store: k.Store, n: int, sketch: npt.NDArray[np.uint32]
    ) -> int:
        """Put ``store``, ``index`` and ``sketch`` back as they were at the cut; returns n
        (the rows at the cut). The epoch stays open, its log dropped."""
        rows, meta, tally = self.saved
        used = self.saved_n
        n = k.rollback(
            index,
            store,
            n,
            (rows[:used], meta[:used], tally[:used]),
            self.created[: self.created_n],
            sketch,
            self.sketch_log[: self.sketch_n],
        )
        self.open(store[2], n, self.cut_version, self.cut_tomb_n)
        return n

    def _drop(self) -> None:
        """Empty the log, each array fitted to the entries it held."""
        rows, meta, tally = (_fitted(a, self.saved_n) for a in self.saved)
        self.saved = (rows, meta, tally)
        self.created = _fitted(self.created, self.created_n)
        self.sketch_log = _fitted(self.sketch_log, self.sketch_n)
        self.saved_n = self.created_n = self.sketch_n = 0


def _fitted(array: npt.NDArray[Any], used: int) -> npt.NDArray[Any]:
    """``array`` unless it has room for more than twice ``used`` entries (and more than
    :data:`KEEP_MIN`); then a new one with room for ``used``, its pages not yet touched."""
    if array.shape[0] <= 2 * max(used, KEEP_MIN):
        return array
    return page_aligned_empty((used, *array.shape[1:]), array.dtype)
