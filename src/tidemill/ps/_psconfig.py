"""What every parameter-server process and client agrees on: tables, consistency, sharding.

The launcher writes a :class:`PSConfig` as JSON into ``TIDEMILL_PS`` and the server
addresses into ``TIDEMILL_PS_ADDRS``, so the PS replicas and the workers of one job read
the same values from their environment.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ValidationError

from tidemill.api.ps import (
    Admission,
    Eviction,
    OptimizerName,
    PSServerSpec,
    TableOptimizer,
    TableSpec,
)
from tidemill.api.ps import (
    Consistency as ConsistencyName,
)
from tidemill.ps._config import TableConfig
from tidemill.ps._errors import PSConfigError
from tidemill.ps._optimizers import OptimizerConfig

Consistency = Literal["sync", "async"]
Address = tuple[str, int]

ENV_CONFIG = "TIDEMILL_PS"
ENV_ADDRESSES = "TIDEMILL_PS_ADDRS"
ENV_INDEX = "TIDEMILL_INDEX"


@dataclass(frozen=True)
class PSConfig:
    """The tables a job's PS replicas hold and how workers see their updates.

    ``consistency="sync"``: a pull tagged step s sees exactly the pushes of every rank up
    to step s-1 (the same result as one process training on the combined batch).
    ``"async"``: pushes apply as they arrive and a pull may run ``max_staleness`` steps
    ahead of the slowest rank's applied pushes. ``virtual_shards`` buckets ids by hash;
    ``shard_map`` (virtual shard -> replica index, default ``v % replicas``) places the
    buckets, so moving a bucket is a config change, not a rehash.

    >>> from tidemill.ps import OptimizerConfig, TableConfig
    >>> table = TableConfig("user", 8, OptimizerConfig("adagrad", lr=0.1), 0.01, 7)
    >>> PSConfig.from_json(PSConfig((table,)).to_json()).tables[0].name
    'user'
    """

    tables: tuple[TableConfig, ...]
    consistency: Consistency = "sync"
    max_staleness: int = 0
    virtual_shards: int = 1024
    shard_map: tuple[int, ...] | None = None
    pull_timeout_s: float = 60.0
    max_frame_bytes: int = 1 << 28
    memory_bytes: int | None = None
    """Each replica's memory: the tables get row budgets that keep them within a share
    of it (see :func:`tidemill.ps._budget.row_budgets`)."""

    def __post_init__(self) -> None:
        if not self.tables:
            raise PSConfigError("tables: empty; give at least one TableConfig")
        names = [table.name for table in self.tables]
        for index, name in enumerate(names):
            if not name or names.index(name) != index:
                raise PSConfigError(
                    f"tables[{index}].name: {name!r} is empty or repeated; names must be unique"
                )
        if self.consistency not in ("sync", "async"):
            raise PSConfigError(f"consistency: {self.consistency!r} is not one of 'sync', 'async'")
        if self.max_staleness < 0:
            raise PSConfigError(f"max_staleness: {self.max_staleness} is negative; use >= 0")
        if not 1 <= self.virtual_shards <= 1 << 20:
            raise PSConfigError(
                f"virtual_shards: {self.virtual_shards} is out of range; use 1 .. {1 << 20}"
            )
        if self.shard_map is not None and len(self.shard_map) != self.virtual_shards:
            raise PSConfigError(
                f"shard_map: has {len(self.shard_map)} entries; it needs one per virtual"
                f" shard ({self.virtual_shards})"
            )
        if self.pull_timeout_s <= 0:
            raise PSConfigError(f"pull_timeout_s: {self.pull_timeout_s} must be positive")
        if self.max_frame_bytes < 1 << 16:
            raise PSConfigError(f"max_frame_bytes: {self.max_frame_bytes} is below 65536")

    def table(self, name: str) -> TableConfig:
        """The table called ``name``; the error lists the tables that exist."""
        for table in self.tables:
            if table.name == name:
                return table
        raise PSConfigError(f"table {name!r} is not configured; tables: {self.table_names}")

    @property
    def table_names(self) -> list[str]:
        return [table.name for table in self.tables]

    def to_json(self) -> str:
        return json.dumps(_plain(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PSConfig:
        """Parse :meth:`to_json` output; a bad field raises :class:`PSConfigError` naming it."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PSConfigError(f"{ENV_CONFIG}: not JSON ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("tables"), list):
            raise PSConfigError(f"{ENV_CONFIG}: needs an object with a 'tables' list")
        tables = tuple(_table_from(index, item) for index, item in enumerate(raw["tables"]))
        shard_map = raw.get("shard_map")
        fields = {**raw, "tables": tables}
        if shard_map is not None:
            fields["shard_map"] = tuple(shard_map)
        try:
            return cls(**fields)
        except TypeError as exc:
            raise PSConfigError(f"{ENV_CONFIG}: {exc}") from exc

    @classmethod
    def from_spec(cls, spec: PSServerSpec) -> PSConfig:
        """The job file's ``roles.ps`` (as ``TIDEMILL_PS`` carries it) as the servers'
        and clients' config."""
        return cls(
            tables=tuple(_table_of(table) for table in spec.tables),
            consistency=spec.consistency.value,
            max_staleness=spec.max_staleness_steps,
            virtual_shards=spec.virtual_shards,
            pull_timeout_s=spec.pull_timeout_seconds,
            memory_bytes=spec.memory_bytes,
        )

    def to_spec(self, replicas: int) -> PSServerSpec:
        """The inverse of :meth:`from_spec` (what the launcher would write for it)."""
        return PSServerSpec(
            tables=[_spec_of(table) for table in self.tables],
            consistency=ConsistencyName(self.consistency),
            max_staleness_steps=self.max_staleness,
            virtual_shards=self.virtual_shards,
            replicas=replicas,
            pull_timeout_seconds=self.pull_timeout_s,
            memory_bytes=self.memory_bytes,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> PSConfig:
        """``TIDEMILL_PS``: the job's :class:`~tidemill.api.ps.PSServerSpec` as JSON."""
        text = environ.get(ENV_CONFIG)
        if not text:
            raise PSConfigError(f"{ENV_CONFIG} is not set; the launcher writes the ps role there")
        try:
            spec = PSServerSpec.model_validate_json(text)
        except ValidationError as exc:
            raise PSConfigError(f"{ENV_CONFIG}: {exc}") from exc
        return cls.from_spec(spec)


def _plain(value: Any) -> Any:
    """A dataclass as JSON-ready values, leaving out derived (``init=False``) fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _table_from(index: int, item: Any) -> TableConfig:
    if not isinstance(item, dict) or not isinstance(item.get("optimizer"), dict):
        raise PSConfigError(f"tables[{index}]: needs an object with an 'optimizer' object")
    try:
        return TableConfig(**{**item, "optimizer": OptimizerConfig(**item["optimizer"])})
    except (TypeError, ValueError) as exc:
        raise PSConfigError(f"tables[{index}]: {exc}") from exc


def _table_of(spec: TableSpec) -> TableConfig:
    optimizer = spec.optimizer
    return TableConfig(
        name=spec.name,
        dim=spec.dim,
        optimizer=OptimizerConfig(
            kind=optimizer.name.value,
            lr=optimizer.lr,
            eps=optimizer.eps,
            beta1=optimizer.beta1,
            beta2=optimizer.beta2,
            initial_accumulator=optimizer.initial_accumulator,
            l1=optimizer.l1,
            l2=optimizer.l2,
            beta=optimizer.beta,
        ),
        init_scale=spec.init_scale,
        seed=spec.seed,
        admit_min_count=spec.admission.min_count,
        ttl_steps=spec.eviction.ttl_steps,
        max_rows=spec.eviction.max_rows,
    )


def _spec_of(table: TableConfig) -> TableSpec:
    optimizer = table.optimizer
    return TableSpec(
        name=table.name,
        dim=table.dim,
        optimizer=TableOptimizer(
            name=OptimizerName(optimizer.kind),
            lr=optimizer.lr,
            eps=optimizer.eps,
            beta1=optimizer.beta1,
            beta2=optimizer.beta2,
            initial_accumulator=optimizer.initial_accumulator,
            l1=optimizer.l1,
            l2=optimizer.l2,
            beta=optimizer.beta,
        ),
        init_scale=table.init_scale,
        seed=table.seed,
        admission=Admission(min_count=table.admit_min_count),
        eviction=Eviction(ttl_steps=table.ttl_steps, max_rows=table.max_rows),
    )


def addresses_from_env(environ: Mapping[str, str]) -> tuple[Address, ...]:
    """``TIDEMILL_PS_ADDRS`` (``host:port,host:port``, replica index order) as pairs."""
    text = environ.get(ENV_ADDRESSES, "")
    if not text.strip():
        raise PSConfigError(f"{ENV_ADDRESSES} is not set; expected host:port,host:port,...")
    return tuple(parse_address(entry.strip()) for entry in text.split(","))


def parse_address(entry: str) -> Address:
    host, sep, port = entry.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise PSConfigError(f"{ENV_ADDRESSES}: {entry!r} is not host:port")
    return host.strip("[]"), int(port)


def index_from_env(environ: Mapping[str, str], replicas: int) -> int:
    """This PS replica's ``TIDEMILL_INDEX``, checked against the address list."""
    text = environ.get(ENV_INDEX, "")
    if not text.isdigit() or int(text) >= replicas:
        raise PSConfigError(f"{ENV_INDEX}: {text!r} is not a replica index in 0 .. {replicas - 1}")
    return int(text)
