"""spec.tensorboard and the metric rules every side shares (runtime, master, server)."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest

from tidemill.api import metrics
from tidemill.api.errors import SpecError
from tidemill.api.loader import load_job_file, load_job_text
from tidemill.api.metrics import MetricPoint, metric_problem

JOB = """
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {{name: metrics}}
spec:
  roles:
    worker: {{replicas: 1, command: [python, train.py]}}
  tensorboard: {tensorboard}
"""


def errors_of(tensorboard: str) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        load_job_text(JOB.format(tensorboard=tensorboard))
    return {e.path: e.message for e in caught.value.errors}


def test_a_relative_tensorboard_dir_resolves_against_the_job_file(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(JOB.format(tensorboard="{dir: ./tb}"))
    spec = load_job_file(file).spec.tensorboard
    assert spec is not None and spec.dir == str(tmp_path / "tb")


@pytest.mark.parametrize(
    ("tensorboard", "path", "words"),
    [
        ("{dir: 's3://bucket/tb'}", "spec.tensorboard.dir", "is a url"),
        ("{dir: '  '}", "spec.tensorboard.dir", "is empty"),
        ("{}", "spec.tensorboard.dir", "required"),
        ("{dir: ./tb, every: 5}", "spec.tensorboard.every", "unknown field"),
    ],
)
def test_a_bad_tensorboard_section_is_refused_naming_the_field(
    tensorboard: str, path: str, words: str
) -> None:
    errors = errors_of(tensorboard)
    assert path in errors, errors
    assert words in errors[path].lower(), errors


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("val loss", 1.0, "'val loss' is not an identifier"),
        ("1st", 1.0, "'1st' is not an identifier"),
        ("x" * 65, 1.0, "at most 64"),
        ("loss", float("inf"), "loss=inf is not finite"),
        ("loss", float("-inf"), "loss=-inf is not finite"),
        ("loss", float("nan"), "loss=nan is not finite"),
        ("loss", "0.5", "is not a number"),
        ("loss", True, "is not a number"),
    ],
)
def test_a_bad_metric_is_refused_with_its_reason(name: str, value: object, words: str) -> None:
    problem = metric_problem(name, value)
    assert problem is not None and words in problem, problem


def test_a_posted_report_with_a_bad_name_fails_validation_with_the_same_reason() -> None:
    with pytest.raises(ValueError, match="'val loss' is not an identifier"):
        MetricPoint(replica="worker-0", step=1, time=1.0, values={"val loss": 1.0})
    point = MetricPoint(replica="worker-0", step=1, time=1.0, values={"loss": 2, "acc": 0.5})
    assert point.values == {"loss": 2.0, "acc": 0.5}


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(metrics)
    assert result.attempted > 0 and result.failed == 0
