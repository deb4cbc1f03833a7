"""The TrainingJob: the one job type for PS-Worker and AllReduce training.

Field names follow the YAML contract in DESIGN.md (camelCase in files, snake_case in
Python). Quantities accept Kubernetes notation and are normalised: cpu in cores,
memory in bytes, gpu in devices (fractions below 1 share a device).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tidemill.api._model import (
    Int64,
    SpecModel,
    validate_dns_label,
    validate_labels,
    validate_line,
)
from tidemill.api.checkpoint import CheckpointSpec
from tidemill.api.data import DataSpec, ShuffleSpec, StageSource, StageSpec
from tidemill.api.limits import (
    INT64_MAX,
    MAX_ARG_BYTES,
    MAX_ARGV_ITEMS,
    MAX_BACKOFF_S,
    MAX_ENV_ITEMS,
    MAX_PODS_PER_JOB,
    MAX_REPLICA_ARGV_ENV_BYTES,
    MAX_REPLICAS_PER_ROLE,
    shown,
    utf8_size,
)
from tidemill.api.metrics import TensorBoardSpec
from tidemill.api.ps import (
    DEFAULT_VIRTUAL_SHARDS,
    MAX_STALENESS_STEPS,
    MAX_TABLES,
    MAX_VIRTUAL_SHARDS,
    Admission,
    Consistency,
    Eviction,
    PSServerSpec,
    TableOptimizer,
    TableSpec,
    tables_problems,
)
from tidemill.api.resources import Resources
from tidemill.api.sources import IcebergSource, KafkaSource, ParquetSource
from tidemill.api.topology import TopologySpec

API_VERSION = "tidemill/v1"
"""What job files say, and what :meth:`TrainingJob.to_document` writes."""
CRD_GROUP = "tidemill.io"
CRD_VERSION = "v1"
CRD_API_VERSION = f"{CRD_GROUP}/{CRD_VERSION}"
"""The same job as a Kubernetes custom object (``kubectl apply -f job.yaml``)."""
API_VERSIONS = (API_VERSION, CRD_API_VERSION)
KIND = "TrainingJob"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_ROLES = ("chief", "worker", "ps", "evaluator")
"""Roles a job file may declare. ``master`` is reserved for tidemill's per-job master."""
_PS_ONLY = ("tables", "consistency", "max_staleness_steps", "virtual_shards")
"""RoleSpec fields that configure tidemill's PS server (role ``ps`` only)."""


def _env_text(value: object) -> str:
    """Env names and values are text; numbers and booleans written bare become text."""
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise ValueError(f"env names and values are text, not {type(value).__name__}")


def _arg_size(value: str) -> str:
    size = utf8_size(value)
    if size > MAX_ARG_BYTES:
        raise ValueError(
            f"is {size:,} bytes; at most {MAX_ARG_BYTES:,} (64 KiB) per argument or env "
            "value: put large data or a long script in a file and pass its path"
        )
    return value


ArgText = Annotated[str, AfterValidator(_arg_size)]
"""One argument or environment value."""


class Mode(StrEnum):
    PS = "ps"
    ALLREDUCE = "allreduce"


class RestartPolicy(StrEnum):
    NEVER = "Never"
    ON_FAILURE = "OnFailure"
    ALWAYS = "Always"
    EXIT_CODE = "ExitCode"


class SuccessPolicy(StrEnum):
    """When the job as a whole has succeeded.

    ``Default``: the chief succeeded, or every worker if there is no chief.
    ``AllWorkers``: every worker (and the chief, if any) succeeded.
    ``AnyWorker``: the first worker to succeed ends the job.
    """

    DEFAULT = "Default"
    ALL_WORKERS = "AllWorkers"
    ANY_WORKER = "AnyWorker"


class RoleSpec(SpecModel):
    """A set of identical replicas (workers, parameter servers, the chief...)."""

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS_PER_ROLE)
    min_replicas: int | None = Field(
        default=None, ge=0, le=MAX_REPLICAS_PER_ROLE, description="elastic lower bound"
    )
    max_replicas: int | None = Field(
        default=None, ge=1, le=MAX_REPLICAS_PER_ROLE, description="elastic upper bound"
    )
    resources: Resources = Field(default_factory=Resources)
    command: list[ArgText] = Field(
        description="argv of the replica process; a ps role with tables and no command "
        "runs tidemill's own parameter server",
    )
    args: list[ArgText] = Field(default_factory=list, description="appended to command")
    env: dict[str, ArgText] = Field(default_factory=dict)
    working_dir: str | None = Field(default=None, description="relative to the job file")
    image: str | None = Field(default=None, description="container image (Kubernetes engine)")
    topology: TopologySpec | None = Field(
        default=None,
        description="pack the role's gang replicas into one domain of a topology level, "
        "e.g. {packWithin: rack, required: true}",
    )
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(
        default=3, ge=0, le=INT64_MAX, description="per replica, before the job fails"
    )
    tables: list[TableSpec] | None = Field(
        default=None,
        max_length=MAX_TABLES,
        description="ps role only: embedding tables tidemill's PS server holds",
    )
    consistency: Consistency | None = Field(
        default=None, description="ps role only: sync (exact; the default) or async"
    )
    max_staleness_steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_STALENESS_STEPS,
        description="ps role only, async: steps a pull may run ahead of the slowest worker",
    )
    virtual_shards: int | None = Field(
        default=None,
        ge=1,
        le=MAX_VIRTUAL_SHARDS,
        description="ps role only: ids hash into this many shards spread over the replicas "
        f"(default {DEFAULT_VIRTUAL_SHARDS})",
    )

    @model_validator(mode="before")
    @classmethod
    def _ps_server_command(cls, value: object) -> object:
        """Tables and no command: tidemill's PS server is the program (the command stays
        required everywhere else, and a missing one is reported at ``command``)."""
        if isinstance(value, dict) and "tables" in value and "command" not in value:
            return {**value, "command": []}
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: object) -> object:
        # Kubernetes writes env as [{name, value}]; accept that as well as a mapping.
        if isinstance(value, list):
            pairs: dict[str, str] = {}
            for item in value:
                if not isinstance(item, dict) or "name" not in item:
                    raise ValueError("env items must look like {name: X, value: Y}")
                pairs[_env_text(item["name"])] = _env_text(item.get("value", ""))
            return pairs
        if isinstance(value, dict):
            return {_env_text(k): _env_text(v) for k, v in value.items()}
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [shown(name, 30) for name in value if not _ENV_NAME.match(name)]
        if bad:
            raise ValueError(
                f"invalid variable name(s) {', '.join(bad[:5])}; use letters, digits and '_', "
                "not starting with a digit"
            )
        if len(value) > MAX_ENV_ITEMS:
            raise ValueError(f"{len(value):,} variables; at most {MAX_ENV_ITEMS:,} are accepted")
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "working directory")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "image", 1024)

    @model_validator(mode="after")
    def _argv_env_size(self) -> RoleSpec:
        """What one replica's exec gets must stay far below what the kernel accepts."""
        argv = self.argv
        if len(argv) > MAX_ARGV_ITEMS:
            raise ValueError(
                f"command and args have {len(argv):,} items together; at most "
                f"{MAX_ARGV_ITEMS:,} are accepted"
            )
        total = sum(utf8_size(arg) + 1 for arg in argv) + sum(
            utf8_size(name) + utf8_size(text) + 2 for name, text in self.env.items()
        )
        if total > MAX_REPLICA_ARGV_ENV_BYTES:
            raise ValueError(
                f"command, args and env take {total:,} bytes together; at most "
                f"{MAX_REPLICA_ARGV_ENV_BYTES:,} (256 KiB) per replica: pass large data "
                "in files"
            )
        return self

    @model_validator(mode="after")
    def _elastic_bounds(self) -> RoleSpec:
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        high = self.max_replicas if self.max_replicas is not None else self.replicas
        if not low <= self.replicas <= high:
            raise ValueError(
                f"replicas={self.replicas} must lie within minReplicas={low} and maxReplicas={high}"
            )
        return self

    @model_validator(mode="after")
    def _program(self) -> RoleSpec:
        """A replica runs the user's command, or (ps only) tidemill's PS server."""
        if self.tables is not None:
            if self.command:
                raise ValueError(
                    "give tables (tidemill's PS server runs them) or a command (your own "
                    "parameter server), not both"
                )
            problems = tables_problems(
                self.tables, self.consistency or Consistency.SYNC, self.max_staleness_steps or 0
            )
            if not self.tables:
                problems.append("tables: is empty; declare at least one table")
            if self.is_elastic:
                problems.append(
                    "tidemill's PS replicas are not elastic (the tables are sharded over "
                    f"them): drop minReplicas/maxReplicas, keep replicas: {self.replicas}"
                )
            if problems:
                raise ValueError("; ".join(problems))
        elif any(getattr(self, name) is not None for name in _PS_ONLY):
            raise ValueError(
                "consistency, maxStalenessSteps and virtualShards configure tidemill's PS "
                "server: they belong to a ps role with tables and no command"
            )
        elif not self.command:
            raise ValueError(
                "command: is empty; give the argv of the replica process (e.g. "
                "[python, train.py]), or, for a ps role, tables for tidemill's PS server"
            )
        return self

    @property
    def runs_ps_server(self) -> bool:
        """tidemill's own PS server, not a user command."""
        return self.tables is not None

    def ps_server_spec(self) -> PSServerSpec | None:
        """What this role's PS server serves, or None when it runs a user command."""
        if self.tables is None:
            return None
        return PSServerSpec(
            tables=self.tables,
            consistency=self.consistency or Consistency.SYNC,
            max_staleness_steps=self.max_staleness_steps or 0,
            virtual_shards=self.virtual_shards or DEFAULT_VIRTUAL_SHARDS,
            replicas=max(1, self.replicas),
            memory_bytes=self.resources.memory or None,
        )

    @property
    def is_elastic(self) -> bool:
        return self.min_bound < self.max_bound

    @property
    def min_bound(self) -> int:
        return self.min_replicas if self.min_replicas is not None else self.replicas

    @property
    def max_bound(self) -> int:
        return self.max_replicas if self.max_replicas is not None else self.replicas

    @property
    def argv(self) -> list[str]:
        return [*self.command, *self.args]


class Metadata(SpecModel):
    name: str
    namespace: str = Field(default="default", description="the tenant; also the default queue")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_dns_label(value, "job name")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return validate_dns_label(value, "namespace")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return validate_labels(value)


class TrainingJobSpec(SpecModel):
    mode: Mode = Mode.ALLREDUCE
    queue: str | None = Field(default=None, description="defaults to the job's namespace")
    priority: Int64 = Field(default=0, description="higher runs first and may preempt lower")
    priority_class_name: str | None = Field(
        default=None, description="named priority from the cluster file; sets priority"
    )
    roles: dict[str, RoleSpec]
    success_policy: SuccessPolicy = SuccessPolicy.DEFAULT
    active_deadline_seconds: int | None = Field(default=None, gt=0, le=INT64_MAX)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT64_MAX)
    restart_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        le=MAX_BACKOFF_S,
        description="first restart delay; doubles per restart, max 5 min",
    )
    data: DataSpec | None = Field(
        default=None, description="stages of Parquet, Iceberg and Kafka sources"
    )
    checkpoint: CheckpointSpec | None = Field(
        default=None, description="durable checkpoints: where, how often, how many kept"
    )
    tensorboard: TensorBoardSpec | None = Field(
        default=None, description="write the job's training metrics as TensorBoard event files"
    )
    suspend: bool = Field(
        default=False,
        description="submit it suspended: it waits, holding nothing, until `tidemill resume`",
    )

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        return None if value is None else validate_dns_label(value, "queue name")

    @field_validator("priority_class_name")
    @classmethod
    def _priority_class(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "priority class name", 253)

    @field_validator("roles")
    @classmethod
    def _role_names(cls, roles: dict[str, RoleSpec]) -> dict[str, RoleSpec]:
        unknown = sorted(shown(role, 30) for role in set(roles) - set(USER_ROLES))
        if "'master'" in unknown:
            raise ValueError(
                "'master' is reserved for tidemill's own per-job master; call the rank-0 "
                "role 'chief'"
            )
        if unknown:
            raise ValueError(
                f"unknown role(s) {', '.join(unknown[:5])}; roles are {', '.join(USER_ROLES)}"
            )
        return roles

    @model_validator(mode="after")
    def _shape(self) -> TrainingJobSpec:
        problems: list[str] = []
        if "worker" not in self.roles and "chief" not in self.roles:
            problems.append("a job needs a 'worker' or a 'chief' role")
        chief = self.roles.get("chief")
        if chief is not None and chief.max_bound > 1:
            problems.append("roles.chief: there is at most one chief (replicas: 1)")
        if self.mode is Mode.PS and "ps" not in self.roles:
            problems.append("mode 'ps' needs a 'ps' role with the parameter servers")
        if self.mode is Mode.ALLREDUCE and "ps" in self.roles:
            problems.append("mode 'allreduce' has no parameter servers; use mode: ps")
        for name, role in self.roles.items():
            misplaced = [f for f in _PS_ONLY if getattr(role, f) is not None]
            if name != "ps" and misplaced:
                fields = ", ".join(to_camel(f) for f in misplaced)
                problems.append(
                    f"roles.{name}: {fields} belong to the ps role (tidemill's parameter "
                    "servers); move them under roles.ps"
                )
        pods = sum(role.max_bound for role in self.roles.values())
        if pods > MAX_PODS_PER_JOB:
            sizes = " + ".join(f"{role.max_bound:,} {name}" for name, role in self.roles.items())
            problems.append(
                f"the job may grow to {pods:,} replicas ({sizes}); at most "
                f"{MAX_PODS_PER_JOB:,} per job: split it into several jobs"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class TrainingJob(SpecModel):
    api_version: str = Field(default=API_VERSION)
    kind: str = Field(default=KIND)
    metadata: Metadata
    spec: TrainingJobSpec

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        """Both spellings read into one model, which writes ``tidemill/v1`` back."""
        if value not in API_VERSIONS:
            raise ValueError(
                f"{shown(value)} is not supported; use '{API_VERSION}' (a job file) or "
                f"'{CRD_API_VERSION}' (a Kubernetes custom object)"
            )
        return API_VERSION

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"{shown(value)} is not supported here; use '{KIND}'")
        return value

    @property
    def key(self) -> str:
        """``namespace/name``: unique across the control plane."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def queue_name(self) -> str:
        return self.spec.queue or self.metadata.namespace

    @property
    def ps_server(self) -> PSServerSpec | None:
        """The tables of tidemill's own PS server, when the ``ps`` role runs it."""
        role = self.spec.roles.get("ps")
        return None if role is None else role.ps_server_spec()

    def to_document(self) -> dict[str, Any]:
        """The job as a JSON-able dict in job-file form (round-trips through the loader)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def spec_field_names() -> dict[str, str]:
    """Every field a job file may use and where it belongs, for 'did you mean' hints.

    A name used at several levels (``name``, ``priority``, ``columns``) names them all.
    """
    source = "spec.data.stages.<i>.sources.<j>"
    places = (
        (Resources, "spec.roles.<role>.resources"),
        (RoleSpec, "spec.roles.<role>"),
        (TopologySpec, "spec.roles.<role>.topology"),
        (Metadata, "metadata"),
        (TrainingJobSpec, "spec"),
        (TrainingJob, "the top level"),
        (DataSpec, "spec.data"),
        (ShuffleSpec, "spec.data.shuffle"),
        (StageSpec, "spec.data.stages.<i>"),
        (StageSource, source),
        (ParquetSource, f"{source}.parquet"),
        (IcebergSource, f"{source}.iceberg"),
        (KafkaSource, f"{source}.kafka"),
        (TableSpec, "spec.roles.ps.tables.<i>"),
        (TableOptimizer, "spec.roles.ps.tables.<i>.optimizer"),
        (Admission, "spec.roles.ps.tables.<i>.admission"),
        (Eviction, "spec.roles.ps.tables.<i>.eviction"),
    )
    where: dict[str, list[str]] = {}
    for model, place in places:
        for name, field in model.model_fields.items():
            where.setdefault(field.alias or name, []).append(place)
    return {name: " or ".join(found) for name, found in where.items()}
