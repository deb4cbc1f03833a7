"""The ``parquet`` source: files found by path, glob or directory, split by row group."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from tidemill.api.sources import ParquetSource, SourceKind
from tidemill.data._errors import SourceNotFound
from tidemill.data._files import (
    list_parquet_files,
    open_parquet,
    pack_row_groups,
    read_row_groups,
    row_group_sizes,
)
from tidemill.data._shards import FileRange, Shard, file_shard_id

_FOOTER_READERS = 8
"""Footers are small reads dominated by latency (object stores), so read several at once."""


def plan_parquet(source: str, spec: ParquetSource, rows_per_shard: int) -> list[Shard]:
    """One shard per run of row groups holding at most ``rows_per_shard`` rows."""
    urls = list_parquet_files(source, spec.path)
    with ThreadPoolExecutor(min(_FOOTER_READERS, len(urls))) as pool:
        footers = list(pool.map(lambda url: _footer(source, url), urls))
    if spec.columns:
        _check_columns(source, urls[0], footers[0][1], spec.columns)
    columns = tuple(spec.columns) if spec.columns else None
    return [
        Shard(
            id=file_shard_id(source, url, start, stop),
            source=source,
            kind=SourceKind.PARQUET,
            columns=columns,
            file=FileRange(url, start, stop, rows),
        )
        for url, (sizes, _) in zip(urls, footers, strict=True)
        for start, stop, rows in pack_row_groups(sizes, rows_per_shard)
    ]


def _footer(source: str, url: str) -> tuple[list[int], pa.Schema]:
    """Row-group sizes and schema; the file is closed again so planning holds no handles."""
    parquet = open_parquet(source, url)
    try:
        return row_group_sizes(parquet), parquet.schema_arrow
    finally:
        parquet.close()


def _check_columns(source: str, url: str, schema: pa.Schema, columns: Sequence[str]) -> None:
    missing = [name for name in columns if schema.get_field_index(name) < 0]
    if missing:
        raise SourceNotFound(
            source, f"no column(s) {missing} in {url}; its columns are {schema.names}"
        )


def read_parquet_shard(
    shard: Shard, columns: Sequence[str] | None, start_at: int, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Batches of the shard's row groups from record ``start_at`` on."""
    file = _file_range(shard)
    parquet = open_parquet(shard.source, file.path, shard.id)
    try:
        wanted = columns if columns is not None else shard.columns
        if wanted:
            _check_columns(shard.source, file.path, parquet.schema_arrow, wanted)
        yield from read_row_groups(
            parquet,
            source=shard.source,
            shard=shard.id,
            url=file.path,
            row_groups=range(file.row_group_start, file.row_group_stop),
            columns=list(wanted) if wanted else None,
            start_at=start_at,
            batch_rows=batch_rows,
        )
    finally:
        parquet.close()


def _file_range(shard: Shard) -> FileRange:
    if shard.file is None:
        raise ValueError(f"shard {shard.id!r} of kind {shard.kind} names no file")
    return shard.file
