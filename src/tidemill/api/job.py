"""The TrainingJob: the one job type for PS-Worker and AllReduce training.

Field names follow the YAML contract in DESIGN.md (camelCase in files, snake_case in
Python). Quantities accept Kubernetes notation and are normalised: cpu in cores,
memory in bytes, gpu in devices (fractions below 1 share a device).
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from tidemill.api._model import SpecModel, validate_dns_label
from tidemill.api.data import DataSpec, ShuffleSpec, StageSource, StageSpec
from tidemill.api.quantity import CpuCores, MemoryBytes
from tidemill.data._sources import IcebergSource, KafkaSource, ParquetSource

API_VERSION = "tidemill/v1"
KIND = "TrainingJob"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
USER_ROLES = ("chief", "worker", "ps", "evaluator")
"""Roles a job file may declare. ``master`` is reserved for tidemill's per-job master."""


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


class Resources(SpecModel):
    """What one replica needs. ``gpu`` may be fractional (0.5) to share a device."""

    cpu: CpuCores = Field(default=1.0, description="CPU cores; '500m' means 0.5")
    memory: MemoryBytes = Field(default=2**30, description="bytes; '2Gi' and '512Mi' accepted")
    gpu: float = Field(default=0.0, description="whole devices, or a fraction below 1")
    gpu_model: str | None = Field(default=None, description="e.g. 'A100'; any model if unset")

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number of GPUs such as 1, 2 or 0.5")
        try:
            gpus = float(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a number of GPUs; write 1, 2 or 0.5") from None
        if gpus < 0:
            raise ValueError("must not be negative")
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(
                f"{gpus:g} mixes whole and shared GPUs; ask for a whole number (1, 2, 8) "
                "or a fraction below 1 (0.5, 0.25)"
            )
        if 0 < gpus < 1 and round(gpus * 100) != gpus * 100:
            raise ValueError(f"{gpus:g} is finer than 0.01 of a GPU; round it (e.g. 0.25)")
        return gpus

    @property
    def cpu_millis(self) -> int:
        return round(self.cpu * 1000)


class RoleSpec(SpecModel):
    """A set of identical replicas (workers, parameter servers, the chief...)."""

    replicas: int = Field(default=1, ge=0)
    min_replicas: int | None = Field(default=None, ge=0, description="elastic lower bound")
    max_replicas: int | None = Field(default=None, ge=1, description="elastic upper bound")
    resources: Resources = Field(default_factory=Resources)
    command: list[str] = Field(min_length=1, description="argv of the replica process")
    args: list[str] = Field(default_factory=list, description="appended to command")
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = Field(default=None, description="relative to the job file")
    image: str | None = Field(default=None, description="container image (Kubernetes engine)")
    restart_policy: RestartPolicy = RestartPolicy.ON_FAILURE
    max_restarts: int = Field(default=3, ge=0, description="per replica, before the job fails")

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: object) -> object:
        # Kubernetes writes env as [{name, value}]; accept that as well as a mapping.
        if isinstance(value, list):
            pairs: dict[str, str] = {}
            for item in value:
                if not isinstance(item, dict) or "name" not in item:
                    raise ValueError("env items must look like {name: X, value: Y}")
                pairs[str(item["name"])] = str(item.get("value", ""))
            return pairs
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _ENV_NAME.match(name)]
        if bad:
            raise ValueError(f"invalid variable name(s) {bad}; use letters, digits and '_'")
        return value

    @model_validator(mode="after")
    def _elastic_bounds(self) -> RoleSpec:
        low = self.min_replicas if self.min_replicas is not None else self.replicas
        high = self.max_replicas if self.max_replicas is not None else self.replicas
        if not low <= self.replicas <= high:
            raise ValueError(
                f"replicas={self.replicas} must lie within minReplicas={low} and maxReplicas={high}"
            )
        return self

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


class TrainingJobSpec(SpecModel):
    mode: Mode = Mode.ALLREDUCE
    queue: str | None = Field(default=None, description="defaults to the job's namespace")
    priority: int = Field(default=0, description="higher runs first and may preempt lower")
    priority_class_name: str | None = Field(
        default=None, description="named priority from the cluster file; sets priority"
    )
    roles: dict[str, RoleSpec]
    success_policy: SuccessPolicy = SuccessPolicy.DEFAULT
    active_deadline_seconds: int | None = Field(default=None, gt=0)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    restart_backoff_seconds: float = Field(
        default=1.0, gt=0, description="first restart delay; doubles per restart, max 5 min"
    )
    data: DataSpec | None = Field(
        default=None, description="stages of Parquet, Iceberg and Kafka sources"
    )

    @field_validator("roles")
    @classmethod
    def _role_names(cls, roles: dict[str, RoleSpec]) -> dict[str, RoleSpec]:
        unknown = sorted(set(roles) - set(USER_ROLES))
        if "master" in unknown:
            raise ValueError(
                "'master' is reserved for tidemill's own per-job master; call the rank-0 "
                "role 'chief'"
            )
        if unknown:
            raise ValueError(f"unknown role(s) {unknown}; roles are {list(USER_ROLES)}")
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
        if value != API_VERSION:
            raise ValueError(f"{value!r} is not supported; use '{API_VERSION}'")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        if value != KIND:
            raise ValueError(f"{value!r} is not supported here; use '{KIND}'")
        return value

    @property
    def key(self) -> str:
        """``namespace/name``: unique across the control plane."""
        return f"{self.metadata.namespace}/{self.metadata.name}"

    @property
    def queue_name(self) -> str:
        return self.spec.queue or self.metadata.namespace

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
    )
    where: dict[str, list[str]] = {}
    for model, place in places:
        for name, field in model.model_fields.items():
            where.setdefault(field.alias or name, []).append(place)
    return {name: " or ".join(found) for name, found in where.items()}
