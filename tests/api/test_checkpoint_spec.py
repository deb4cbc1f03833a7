"""spec.checkpoint: validation, paths pinned to the job file, and the per-job plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.api.checkpoint import (
    CHECKPOINT_VAR,
    DEFAULT_EVERY_SECONDS,
    CheckpointPlan,
    CheckpointSpec,
    job_checkpoint_plan,
)
from tidemill.api.errors import SpecError
from tidemill.api.loader import load_job_file, load_job_text

JOB = """
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {{name: ckpt}}
spec:
  roles:
    worker: {{replicas: 1, command: [python, train.py]}}
  checkpoint: {checkpoint}
"""


def errors_of(checkpoint: str) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        load_job_text(JOB.format(checkpoint=checkpoint))
    return {e.path: e.message for e in caught.value.errors}


def test_a_relative_dir_and_resume_from_resolve_against_the_job_file(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(JOB.format(checkpoint="{dir: ./ckpt, resumeFrom: ../old, everySteps: 5}"))
    spec = load_job_file(file).spec.checkpoint
    assert spec is not None
    assert spec.dir == str(tmp_path / "ckpt")
    assert spec.resume_from == str(tmp_path.parent / "old")
    assert spec.every_steps == 5


def test_urls_are_kept_as_written(tmp_path: Path) -> None:
    file = tmp_path / "job.yaml"
    file.write_text(JOB.format(checkpoint="{dir: 's3://bucket/ckpt', resumeFrom: 'memory://x'}"))
    spec = load_job_file(file).spec.checkpoint
    assert spec is not None and (spec.dir, spec.resume_from) == ("s3://bucket/ckpt", "memory://x")


@pytest.mark.parametrize(
    ("checkpoint", "path"),
    [
        ("{everySteps: 0}", "spec.checkpoint.everySteps"),
        ("{everySeconds: -1}", "spec.checkpoint.everySeconds"),
        ("{everySeconds: .nan}", "spec.checkpoint.everySeconds"),
        ("{keep: 0}", "spec.checkpoint.keep"),
        ("{keep: 100000}", "spec.checkpoint.keep"),
        ("{dir: ''}", "spec.checkpoint.dir"),
        ('{dir: "a\\0b"}', "spec.checkpoint.dir"),
        ("{every: 5}", "spec.checkpoint.every"),
    ],
)
def test_bad_checkpoint_fields_are_refused_by_path(checkpoint: str, path: str) -> None:
    assert path in errors_of(checkpoint)


def test_each_job_gets_its_own_folder_and_a_default_schedule() -> None:
    plan = job_checkpoint_plan(None, "ads/ctr", "uid-1", "/state/checkpoints")
    assert plan == CheckpointPlan(
        url="/state/checkpoints/ads/ctr/uid-1", every_seconds=DEFAULT_EVERY_SECONDS
    )
    spec = CheckpointSpec(dir="s3://b/ckpt/", every_steps=100, keep=2)
    plan = job_checkpoint_plan(spec, "ads/ctr", "uid-2", "/state/checkpoints")
    assert plan is not None
    assert (plan.url, plan.every_steps, plan.every_seconds, plan.keep) == (
        "s3://b/ckpt/ads/ctr/uid-2",
        100,
        None,
        2,
    )
    assert job_checkpoint_plan(None, "ads/ctr", "uid-3", None) is None


def test_the_plan_travels_in_the_environment_and_bad_values_say_so() -> None:
    plan = CheckpointPlan(url="memory://j", every_steps=3, every_seconds=None, keep=4)
    assert CheckpointPlan.from_env(plan.to_env()) == plan
    assert CheckpointPlan.from_env({}) is None
    with pytest.raises(ValueError, match=CHECKPOINT_VAR):
        CheckpointPlan.from_env({CHECKPOINT_VAR: '{"url": "x", "colour": 1}'})


def test_a_commit_is_due_by_steps_or_by_time() -> None:
    plan = CheckpointPlan(url="memory://j", every_steps=10, every_seconds=60.0)
    assert not plan.due(9, 59.0)
    assert plan.due(10, 0.0)
    assert plan.due(1, 60.0)
