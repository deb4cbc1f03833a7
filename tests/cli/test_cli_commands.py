"""Server-facing commands: what people read, what scripts parse, and the exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from tests.cli.fake_api import FakeServer
from tidemill.cli.main import app

runner = CliRunner()


def tidemill(server: FakeServer | str, *args: str) -> Result:
    url = server if isinstance(server, str) else server.url
    return runner.invoke(app, [*args, "--server", url])


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert text in result.stderr


def test_an_unreachable_server_is_one_line_and_exit_1(closed_url: str) -> None:
    result = tidemill(closed_url, "jobs")
    assert_one_line_error(result, 1, f"cannot reach the tidemill server at {closed_url}")
    assert result.stderr.count("\n") == 1


def test_the_server_comes_from_the_environment(fake_server: FakeServer) -> None:
    result = runner.invoke(app, ["jobs", "-o", "json"], env={"TIDEMILL_SERVER": fake_server.url})
    assert result.exit_code == 0, result.output
    assert {job["name"] for job in json.loads(result.stdout)} == {
        "demo", "waiting", "done", "broken",
    }


def test_jobs_filters_by_phase_in_any_case_and_prints_yaml(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "jobs", "--phase", "failed", "-o", "yaml")
    assert result.exit_code == 0, result.output
    rows = yaml.safe_load(result.stdout)
    assert [(row["name"], row["phase"]) for row in rows] == [("broken", "Failed")]


def test_jobs_table_shows_name_phase_and_replicas(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "jobs")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "NAMESPACE", "NAME", "QUEUE", "PRIORITY", "PHASE", "REPLICAS", "AGE", "MESSAGE",
    ]
    assert any(row.split()[:5] == ["default", "waiting", "default", "5", "Pending"] for row in rows)
    assert all("worker 1/2" in row for row in rows)


def test_a_missing_job_exits_1_with_the_servers_hint(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "get", "nope")
    assert_one_line_error(result, 1, "job 'nope' not found; list jobs with `tidemill jobs`")


def test_an_ambiguous_name_asks_for_a_namespace(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "get", "twin")
    assert_one_line_error(result, 1, "exists in several namespaces (a, b); pass --namespace")
    resolved = tidemill(fake_server, "get", "twin", "-n", "b", "-o", "json")
    assert resolved.exit_code == 0
    assert json.loads(resolved.stdout)["namespace"] == "b"


def test_get_counts_running_replicas_against_the_spec(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "get", "demo")
    assert result.exit_code == 0, result.output
    assert "Running" in result.stdout and "worker 1/2" in result.stdout


def test_describe_says_why_a_job_is_pending(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "describe", "waiting")
    assert result.exit_code == 0, result.output
    assert (
        "GangDoesNotFit: needs 8 gpu on one node; largest free block is 6 on n3" in result.stdout
    )


def test_describe_lists_replicas_conditions_and_events(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "describe", "demo")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    failed = next(line for line in lines if line.startswith("worker-1"))
    assert failed.split()[:7] == ["worker-1", "Failed", "n2", "-", "-", "3", "3"]
    running = next(line for line in lines if line.startswith("worker-0"))
    assert running.split()[:7] == ["worker-0", "Running", "n1", "0", "4242", "0", "-"]
    assert "CUDA error: out of memory" in failed
    assert any("Scheduled" in line and "Bound" in line for line in lines)
    assert any("ReplicaFailed" in line and "worker-1" in line for line in lines)


def test_submit_prints_the_job_and_its_queue(fake_server: FakeServer, job_file: Path) -> None:
    result = tidemill(fake_server, "submit", str(job_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == "job ads/demo submitted to queue default (Pending)\n"


def test_submit_into_another_namespace(fake_server: FakeServer, job_file: Path) -> None:
    result = tidemill(fake_server, "submit", str(job_file), "-n", "team-b")
    assert result.exit_code == 0, result.output
    assert json.loads(fake_server.posted[-1][1])["metadata"]["namespace"] == "team-b"
    bad = tidemill(fake_server, "submit", str(job_file), "-n", "Team B")
    assert_one_line_error(bad, 2, "metadata.namespace: 'Team B' is not a valid namespace")


def test_a_local_error_exits_2_before_anything_is_sent(
    fake_server: FakeServer, tmp_path: Path
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("metadata: {name: x}\nspec: {roles: {worker: {command: [a], cpu: 2}}}\n")
    posted = len(fake_server.posted)
    result = tidemill(fake_server, "submit", str(path))
    assert_one_line_error(result, 2, "spec.roles.worker.cpu: unknown field")
    assert len(fake_server.posted) == posted


def test_a_server_side_422_exits_2_with_its_field_lines(
    fake_server: FakeServer, job_file: Path
) -> None:
    job_file.write_text(job_file.read_text().replace("replicas: 2", "replicas: 20"))
    result = tidemill(fake_server, "submit", str(job_file))
    assert_one_line_error(result, 2, "error: the job is invalid\n")
    assert result.stderr.splitlines()[1] == (
        "spec.roles.worker.replicas: 20 exceeds what queue 'default' allows (8); "
        "ask for at most 8"
    )


def test_a_name_clash_exits_1(fake_server: FakeServer, job_file: Path) -> None:
    job_file.write_text(job_file.read_text().replace("name: demo", "name: taken"))
    result = tidemill(fake_server, "submit", str(job_file))
    assert_one_line_error(result, 1, "job default/taken already exists")


@pytest.mark.parametrize(
    ("name", "code", "summary"),
    [
        ("done", 0, "job default/done Succeeded in 1m04s"),
        ("broken", 1, "worker-1 exited with code 3: CUDA error: out of memory"),
    ],
)
def test_submit_wait_exits_by_the_jobs_outcome(
    fake_server: FakeServer, job_file: Path, name: str, code: int, summary: str
) -> None:
    job_file.write_text(job_file.read_text().replace("name: demo, namespace: ads", f"name: {name}"))
    result = tidemill(fake_server, "submit", str(job_file), "--wait")
    assert result.exit_code == code, result.output
    assert summary in result.stdout


def test_logs_print_lines_as_they_are(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "logs", "demo")
    assert result.exit_code == 0, result.output
    assert result.stdout == "[worker-0] step 1 loss=0.70\n[worker-1] [rank 1] ready\n"
    one = tidemill(fake_server, "logs", "demo", "--role", "worker", "--index", "1")
    assert one.stdout == "worker-1 only\n"


def test_logs_index_without_role_is_a_usage_error(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "logs", "demo", "--index", "1")
    assert result.exit_code == 2
    assert "--index needs --role" in result.output


def test_delete_reports_the_deleted_key_or_the_servers_failure(fake_server: FakeServer) -> None:
    assert tidemill(fake_server, "delete", "demo").stdout == "job default/demo deleted\n"
    result = tidemill(fake_server, "delete", "crash")
    assert_one_line_error(result, 1, "the server answered 500 Internal Server Error")


def test_scale_beyond_the_bounds_exits_2(fake_server: FakeServer) -> None:
    result = tidemill(fake_server, "scale", "demo", "--role", "worker", "--replicas", "9")
    assert_one_line_error(result, 2, "cannot scale demo")
    assert "replicas: 9 is above maxReplicas=8" in result.stderr.splitlines()
    ok = tidemill(fake_server, "scale", "demo", "--role", "worker", "--replicas", "2")
    assert ok.stdout.startswith("job default/demo: worker scaled to 2")


def test_queues_and_nodes_tables_use_peoples_units(fake_server: FakeServer) -> None:
    queues = tidemill(fake_server, "queues").stdout
    assert "cpu 8, mem 16Gi, gpu 2" in queues and "cpu 32, gpu 4" in queues
    nodes = tidemill(fake_server, "nodes").stdout
    row = next(line for line in nodes.splitlines() if line.startswith("n1"))
    assert row.split() == ["n1", "4/16", "8Gi/64Gi", "1.5/2", "A100", "100%", "50%", "yes",
                           "rack=r1"]


def test_events_of_a_job_and_of_the_cluster(fake_server: FakeServer) -> None:
    table = tidemill(fake_server, "events", "demo").stdout
    assert "JOB" not in table.splitlines()[0]
    assert any("ReplicaFailed" in line and "exit code 3" in line for line in table.splitlines())
    everything = json.loads(tidemill(fake_server, "events", "-o", "json").stdout)
    assert [event["id"] for event in everything] == [1, 2, 3]


def test_the_installed_entry_point_never_shows_a_traceback(
    closed_url: str, tmp_path: Path
) -> None:
    down = subprocess.run(
        [sys.executable, "-m", "tidemill.cli", "jobs", "--server", closed_url],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert down.returncode == 1
    assert down.stderr.startswith(f"error: cannot reach the tidemill server at {closed_url}")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: TFJob\n")
    invalid = subprocess.run(
        [sys.executable, "-m", "tidemill.cli", "validate", str(bad)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert invalid.returncode == 2
    assert "Traceback" not in invalid.stderr and "metadata: required field is missing" in (
        invalid.stderr
    )
