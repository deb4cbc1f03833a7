"""``spec.checkpoint``: where and how often a job's committed state is made durable.

The job file says where (``dir``, an fsspec URL or a path relative to the job file) and
how often; the control plane turns that into one :class:`CheckpointPlan` per job (the
job's own folder under ``dir``, so two jobs, or two runs of one name, never share
checkpoints) and hands it to the job master and the workers as ``TIDEMILL_CHECKPOINT``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tidemill.api._model import SpecModel, validate_line
from tidemill.api.limits import INT64_MAX

CHECKPOINT_VAR = "TIDEMILL_CHECKPOINT"
DEFAULT_EVERY_SECONDS = 600.0
"""When a job names neither ``everySteps`` nor ``everySeconds``: every ten minutes (and
always when training ends or the job is stopped, e.g. preempted)."""
DEFAULT_KEEP = 3
MAX_KEEP = 1000
MAX_URL_BYTES = 2048
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(text: str) -> bool:
    """``s3://b/x``, ``memory://x``, ``file:///x`` (not a bare path)."""
    return bool(_URL.match(text))


class CheckpointSpec(SpecModel):
    """Durable checkpoints of the committed state (model, optimizer, step, extras, data
    positions). Omitted: checkpoints go under the server's checkpoint folder (the state
    folder on the local engine) every ten minutes and when training stops."""

    dir: str | None = Field(
        default=None,
        description="an fsspec URL (s3://bucket/ckpt, hdfs://..., memory://...) or a path "
        "relative to the job file; the job's checkpoints go in <dir>/<namespace>/<name>/<uid>",
    )
    every_steps: int | None = Field(
        default=None, ge=1, le=INT64_MAX, description="save after this many committed steps"
    )
    every_seconds: float | None = Field(
        default=None, gt=0, le=365 * 86400, description="save at most this long after the last"
    )
    keep: int = Field(default=DEFAULT_KEEP, ge=1, le=MAX_KEEP, description="newest kept")
    resume_from: str | None = Field(
        default=None,
        description="start from the newest checkpoint in this folder (another job's, as "
        "`tidemill submit --resume-from JOB|URL` sets it) when the job has none of its own",
    )

    @field_validator("dir", "resume_from")
    @classmethod
    def _location(cls, value: str | None) -> str | None:
        if value is None:
            return None
        validate_line(value, "checkpoint location", MAX_URL_BYTES)
        if not value.strip():
            raise ValueError("is empty; give a path or a URL such as s3://bucket/checkpoints")
        return value


@dataclass(frozen=True)
class CheckpointPlan:
    """One job's checkpointing, as its master and workers receive it."""

    url: str
    """The job's own folder: ``<dir>/<namespace>/<name>/<uid>``."""
    every_steps: int | None = None
    every_seconds: float | None = DEFAULT_EVERY_SECONDS
    keep: int = DEFAULT_KEEP
    resume_from: str | None = None

    def to_env(self) -> dict[str, str]:
        return {CHECKPOINT_VAR: json.dumps(asdict(self), separators=(",", ":"))}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CheckpointPlan | None:
        """The plan in ``TIDEMILL_CHECKPOINT``; None when the job has none; ValueError
        naming the variable when it is not one."""
        raw = env.get(CHECKPOINT_VAR)
        if not raw:
            return None
        try:
            fields = json.loads(raw)
            plan = cls(**fields)
        except (ValueError, TypeError) as exc:
            text = f"{CHECKPOINT_VAR} is not a checkpoint plan ({exc}): {raw[:200]}"
            raise ValueError(text) from None
        if not isinstance(plan.url, str) or not plan.url:
            raise ValueError(f"{CHECKPOINT_VAR} has no url: {raw[:200]}")
        return plan

    def due(self, steps_since: int, seconds_since: float) -> bool:
        """Whether a commit this far after the last checkpoint should be saved."""
        if self.every_steps is not None and steps_since >= self.every_steps:
            return True
        return self.every_seconds is not None and seconds_since >= self.every_seconds


def job_checkpoint_plan(
    spec: CheckpointSpec | None, key: str, uid: str, root: str | None
) -> CheckpointPlan | None:
    """The plan of job ``key`` (``namespace/name``) with ``uid``: its folder under the
    spec's ``dir``, else under the server's ``root``; None when there is neither."""
    spec = spec or CheckpointSpec()
    base = spec.dir or root
    if base is None:
        return None
    every_seconds = spec.every_seconds
    if spec.every_steps is None and every_seconds is None:
        every_seconds = DEFAULT_EVERY_SECONDS
    return CheckpointPlan(
        url=f"{base.rstrip('/')}/{key}/{uid}",
        every_steps=spec.every_steps,
        every_seconds=every_seconds,
        keep=spec.keep,
        resume_from=spec.resume_from,
    )


class CheckpointView(BaseModel):
    """One checkpoint folder as ``tidemill checkpoints JOB`` shows it."""

    name: str = Field(description="step-000000001200")
    url: str
    step: int | None = Field(default=None, description="None when the checkpoint is unusable")
    time: float | None = Field(default=None, description="when it was written (unix s)")
    size_bytes: int | None = None
    world_size: int | None = Field(default=None, description="the group size it trained at")
    data: dict[str, Any] | None = Field(
        default=None, description="data positions (shard leases, stream offsets) it resumes at"
    )
    problem: str | None = Field(
        default=None, description="why it cannot be restored (partial, unreadable)"
    )


class CheckpointList(BaseModel):
    url: str | None = Field(description="the job's checkpoint folder; None: it has none")
    items: list[CheckpointView] = Field(description="newest first")
