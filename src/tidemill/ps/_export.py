"""A table's content as plain numpy arrays, for checkpoints and serving export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class TableExport:
    """Rows of a table (sorted by id) and the ids it evicted, all copies.

    A full export (``since_version is None``) holds every row and every recorded
    eviction; a delta holds the rows whose version is above ``since_version`` and
    the ids evicted after it (``tombstones``, with the version of their eviction).
    Loading a delta deletes the tombstones first, then writes the rows.
    ``admission_sketch`` is the whole count-min sketch of pulls of ids without a row
    (in deltas too: it is small), so a restored table admits as the original would;
    it is empty ``(0, 0)`` for tables that admit at once.
    """

    name: str
    dim: int
    version: int
    since_version: int | None
    ids: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    state: npt.NDArray[np.float32]
    counts: npt.NDArray[np.uint32]
    updates: npt.NDArray[np.uint32]
    last_steps: npt.NDArray[np.int64]
    versions: npt.NDArray[np.int64]
    tombstones: npt.NDArray[np.int64]
    tombstone_versions: npt.NDArray[np.int64]
    admission_sketch: npt.NDArray[np.uint32]

    @property
    def rows(self) -> int:
        """Number of rows exported."""
        return int(self.ids.size)

    @property
    def nbytes(self) -> int:
        """Bytes of all arrays together."""
        arrays: list[npt.NDArray[Any]] = [self.ids, self.weights, self.state, self.counts]
        arrays += [self.updates, self.last_steps, self.versions]
        arrays += [self.tombstones, self.tombstone_versions, self.admission_sketch]
        return sum(array.nbytes for array in arrays)
