"""A table export on disk: one ``.npz`` per (table, shard), written atomically.

Checkpoint integration comes later; this is the file format the EXPORT and LOAD ops
use, so a shard's rows survive a restart of its process.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidemill.ps._export import TableExport


def export_path(folder: str | Path, table: str, shard: int) -> Path:
    return Path(folder) / f"{table}.shard{shard}.npz"


def save_export(path: Path, export: TableExport) -> None:
    """Write every field of ``export`` (arrays and scalars; None fields are left out)."""
    arrays = {
        item.name: np.asarray(getattr(export, item.name))
        for item in dataclasses.fields(export)
        if getattr(export, item.name) is not None
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        savez: Callable[..., None] = np.savez  # numpy's stub reads **arrays as its flags
        savez(handle, **arrays)
    os.replace(partial, path)


def load_export(path: Path) -> TableExport:
    """The :class:`TableExport` :func:`save_export` wrote (absent fields come back None)."""
    values: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as data:
        for item in dataclasses.fields(TableExport):
            if item.name not in data.files:
                values[item.name] = None
                continue
            array = data[item.name]
            values[item.name] = array.item() if array.ndim == 0 else array
    return TableExport(**values)
