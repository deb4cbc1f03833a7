"""``spec.roles.ps.tables``: the embedding tables tidemill's own parameter servers hold.

A ``ps`` role with ``tables`` and no ``command`` runs tidemill's PS server; each table
is sharded over the role's replicas by a hash of the id. The job file names the
optimizer the server applies inside each push, and how rows are admitted and evicted:

.. code-block:: yaml

    roles:
      ps:
        replicas: 2
        tables:
          - {name: user, dim: 16, optimizer: {name: adagrad, lr: 0.05}}
          - name: item
            dim: 32
            optimizer: {name: ftrl, lr: 0.1, l1: 0.001}
            admission: {minCount: 2}
            eviction: {ttlSteps: 100000, maxRows: 50000000}
        consistency: sync
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator

from tidemill.api._model import SpecModel
from tidemill.api.limits import INT64_MAX, shown

PS_VAR = "TIDEMILL_PS"
"""The PS server's tables and consistency (JSON of :class:`PSServerSpec`), given to the
PS replicas, the workers (their clients) and the job master."""
PS_ADDRS_VAR = "TIDEMILL_PS_ADDRS"
"""``host:port`` of every PS replica, comma-separated in index order."""
PS_SERVER_MODULE = "tidemill.ps"
"""What a ps role with tables and no command runs: ``python -m tidemill.ps``."""
MAX_TABLES = 256
MAX_DIM = 65_536
MAX_VIRTUAL_SHARDS = 1 << 20
DEFAULT_VIRTUAL_SHARDS = 1024
MAX_STALENESS_STEPS = 1_000_000
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class OptimizerName(StrEnum):
    SGD = "sgd"
    ADAGRAD = "adagrad"
    ADAM = "adam"
    FTRL = "ftrl"


class Consistency(StrEnum):
    SYNC = "sync"
    """A step's pushes from every worker are applied before any worker's next pull: exact."""
    ASYNC = "async"
    """Pushes apply as they arrive; a pull waits only for ranks more than
    ``maxStalenessSteps`` behind."""


class TableOptimizer(SpecModel):
    """The optimizer the server applies to a row inside each push. Defaults follow
    ``torch.optim`` (Adagrad eps 1e-10, Adam betas 0.9/0.999 and eps 1e-8); FTRL is
    FTRL-Proximal (McMahan et al., 2013): ``lr`` is its alpha."""

    name: OptimizerName = Field(description="sgd | adagrad | adam | ftrl")
    lr: float | None = Field(
        default=None,
        gt=0,
        le=1e6,
        description="default as torch: sgd 1e-3, adagrad 1e-2, adam 1e-3; ftrl 0.05",
    )
    eps: float | None = Field(default=None, ge=0, le=1.0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    initial_accumulator: float = Field(default=0.0, ge=0, le=1e6)
    l1: float = Field(default=0.0, ge=0, le=1e6)
    l2: float = Field(default=0.0, ge=0, le=1e6)
    beta: float = Field(default=1.0, ge=0, le=1e6, description="FTRL's beta")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: object) -> object:
        names = ", ".join(o.value for o in OptimizerName)
        if isinstance(value, str) and value.lower() in {o.value for o in OptimizerName}:
            return value.lower()
        raise ValueError(f"{shown(value)} is not an optimizer tidemill's PS runs; use {names}")


class Admission(SpecModel):
    """When an id gets a row: rare ids (typos, bots, one-off sessions) cost no memory."""

    min_count: int = Field(
        default=1, ge=1, le=1_000_000, description="pulls of an id before its row is created"
    )


class Eviction(SpecModel):
    """When rows go: not seen for ``ttlSteps`` steps, or least frequently used first once
    a shard holds more than ``maxRows`` (per shard)."""

    ttl_steps: int | None = Field(default=None, ge=1, le=INT64_MAX)
    max_rows: int | None = Field(default=None, ge=1, le=1 << 40, description="per PS shard")


class TableSpec(SpecModel):
    """One sparse embedding table: any non-negative int64 id, its own row (no hashing of
    ids into a fixed size), the optimizer's state kept beside the row."""

    name: str
    dim: int = Field(ge=1, le=MAX_DIM, description="floats per row")
    optimizer: TableOptimizer = Field(description="applied on the server inside each push")
    init_scale: float = Field(
        default=0.01, ge=0, le=1e3, description="new rows start uniform in [-scale, scale]"
    )
    seed: int = Field(default=0, ge=0, le=INT64_MAX, description="of the rows' start values")
    admission: Admission = Field(default_factory=Admission)
    eviction: Eviction = Field(default_factory=Eviction)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TABLE_NAME.match(value):
            raise ValueError(
                f"{shown(value, 40)} is not a table name: use at most 63 letters, digits and "
                "'_', not starting with a digit (e.g. 'user_id')"
            )
        return value


def tables_problems(
    tables: list[TableSpec], consistency: Consistency, max_staleness_steps: int
) -> list[str]:
    """What is wrong with a ``ps`` role's tables as a whole (each table checks itself)."""
    problems: list[str] = []
    seen: set[str] = set()
    for position, table in enumerate(tables):
        if table.name in seen:
            problems.append(
                f"tables.{position}.name: {table.name!r} is declared twice; table names are "
                "unique within a job"
            )
        seen.add(table.name)
    if consistency is Consistency.SYNC and max_staleness_steps:
        problems.append(
            f"maxStalenessSteps={max_staleness_steps} has no effect with consistency: sync; "
            "set consistency: async, or drop maxStalenessSteps"
        )
    return problems


class PSServerSpec(SpecModel):
    """What tidemill's PS server and its clients are told: a ``ps`` role's tables and
    consistency, as ``TIDEMILL_PS``."""

    tables: list[TableSpec] = Field(min_length=1, max_length=MAX_TABLES)
    consistency: Consistency = Consistency.SYNC
    max_staleness_steps: int = Field(default=0, ge=0, le=MAX_STALENESS_STEPS)
    virtual_shards: int = Field(default=DEFAULT_VIRTUAL_SHARDS, ge=1, le=MAX_VIRTUAL_SHARDS)
    replicas: int = Field(ge=1, description="PS replicas the tables are sharded over")
    pull_timeout_seconds: float = Field(
        default=60.0, gt=0, le=86_400, description="how long a pull waits for slow ranks"
    )
    memory_bytes: int | None = Field(
        default=None,
        ge=1,
        description="each replica's memory (resources.memory): its tables "
        "are held to a share of it, evicting least-used rows rather than running out",
    )

    def to_env(self) -> dict[str, str]:
        return {PS_VAR: self.model_dump_json(by_alias=True)}
