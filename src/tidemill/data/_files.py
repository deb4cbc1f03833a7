"""Parquet files: finding them, splitting them by row group, and reading row-group ranges.

Both the ``parquet`` and the ``iceberg`` sources end here: an Iceberg data file is a
Parquet file. Reading goes one row group at a time so that a decoding failure names the
exact row group, and so that resuming at a record position skips whole row groups from
the footer's counts instead of decoding them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tidemill.data._errors import CorruptData, SourceNotFound

_HIDDEN_PREFIXES = ("_", ".")
"""Spark/Hive markers (_SUCCESS, _metadata) and hidden files (.crc) are not data."""


def list_parquet_files(source: str, path: str) -> list[str]:
    """Every Parquet file ``path`` names, sorted: a file, a directory tree, or a glob."""
    fs, root = fsspec.core.url_to_fs(path)
    if fsspec.core.has_magic(root):
        found = [p for p in fs.glob(root) if fs.isfile(p)]
    elif fs.isdir(root):
        found = [p for p in fs.find(root) if p.endswith(".parquet") and not _hidden(root, p)]
    elif fs.isfile(root):
        found = [root]
    else:
        raise SourceNotFound(source, f"no file or directory at {path!r}")
    if not found:
        raise SourceNotFound(source, f"{path!r} matched no Parquet files")
    return sorted(_url(fs, p) for p in found)


def _hidden(root: str, path: str) -> bool:
    relative = path[len(root.rstrip("/")) :].strip("/")
    return any(part.startswith(_HIDDEN_PREFIXES) for part in relative.split("/"))


def _url(fs: Any, path: str) -> str:
    local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    return str(path) if local else str(fs.unstrip_protocol(path))


def open_parquet(source: str, url: str, shard: str | None = None) -> pq.ParquetFile:
    """Open a local path or fsspec URL; a damaged footer is :class:`CorruptData`."""
    fs, path = fsspec.core.url_to_fs(url)
    try:
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            return pq.ParquetFile(path)
        return pq.ParquetFile(path, filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)))
    except FileNotFoundError:
        raise SourceNotFound(source, f"file {url!r} is gone", shard=shard) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptData(
            source, f"{url} is not a readable Parquet file: {exc}", shard=shard
        ) from None


def open_parquet_stream(
    source: str, url: str, stream: Any, shard: str | None = None
) -> pq.ParquetFile:
    """Open an already opened file (an Iceberg FileIO stream) with the same error rules."""
    try:
        return pq.ParquetFile(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptData(
            source, f"{url} is not a readable Parquet file: {exc}", shard=shard
        ) from None


def row_group_sizes(parquet: pq.ParquetFile) -> list[int]:
    meta = parquet.metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def pack_row_groups(sizes: Sequence[int], rows_per_shard: int) -> list[tuple[int, int, int]]:
    """Consecutive row groups packed into ``(start, stop, rows)`` of at most
    ``rows_per_shard`` rows; a row group larger than that is a shard of its own."""
    ranges: list[tuple[int, int, int]] = []
    start, rows = 0, 0
    for index, size in enumerate(sizes):
        if index > start and rows + size > rows_per_shard:
            ranges.append((start, index, rows))
            start, rows = index, 0
        rows += size
    if len(sizes) > start:
        ranges.append((start, len(sizes), rows))
    return ranges


def read_row_groups(
    parquet: pq.ParquetFile,
    *,
    source: str,
    shard: str,
    url: str,
    row_groups: range,
    columns: Sequence[str] | None,
    start_at: int,
    batch_rows: int,
    convert: Callable[[pa.RecordBatch], pa.RecordBatch] | None = None,
    drops_rows: bool = False,
) -> Iterator[pa.RecordBatch]:
    """Batches of ``row_groups``, skipping the first ``start_at`` records delivered.

    ``convert`` maps a file batch to the caller's schema (Iceberg field ids to names) and
    may filter rows (``drops_rows``). Positions count delivered rows, so after a filter the
    skipped rows must be read and filtered again; without one, whole row groups are skipped
    from the footer's counts.
    """
    skip = start_at
    sizes = row_group_sizes(parquet)
    for group in row_groups:
        if not drops_rows and skip >= sizes[group]:
            skip -= sizes[group]
            continue
        batches = parquet.iter_batches(
            batch_size=batch_rows, row_groups=[group], columns=columns, use_threads=True
        )
        while (batch := _next_batch(batches, source, shard, url, group)) is not None:
            out = convert(batch) if convert is not None else batch
            if skip:
                dropped = min(skip, out.num_rows)
                skip -= dropped
                out = out.slice(dropped)
            if out.num_rows:
                yield out


def _next_batch(
    batches: Iterator[pa.RecordBatch], source: str, shard: str, url: str, group: int
) -> pa.RecordBatch | None:
    """The next decoded batch, or None at the end; decoding failures name the row group."""
    try:
        return next(batches, None)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise CorruptData(
            source, f"cannot decode row group {group} of {url}: {exc}", shard=shard
        ) from None
