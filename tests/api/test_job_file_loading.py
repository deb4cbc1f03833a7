"""Reading job files from disk: syntax errors with line numbers, folders resolved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.loader import load_job_file, load_job_text

JOB = """apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: loader}
spec:
  roles:
    worker:
      command: [python, train.py]
"""


def message_of(call: Callable[[], object]) -> str:
    with pytest.raises(SpecError) as caught:
        call()
    return str(caught.value)


def test_a_yaml_syntax_error_names_the_file_line_and_column() -> None:
    text = "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata:\n  name: a\n spec: [\n"

    message = message_of(lambda: load_job_text(text, "job.yaml"))

    assert message.startswith("job.yaml: line 5, column 2: not valid YAML: ")


def test_an_empty_file_and_a_list_are_not_jobs() -> None:
    assert message_of(lambda: load_job_text("", "a.yaml")) == (
        "a.yaml: expected a mapping with apiVersion/kind, got empty"
    )
    assert message_of(lambda: load_job_text("- 1\n- 2\n", "b.yaml")) == (
        "b.yaml: expected a mapping with apiVersion/kind, got list"
    )


def test_a_missing_file_is_named_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    assert message_of(lambda: load_job_file(missing)) == (
        f"{missing}: cannot read the file: No such file or directory"
    )


def test_working_dirs_resolve_against_the_job_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    text = JOB + "      workingDir: src\n    chief:\n      command: [python, chief.py]\n"
    text += f"      workingDir: {tmp_path / 'elsewhere'}\n"
    (folder / "job.yaml").write_text(text)

    job = load_job_file(folder / "job.yaml")

    assert job.spec.roles["worker"].working_dir == str(folder / "src")
    assert job.spec.roles["chief"].working_dir == str(tmp_path / "elsewhere")


def test_without_a_working_dir_a_role_runs_in_the_job_files_folder(tmp_path: Path) -> None:
    (tmp_path / "job.yaml").write_text(JOB)

    job = load_job_file(tmp_path / "job.yaml")

    assert job.spec.roles["worker"].working_dir == str(tmp_path)


def test_a_loaded_job_round_trips_through_its_document() -> None:
    job = load_job_text(JOB)

    again = load_job_text(json.dumps(job.to_document()))

    assert again == job
