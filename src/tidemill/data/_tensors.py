"""Arrow columns as torch tensors, without a copy where the memory allows it."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import torch


def to_tensors(table: pa.Table) -> dict[str, torch.Tensor]:
    """Numeric and boolean columns as 1-D tensors; fixed-size lists of numbers as 2-D.

    Tensors share Arrow's memory where they can, which is read-only: use them as
    inputs, not as buffers to write into.

    Example::

        >>> to_tensors(pa.table({"x": [1.0, 2.0]}))["x"]
        tensor([1., 2.], dtype=torch.float64)
    """
    with warnings.catch_warnings():  # once per table: entering it costs more than a column
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return {name: _column(name, table.column(name)) for name in table.column_names}


def _column(name: str, column: pa.ChunkedArray) -> torch.Tensor:
    kind = column.type
    if _numeric(kind) or pa.types.is_boolean(kind):  # the common case, tested first
        return torch.from_numpy(np.ascontiguousarray(column.to_numpy()))
    if pa.types.is_null(kind):
        return torch.from_numpy(np.full(len(column), np.nan, dtype=np.float32))
    if pa.types.is_fixed_size_list(kind) and _numeric(kind.value_type):
        flat = pa.concat_arrays(
            [chunk.flatten() for chunk in column.chunks] or [pa.array([], kind.value_type)]
        )
        rows = np.ascontiguousarray(flat.to_numpy(zero_copy_only=False))
        return torch.from_numpy(rows).reshape(len(column), kind.list_size)
    raise TypeError(
        f"column {name!r} is {kind}, which has no tensor form; leave it out of columns=, "
        "or ask for output='arrow' and convert it yourself"
    )


def _numeric(kind: pa.DataType) -> bool:
    return bool(pa.types.is_integer(kind) or pa.types.is_floating(kind))
