"""Serving export: a table's rows changed since version N (and the ids evicted since) as
Parquet, so a serving store applies the delta instead of reloading the table.

One file per (table, shard): ``<folder>/<table>/shard-<k>.parquet`` with columns
``id`` (int64), ``version`` (int64: the step of the cut that last changed the row),
``deleted`` (bool: a tombstone, the id was evicted) and ``embedding`` (a fixed-size
list of ``dim`` float32; null for tombstones). Optimizer state stays on the servers.
Rows are sorted by id; a reader applies tombstones first, then rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from tidemill.ps._export import TableExport

SCHEMA_VERSION = "1"


def serving_path(folder: str | Path, table: str, shard: int) -> Path:
    return Path(folder) / table / f"shard-{shard}.parquet"


def write_serving(path: Path, export: TableExport) -> int:
    """Write ``export``'s rows and tombstones to ``path`` atomically; rows written."""
    dim = export.dim
    tombstones = export.tombstones.size
    ids = np.concatenate([export.tombstones, export.ids])
    versions = np.concatenate([export.tombstone_versions, export.versions])
    deleted = np.concatenate([np.ones(tombstones, np.bool_), np.zeros(export.rows, np.bool_)])
    flat = pa.array(np.ascontiguousarray(export.weights, np.float32).reshape(-1))
    offsets_valid = pa.FixedSizeListArray.from_arrays(flat, dim)
    embeddings = pa.concat_arrays(
        [pa.nulls(tombstones, type=pa.list_(pa.float32(), dim)), offsets_valid]
    )
    table = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "version": pa.array(versions, pa.int64()),
            "deleted": pa.array(deleted),
            "embedding": embeddings,
        }
    ).replace_schema_metadata(
        {
            "tidemill.table": export.name,
            "tidemill.dim": str(dim),
            "tidemill.version": str(export.version),
            "tidemill.since_version": ""
            if export.since_version is None
            else str(export.since_version),
            "tidemill.schema": SCHEMA_VERSION,
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, path)
    return len(ids)


def apply_serving(
    rows: dict[int, npt.NDArray[np.float32]], path: Path
) -> dict[int, npt.NDArray[np.float32]]:
    """``rows`` (id -> embedding) with the delta at ``path`` applied: what a serving
    store does with each file (the reference reader the tests use)."""
    table = pq.read_table(path)
    ids = table.column("id").to_numpy()
    deleted = table.column("deleted").to_numpy(zero_copy_only=False)
    for gone in ids[deleted]:
        rows.pop(int(gone), None)
    kept = table.filter(pa.compute.invert(table.column("deleted")))
    if kept.num_rows:
        dim = int(table.schema.metadata[b"tidemill.dim"])
        flat = kept.column("embedding").combine_chunks().flatten().to_numpy()
        values = flat.reshape(kept.num_rows, dim)
        for position, row_id in enumerate(kept.column("id").to_numpy()):
            rows[int(row_id)] = values[position].copy()
    return rows
