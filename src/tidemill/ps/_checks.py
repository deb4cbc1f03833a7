"""Checks of a table call's arrays (output buffer, gradients, exports to load) at the door."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from tidemill.ps._config import TableConfig
from tidemill.ps._export import TableExport
from tidemill.ps._hashing import _dedupe
from tidemill.ps._ids import as_ids


def checked_out(out: object, n: int, dim: int) -> npt.NDArray[np.float32]:
    """``out`` if it can take ``n`` rows of ``dim`` weights, a new array if None."""
    if out is None:
        return np.empty((n, dim), np.float32)
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.shape != (n, dim)
        or not out.flags.c_contiguous
    ):
        got = f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        raise ValueError(
            f"out: expected a C-contiguous float32 array of shape ({n}, {dim}), got {got}"
        )
    return out


def checked_grads(grads: object, n: int, dim: int) -> npt.NDArray[np.float32]:
    """``grads`` as a contiguous float32 ``[n, dim]`` array (any float dtype accepted)."""
    array = np.asarray(grads)
    if array.dtype.kind != "f" or array.shape != (n, dim):
        raise ValueError(
            f"grads: expected a float array of shape ({n}, {dim}) (one row per id), "
            f"got {array.dtype} {array.shape}"
        )
    return np.ascontiguousarray(array, dtype=np.float32)


def checked_export_rows(export: object, config: TableConfig, sketch_shape: tuple[int, ...]) -> int:
    """The number of rows of ``export`` once it is known to fit a table of ``config``."""
    if not isinstance(export, TableExport):
        raise ValueError(f"export: expected a TableExport, got {type(export).__name__}")
    if export.dim != config.dim:
        raise ValueError(f"export.dim: {export.dim} does not match the table's dim {config.dim}")
    ids = as_ids(export.ids, "export.ids")
    count = ids.size
    shapes: dict[str, tuple[npt.NDArray[Any], tuple[int, ...]]] = {
        "weights": (export.weights, (count, config.dim)),
        "state": (export.state, (count, config.state_width)),
        "counts": (export.counts, (count,)),
        "updates": (export.updates, (count,)),
        "last_steps": (export.last_steps, (count,)),
        "versions": (export.versions, (count,)),
        "tombstone_versions": (export.tombstone_versions, export.tombstones.shape),
    }
    if export.admission_sketch.size:
        shapes["admission_sketch"] = (export.admission_sketch, sketch_shape)
    for name, (array, shape) in shapes.items():
        if array.shape != shape:
            raise ValueError(
                f"export.{name}: shape {array.shape}, expected {shape} "
                f"for this table ({config.optimizer.kind}, dim {config.dim})"
            )
    if _dedupe(ids)[0].size != count:
        raise ValueError("export.ids: ids repeat; an export holds each id once")
    as_ids(export.tombstones, "export.tombstones")
    return count
