"""Planning: a source in, its shards out (row-group ranges, or partition leases)."""

from __future__ import annotations

from tidemill.api.data import DEFAULT_ROWS_PER_SHARD
from tidemill.api.sources import SourceSpec
from tidemill.data._shards import Shard


def plan_shards(source: SourceSpec, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD) -> list[Shard]:
    """Split a batch source (parquet, iceberg) into shards of whole row groups.

    Consecutive row groups of a file are packed up to ``rows_per_shard`` rows; a larger
    row group is a shard by itself. The order is stable (files sorted, row groups in file
    order); shuffle it per epoch with :func:`shuffle_shards`.

    Example::

        >>> spec = SourceSpec.model_validate({"parquet": {"path": "clicks/"}})
        >>> shards = plan_shards(spec)
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    name = source.display_name
    if source.parquet is not None:
        from tidemill.data._parquet import plan_parquet

        return plan_parquet(name, source.parquet, rows_per_shard)
    if source.iceberg is not None:
        from tidemill.data._iceberg import plan_iceberg

        return plan_iceberg(name, source.iceberg, rows_per_shard)
    raise ValueError(f"source {name!r} is a stream; plan it with partition_leases()")


def partition_leases(source: SourceSpec) -> list[Shard]:
    """One lease per partition of a kafka source, its start (and end) resolved to offsets.

    Example::

        >>> kafka = {"bootstrap": "127.0.0.1:9092", "topics": ["clicks"], "start": "earliest"}
        >>> leases = partition_leases(SourceSpec.model_validate({"kafka": kafka}))
    """
    if source.kafka is None:
        raise ValueError(f"source {source.display_name!r} is not a stream; use plan_shards()")
    from tidemill.data._kafka import plan_kafka

    return plan_kafka(source.display_name, source.kafka)
