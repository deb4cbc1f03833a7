"""A table export on disk: one ``.npz`` per (table, shard), written atomically.

The file format of the EXPORT and LOAD ops and of the snapshots checkpoints take
(``tidemill.ps._cuts``).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidemill.ps._export import TableExport


def export_path(folder: str | Path, table: str, shard: int) -> Path:
    return Path(folder) / f"{table}.shard{shard}.npz"


def save_export(path: Path, export: TableExport) -> None:
    """Write ``export`` to ``path`` atomically (see :func:`export_bytes`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(export_bytes(export))
    os.replace(partial, path)


def load_export(path: Path) -> TableExport:
    """The :class:`TableExport` :func:`save_export` wrote (absent fields come back None)."""
    return export_from_bytes(path.read_bytes())


def export_bytes(export: TableExport) -> bytes:
    """Every field of ``export`` as one ``.npz`` (arrays and scalars; None fields left out)."""
    arrays = {
        item.name: np.asarray(getattr(export, item.name))
        for item in dataclasses.fields(export)
        if getattr(export, item.name) is not None
    }
    buffer = io.BytesIO()
    savez: Callable[..., None] = np.savez  # numpy's stub reads **arrays as its flags
    savez(buffer, **arrays)
    return buffer.getvalue()


def export_from_bytes(data: bytes) -> TableExport:
    values: dict[str, Any] = {}
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        for item in dataclasses.fields(TableExport):
            if item.name not in stored.files:
                values[item.name] = None
                continue
            array = stored[item.name]
            values[item.name] = array.item() if array.ndim == 0 else array
    return TableExport(**values)
