"""The ``iceberg`` source: a pyiceberg table pinned to one snapshot, split by row group.

Planning asks the catalog once (on the job master): it resolves the snapshot
(``snapshotId``, ``asOf`` or current), lets pyiceberg prune data files with the row filter,
and splits each remaining file by row group. Shards carry the table's metadata location,
so workers read data files straight from storage, with no catalog call, and the columns
are matched by Iceberg field id so renamed and added columns read correctly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind, extract_field_ids
from pyiceberg.io.pyarrow import expression_to_pyarrow, schema_to_pyarrow
from pyiceberg.manifest import FileFormat
from pyiceberg.schema import Schema
from pyiceberg.table import FileScanTask, StaticTable, Table
from pyiceberg.table.snapshots import Snapshot

from tidemill.api.sources import IcebergSource, SourceKind, epoch_ms
from tidemill.data._errors import SourceNotFound, SourceUnreachable, UnsupportedData
from tidemill.data._files import (
    open_parquet_stream,
    pack_row_groups,
    read_row_groups,
    row_group_sizes,
)
from tidemill.data._shards import FileRange, IcebergFile, Shard, file_shard_id

_FIELD_ID = b"PARQUET:field_id"
_FOOTER_READERS = 8
_T = TypeVar("_T")


def plan_iceberg(source: str, spec: IcebergSource, rows_per_shard: int) -> list[Shard]:
    """Shards of the pinned snapshot's data files that the filter may match."""
    table = load_table(source, spec)
    snapshot = _snapshot(source, spec, table)
    if snapshot is None:
        return []
    # Time travel reads with the schema of its snapshot, the current snapshot with the
    # current schema (columns renamed or added since read by their new names).
    travels = spec.snapshot_id is not None or spec.as_of is not None
    schema = _schema_of(table, snapshot) if travels else table.schema()
    if spec.columns:
        _check_columns(source, spec.table, schema, spec.columns)
    scan = table.scan(row_filter=spec.filter or AlwaysTrue(), snapshot_id=snapshot.snapshot_id)
    tasks = _with_timeout(
        source, spec.timeout_s, f"planning a scan of {spec.table}", lambda: list(scan.plan_files())
    )
    for task in tasks:
        _check_readable(source, spec.table, task)
    with ThreadPoolExecutor(max(1, min(_FOOTER_READERS, len(tasks)))) as pool:
        sizes = list(pool.map(lambda task: _row_group_sizes(source, table, task), tasks))
    where = IcebergFile(
        table=spec.table,
        metadata_location=table.metadata_location,
        snapshot_id=snapshot.snapshot_id,
        schema_id=schema.schema_id,
        io_properties=tuple(sorted(table.io.properties.items())),
        filter=spec.filter,
    )
    columns = tuple(spec.columns) if spec.columns else None
    return [
        Shard(
            id=file_shard_id(source, task.file.file_path, start, stop),
            source=source,
            kind=SourceKind.ICEBERG,
            columns=columns,
            file=FileRange(task.file.file_path, start, stop, rows),
            iceberg=where,
        )
        for task, file_sizes in zip(tasks, sizes, strict=True)
        for start, stop, rows in pack_row_groups(file_sizes, rows_per_shard)
    ]


def load_table(source: str, spec: IcebergSource) -> Table:
    """The table from its catalog, within ``timeoutS``; missing or silent catalogs named."""
    described = _describe_catalog(spec.catalog)

    def connect() -> Catalog:
        if isinstance(spec.catalog, str):
            return load_catalog(spec.catalog)
        properties = dict(spec.catalog)
        # SQL catalogs keep tables per catalog name, so the name is part of the address.
        return load_catalog(properties.pop("name", "default"), **properties)

    try:
        catalog = _with_timeout(source, spec.timeout_s, f"opening {described}", connect)
    except SourceUnreachable:
        raise
    except Exception as exc:  # drivers raise their own types (sqlalchemy, requests, ...)
        raise SourceUnreachable(source, f"cannot open {described}: {exc}") from None
    try:
        return _with_timeout(
            source, spec.timeout_s, f"loading {spec.table}", lambda: catalog.load_table(spec.table)
        )
    except (NoSuchTableError, NoSuchNamespaceError):
        raise SourceNotFound(
            source, f"no table {spec.table!r} in {described}{_tables_hint(catalog, spec.table)}"
        ) from None
    except SourceUnreachable:
        raise
    except Exception as exc:
        raise SourceUnreachable(source, f"{described} failed loading {spec.table}: {exc}") from None


def _describe_catalog(catalog: str | dict[str, str]) -> str:
    if isinstance(catalog, str):
        return f"catalog {catalog!r}"
    return f"catalog at {catalog.get('uri', '(no uri)')}"


def _tables_hint(catalog: Catalog, table: str) -> str:
    namespace = table.rsplit(".", 1)[0]
    try:
        names = sorted(".".join(ident) for ident in catalog.list_tables(namespace))
    except Exception:  # the namespace itself may be missing; the hint is best effort
        return f" (namespace {namespace!r} does not exist)"
    return f"; tables in {namespace!r}: {names}" if names else f"; {namespace!r} has no tables"


def _with_timeout(source: str, timeout_s: float, what: str, call: Callable[[], _T]) -> _T:
    """Run a catalog call with a deadline: clients such as REST retry for minutes.

    The call runs on a daemon thread, so one that never returns cannot hold up exit.
    """
    outcome: list[Any] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, name="tidemill-iceberg-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise SourceUnreachable(source, f"no answer after {timeout_s:g}s {what}")
    if failure:
        raise failure[0]
    result: _T = outcome[0]
    return result


def _snapshot(source: str, spec: IcebergSource, table: Table) -> Snapshot | None:
    if spec.snapshot_id is not None:
        snapshot = table.snapshot_by_id(spec.snapshot_id)
        if snapshot is None:
            known = [s.snapshot_id for s in table.snapshots()][-5:]
            raise SourceNotFound(
                source,
                f"{spec.table} has no snapshot {spec.snapshot_id}; latest snapshots: {known}",
            )
        return snapshot
    if spec.as_of is not None:
        snapshot = table.snapshot_as_of_timestamp(epoch_ms(spec.as_of))
        if snapshot is None:
            history = table.history()
            first = history[0].timestamp_ms if history else None
            raise SourceNotFound(
                source,
                f"{spec.table} had no snapshot at or before {spec.as_of.isoformat()}"
                + (f"; its first was committed at epoch ms {first}" if first else ""),
            )
        return snapshot
    return table.current_snapshot()


def _schema_of(table: Table, snapshot: Snapshot) -> Schema:
    schemas = table.schemas()
    if snapshot.schema_id is not None and snapshot.schema_id in schemas:
        return schemas[snapshot.schema_id]
    return table.schema()


def _check_columns(source: str, table: str, schema: Schema, columns: Sequence[str]) -> None:
    names = [field.name for field in schema.fields]
    missing = [name for name in columns if name not in names]
    if missing:
        raise SourceNotFound(source, f"no column(s) {missing} in {table}; its columns are {names}")


def _check_readable(source: str, table: str, task: FileScanTask) -> None:
    if task.file.file_format != FileFormat.PARQUET:
        raise UnsupportedData(
            source,
            f"{table} data file {task.file.file_path} is {task.file.file_format}; "
            "only Parquet data files are read (rewrite the table as Parquet)",
        )
    if task.delete_files:
        raise UnsupportedData(
            source,
            f"{table} data file {task.file.file_path} has {len(task.delete_files)} delete "
            "file(s); merge-on-read deletes are not read yet: compact the table "
            "(rewrite_data_files) or read a snapshot from before the deletes",
        )


def _row_group_sizes(source: str, table: Table, task: FileScanTask) -> list[int]:
    path = task.file.file_path
    with table.io.new_input(path).open() as stream:
        return row_group_sizes(open_parquet_stream(source, path, stream))


@lru_cache(maxsize=16)
def _static_table(metadata_location: str, io_properties: tuple[tuple[str, str], ...]) -> Table:
    """Workers read many shards of one snapshot: load its metadata once per process."""
    return StaticTable.from_metadata(metadata_location, properties=dict(io_properties))


def read_iceberg_shard(
    shard: Shard, columns: Sequence[str] | None, start_at: int, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Batches of the shard's row groups in the table's schema, filtered, from ``start_at``."""
    if shard.file is None or shard.iceberg is None:
        raise ValueError(f"shard {shard.id!r} of kind {shard.kind} names no Iceberg data file")
    file, where = shard.file, shard.iceberg
    table = _static_table(where.metadata_location, where.io_properties)
    schema = table.schemas().get(where.schema_id) or table.schema()
    wanted = list(columns or shard.columns or [field.name for field in schema.fields])
    _check_columns(shard.source, where.table, schema, wanted)
    with table.io.new_input(file.path).open() as stream:
        parquet = open_parquet_stream(shard.source, file.path, stream, shard.id)
        projection = _Projection.build(schema, parquet.schema_arrow, wanted, where.filter)
        yield from read_row_groups(
            parquet,
            source=shard.source,
            shard=shard.id,
            url=file.path,
            row_groups=range(file.row_group_start, file.row_group_stop),
            columns=projection.file_columns,
            start_at=start_at,
            batch_rows=batch_rows,
            convert=projection.apply,
            drops_rows=projection.row_filter is not None,
        )


@dataclass(frozen=True)
class _Projection:
    """Maps a data file's columns to the table schema by field id, then filters rows.

    A column renamed since the file was written is found by its id; a column added later
    reads as nulls; types widened since (int to long) are cast.
    """

    file_columns: list[str]
    sources: list[str | None]
    target: pa.Schema
    wanted: list[str]
    row_filter: pc.Expression | None

    @classmethod
    def build(
        cls, schema: Schema, file_schema: pa.Schema, wanted: list[str], row_filter: str | None
    ) -> _Projection:
        bound: BooleanExpression | None = None
        needed = list(wanted)
        if row_filter:
            bound = bind(schema, parse(row_filter), case_sensitive=True)
            for field_id in sorted(extract_field_ids(bound)):
                name = (schema.find_column_name(field_id) or "").split(".")[0]
                if name and name not in needed:
                    needed.append(name)
        by_id = {
            int(field.metadata[_FIELD_ID]): field.name
            for field in file_schema
            if field.metadata and _FIELD_ID in field.metadata
        }
        sources: list[str | None] = []
        fields: list[pa.Field] = []
        for name in needed:
            column = schema.find_field(name)
            in_file = by_id.get(column.field_id) if by_id else name
            present = in_file if in_file in file_schema.names else None
            sources.append(present)
            wanted_type = schema_to_pyarrow(column.field_type, include_field_ids=False)
            if present is not None:
                wanted_type = _keep_width(file_schema.field(present).type, wanted_type)
            fields.append(pa.field(name, wanted_type))
        return cls(
            file_columns=[s for s in sources if s is not None],
            sources=sources,
            target=pa.schema(fields),
            wanted=wanted,
            row_filter=expression_to_pyarrow(bound) if bound is not None else None,
        )

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for source, field in zip(self.sources, self.target, strict=True):
            if source is None:
                arrays.append(pa.nulls(batch.num_rows, field.type))
                continue
            column = batch.column(source)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        out = pa.RecordBatch.from_arrays(arrays, schema=self.target)
        if self.row_filter is not None:
            out = out.filter(self.row_filter)
        if len(self.wanted) != len(self.target):
            out = out.select(self.wanted)
        return out


_LARGE = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}


def _keep_width(found: pa.DataType, wanted: pa.DataType) -> pa.DataType:
    """The file's type when it differs from the wanted one only in offset width.

    pyiceberg maps strings to ``large_string``; casting every batch of a ``string`` column
    to it copies the column for nothing.
    """
    return found if _LARGE.get(found, found) == _LARGE.get(wanted, wanted) else wanted
