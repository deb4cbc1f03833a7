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


def select_rows(
    export: TableExport, keep: npt.NDArray[np.bool_], keep_tombstones: npt.NDArray[np.bool_]
) -> TableExport:
    """The part of ``export`` another replica owns (rows and tombstones kept by the masks):
    how a snapshot taken over N replicas is loaded over M."""
    return TableExport(
        name=export.name,
        dim=export.dim,
        version=export.version,
        since_version=export.since_version,
        ids=export.ids[keep],
        weights=export.weights[keep],
        state=export.state[keep],
        counts=export.counts[keep],
        updates=export.updates[keep],
        last_steps=export.last_steps[keep],
        versions=export.versions[keep],
        tombstones=export.tombstones[keep_tombstones],
        tombstone_versions=export.tombstone_versions[keep_tombstones],
        admission_sketch=export.admission_sketch,
    )


def concat_exports(parts: list[TableExport]) -> TableExport:
    """Parts of one table from several replicas as one export, sorted by id; their
    admission sketches add up (a count-min sketch may over-count, never under-count)."""
    first = parts[0]
    ids = np.concatenate([part.ids for part in parts])
    order = np.argsort(ids, kind="stable")
    tombstones = np.concatenate([part.tombstones for part in parts])
    tomb_order = np.argsort(tombstones, kind="stable")
    sketch = first.admission_sketch
    for part in parts[1:]:
        if part.admission_sketch.size:
            sketch = sketch + part.admission_sketch if sketch.size else part.admission_sketch

    def joined(field: str) -> npt.NDArray[Any]:
        return np.concatenate([getattr(part, field) for part in parts])[order]

    return TableExport(
        name=first.name,
        dim=first.dim,
        version=max(part.version for part in parts),
        since_version=first.since_version,
        ids=ids[order],
        weights=joined("weights"),
        state=joined("state"),
        counts=joined("counts"),
        updates=joined("updates"),
        last_steps=joined("last_steps"),
        versions=joined("versions"),
        tombstones=tombstones[tomb_order],
        tombstone_versions=np.concatenate([p.tombstone_versions for p in parts])[tomb_order],
        admission_sketch=sketch,
    )
