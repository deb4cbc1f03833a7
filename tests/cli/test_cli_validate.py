"""`tidemill validate` needs no server: ok lines on stdout, `path: message` lines and exit 2."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidemill.api.loader import load_job_file
from tidemill.cli.main import app

runner = CliRunner()


def test_a_valid_file_is_reported_with_its_name_and_roles(job_file: Path) -> None:
    result = runner.invoke(app, ["validate", str(job_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{job_file}: ok (TrainingJob ads/demo, roles worker x2)\n"


def test_elastic_roles_show_their_bounds(tmp_path: Path) -> None:
    path = tmp_path / "ps.yaml"
    path.write_text(
        "metadata: {name: ctr}\n"
        "spec:\n"
        "  mode: ps\n"
        "  roles:\n"
        "    ps: {replicas: 2, command: [python, ps.py]}\n"
        "    worker: {replicas: 4, minReplicas: 2, maxReplicas: 8, command: [python, w.py]}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "roles ps x2, worker x4 (elastic 2-8)" in result.stdout


def test_a_file_with_a_data_plan_is_ok(tmp_path: Path) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(
        "metadata: {name: ctr}\n"
        "spec:\n"
        "  roles:\n"
        "    worker: {replicas: 2, command: [python, w.py]}\n"
        "  data:\n"
        "    shuffle: {seed: 7}\n"
        "    stages:\n"
        "      - {name: backfill, sources: [{parquet: {path: clicks/}}], epochs: 2}\n"
        "      - {name: online, sources: [{kafka: {bootstrap: 'b:9092', topic: clicks}}]}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{path}: ok (TrainingJob default/ctr, roles worker x2, "
        "data backfill (parquet) -> online (kafka))\n"
    )


def test_every_problem_is_printed_as_path_colon_message_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "apiVersion: tidemill/v1\n"
        "kind: TrainingJob\n"
        "metadata: {name: Bad_Name}\n"
        "spec:\n"
        "  roles:\n"
        "    worker: {replicas: -1, command: [python], restartPolicy: Sometimes}\n"
    )
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {path} is not a valid job (3 problems)"
    paths = sorted(line.split(": ", 1)[0] for line in lines[1:])
    assert paths == [
        "metadata.name",
        "spec.roles.worker.replicas",
        "spec.roles.worker.restartPolicy",
    ]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_good_and_bad_files_are_all_checked(job_file: Path, tmp_path: Path) -> None:
    bad = tmp_path / "typo.yaml"
    bad.write_text(job_file.read_text().replace("replicas: 2", "replica: 2"))
    result = runner.invoke(app, ["validate", str(bad), str(job_file)])
    assert result.exit_code == 2
    assert f"{job_file}: ok" in result.stdout
    assert "spec.roles.worker.replica: unknown field; did you mean 'replicas'?" in result.stderr


def test_a_missing_file_and_broken_yaml_are_invalid_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("metadata:\n  name: x\n spec: [\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.yaml"), str(broken)])
    assert result.exit_code == 2
    assert "absent.yaml: cannot read the file: No such file or directory" in result.stderr
    assert f"{broken}: line 3, column 2: not valid YAML" in result.stderr


def test_run_refuses_an_invalid_file_before_starting_anything(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("metadata: {name: ok}\nspec: {roles: {worker: {replicas: 1}}}\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "spec.roles.worker.command: required field is missing" in result.stderr


def test_a_relative_script_missing_from_the_working_dir_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "metadata: {name: typo}\n"
        "spec:\n"
        "  roles:\n"
        "    worker: {command: [python, -u, trian.py]}\n"
        "    evaluator: {command: [python, -m, http.server]}\n"
        "    chief: {command: [bash, run.sh], workingDir: jobs}\n"
    )
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "run.sh").write_text("echo hi\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{path}: ok (TrainingJob default/typo")
    assert result.stderr.splitlines() == [
        f"warning: {path}: spec.roles.worker.command: runs trian.py, which does not exist in "
        f"{tmp_path} (replicas start in workingDir, which is relative to the job file; "
        "the job file's folder by default)"
    ]


def test_a_job_file_named_dash_is_read_from_stdin_relative_to_this_folder(
    job_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = job_file.read_text()

    piped = runner.invoke(app, ["validate", "-"], input=text)
    assert piped.exit_code == 0, piped.output
    assert piped.stdout == "-: ok (TrainingJob ads/demo, roles worker x2)\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))
    job = load_job_file("-")
    assert {role.working_dir for role in job.spec.roles.values()} == {str(tmp_path / "src")}

    endless = runner.invoke(app, ["validate", "-"], input="#" * (2 * 1024 * 1024))
    assert endless.exit_code == 2
    assert "-: the file is larger than 1,048,576 bytes (1 MiB)" in endless.stderr
