"""Training data: Parquet files, Iceberg tables and Kafka streams as shards of Arrow batches.

Training code iterates :func:`loader`: batches from the job's ``spec.data`` plan,
committed with the model inside the elastic loop, so no record is lost or trained
twice across failures and resizes::

    >>> import tidemill.data
    >>> for batch in tidemill.data.loader(batch_size=256, columns=["user", "item", "label"]):
    ...     ...

Below it, the pieces the job master and the loader are built from:

The job master plans shards (:func:`plan_shards` for tables and files,
:func:`partition_leases` for streams) and hands them to workers as JSON
(:meth:`Shard.to_json`); a worker reads one with :func:`read_shard` and reports the
reader's ``position``, which resumes reading exactly after the last committed record.

Example::

    >>> from tidemill.data import SourceSpec, plan_shards, read_shard
    >>> spec = SourceSpec.model_validate({"parquet": {"path": "clicks/"}})
    >>> for shard in plan_shards(spec):
    ...     with read_shard(shard) as reader:
    ...         rows = sum(batch.num_rows for batch in reader)

Spec, shard and error types import cheaply; the readers (pyarrow, pyiceberg,
confluent-kafka) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tidemill.api.data import DEFAULT_ROWS_PER_SHARD
from tidemill.api.sources import (
    IcebergSource,
    KafkaEnd,
    KafkaSource,
    KafkaStart,
    ParquetSource,
    SourceKind,
    SourceSpec,
    ValueFormat,
)
from tidemill.data._errors import (
    CorruptData,
    DataError,
    SchemaChanged,
    SourceNotFound,
    SourceUnreachable,
    UnsupportedData,
)
from tidemill.data._planning import partition_leases, plan_shards
from tidemill.data._shards import FileRange, IcebergFile, PartitionLease, Shard

if TYPE_CHECKING:
    from tidemill.data._insight import DataInsight, SourceSnapshot, SourceStats
    from tidemill.data._kafka import commit_offsets
    from tidemill.data._kafka_reader import KafkaShardReader
    from tidemill.data._loader import Loader, loader
    from tidemill.data._reader import DEFAULT_BATCH_ROWS, ShardReader, read_shard

__all__ = [
    "DEFAULT_BATCH_ROWS",
    "DEFAULT_ROWS_PER_SHARD",
    "CorruptData",
    "DataError",
    "DataInsight",
    "FileRange",
    "IcebergFile",
    "IcebergSource",
    "KafkaEnd",
    "KafkaShardReader",
    "KafkaSource",
    "KafkaStart",
    "Loader",
    "ParquetSource",
    "PartitionLease",
    "SchemaChanged",
    "Shard",
    "ShardReader",
    "SourceKind",
    "SourceNotFound",
    "SourceSnapshot",
    "SourceSpec",
    "SourceStats",
    "SourceUnreachable",
    "UnsupportedData",
    "ValueFormat",
    "commit_offsets",
    "loader",
    "partition_leases",
    "plan_shards",
    "read_shard",
]

_LAZY = {
    "DataInsight": "_insight",
    "SourceSnapshot": "_insight",
    "SourceStats": "_insight",
    "commit_offsets": "_kafka",
    "KafkaShardReader": "_kafka_reader",
    "Loader": "_loader",
    "loader": "_loader",
    "DEFAULT_BATCH_ROWS": "_reader",
    "ShardReader": "_reader",
    "read_shard": "_reader",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tidemill.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tidemill.data.{module}"), name)
