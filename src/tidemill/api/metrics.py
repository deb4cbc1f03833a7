"""Training metrics: what a scalar report may hold, ``spec.tensorboard``, and the views.

Training code calls ``tidemill.runtime.report(step, loss=0.3, accuracy=0.9)``; the
runtime, the job master and the control plane all check a report with
:func:`metric_problem`, so a bad name or value is refused with the same words wherever
it is caught (a report that went around the runtime is still refused at the door).
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tidemill.api._model import SpecModel, validate_line
from tidemill.api.checkpoint import MAX_URL_BYTES, is_url

MAX_NAME_CHARS = 64
MAX_SCALARS_PER_REPORT = 32
"""Names in one ``report()`` call."""
MAX_NAMES_PER_JOB = 64
"""Distinct names a job may report (each is a time series in Prometheus)."""
METRIC_REPORTS_PER_JOB = 20_000
"""Reports the control plane keeps per job by default (``tidemill server --metrics-history``)."""
TENSORBOARD_VAR = "TIDEMILL_TENSORBOARD_DIR"
"""Tells the job master where to write the job's TensorBoard event files."""
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def metric_problem(name: object, value: object) -> str | None:
    """Why ``name=value`` cannot be a metric, or None when it can.

    >>> metric_problem("loss", 0.25) is None
    True
    >>> metric_problem("val loss", 1.0).split(":")[0]
    "metric name 'val loss' is not an identifier"
    >>> metric_problem("loss", float("nan"))
    'metric loss=nan is not finite; report finite numbers (skip a step whose loss is nan)'
    """
    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME_CHARS:
        return (
            f"metric name {repr(name)[:80]} is not an identifier: use at most "
            f"{MAX_NAME_CHARS} letters, digits and '_' (e.g. val_loss)"
        )
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return (
            f"metric {name}={value!r:.40} is not a number; report ints or floats (a "
            "tensor's value with .item())"
        )
    if not math.isfinite(value):
        return (
            f"metric {name}={value} is not finite; report finite numbers (skip a step "
            f"whose loss is {value})"
        )
    return None


class TensorBoardSpec(SpecModel):
    """Write the job's metrics as TensorBoard event files, one run per replica."""

    dir: str = Field(
        description="a local or shared folder, relative to the job file; each replica's "
        "metrics go to <dir>/<replica> (point `tensorboard --logdir` at dir)"
    )

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: str) -> str:
        validate_line(value, "tensorboard folder", MAX_URL_BYTES)
        if not value.strip():
            raise ValueError("is empty; give a folder such as ./tb")
        if is_url(value):
            raise ValueError(
                f"{value!r} is a URL; the job master writes event files to a folder: give "
                "a path (a shared or mounted folder on a cluster)"
            )
        return value


class MetricPoint(BaseModel):
    """One report of one replica: its step, when, and its scalars."""

    replica: str = Field(max_length=64, description="e.g. worker-0")
    step: int = Field(ge=0, le=2**63 - 1)
    time: float = Field(ge=0, allow_inf_nan=False)
    values: dict[str, float] = Field(min_length=1, max_length=MAX_SCALARS_PER_REPORT)

    @field_validator("values", mode="before")
    @classmethod
    def _values(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, value in values.items():
                if (problem := metric_problem(name, value)) is not None:
                    raise ValueError(problem)
        return values


class MetricPoints(BaseModel):
    """What a job master posts: a batch of its workers' reports."""

    points: list[MetricPoint] = Field(max_length=5000)


class LatestMetric(BaseModel):
    replica: str
    name: str
    step: int
    value: float
    time: float


class MetricsView(BaseModel):
    """``GET /api/v1/jobs/{name}/metrics``: reports oldest step first, and the latest
    value of every (replica, name)."""

    items: list[MetricPoint]
    latest: list[LatestMetric]
    kept: int = Field(description="reports the store keeps per job; older ones are dropped")
