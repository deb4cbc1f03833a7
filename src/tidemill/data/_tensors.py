"""Arrow columns as torch tensors, without a copy where the memory allows it."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch

# Tensors over Arrow's read-only buffers are the point (no copy); torch warns about each
# such array once. Filtered here for good rather than per batch: a catch_warnings block
# costs more than converting all of a batch's columns.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


def to_tensors(batch: pa.RecordBatch) -> dict[str, torch.Tensor]:
    """Numeric and boolean columns as 1-D tensors; fixed-size lists of numbers as 2-D.

    Tensors share Arrow's memory where they can, which is read-only: use them as
    inputs, not as buffers to write into.

    Example::

        >>> to_tensors(pa.record_batch({"x": [1.0, 2.0]}))["x"]
        tensor([1., 2.], dtype=torch.float64)
    """
    return {name: _column(name, batch.column(i)) for i, name in enumerate(batch.schema.names)}


def _column(name: str, column: pa.Array) -> torch.Tensor:
    kind = column.type
    if _numeric(kind) or pa.types.is_boolean(kind):  # the common case, tested first
        return torch.from_numpy(column.to_numpy(zero_copy_only=False))
    if pa.types.is_null(kind):
        return torch.from_numpy(np.full(len(column), np.nan, dtype=np.float32))
    if pa.types.is_fixed_size_list(kind) and _numeric(kind.value_type):
        rows = np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False))
        return torch.from_numpy(rows).reshape(len(column), kind.list_size)
    raise TypeError(
        f"column {name!r} is {kind}, which has no tensor form; leave it out of columns=, "
        "or ask for output='arrow' and convert it yourself"
    )


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))
