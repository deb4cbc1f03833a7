"""Server-facing commands against a real server: what people read, what scripts parse,
and the exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner, Result

from tests.cli.conftest import SLEEP, Live, live_server
from tidemill.cli.main import app

runner = CliRunner()

FLEET = (
    "nodes:\n"
    "  - {name: n1, cpu: 16, memory: 64Gi, gpus: 2, gpuModel: A100, labels: {rack: r1}}\n"
    "queues:\n"
    "  - {name: ads, weight: 2, guaranteed: {cpu: 8, memory: 16Gi, gpu: 2},"
    " max: {cpu: 32, gpu: 4}}\n"
)


@pytest.fixture(scope="module")
def scene(live: Live) -> Live:
    """Jobs in every state, on a two-core node.

    ``busy`` (priority 10) runs on one core; ``waiting`` (priority 5, two one-core
    workers) and the elastic ``grow`` (1.5 cores a worker) wait for room; ``broken``
    failed (exit 3, one restart); ``chatty`` printed a line per worker and succeeded;
    ``twin`` exists in namespaces a and b.
    """
    live.submit("busy", SLEEP, cpu=1, priority=10)
    live.running("busy")
    live.submit("waiting", SLEEP, workers=2, cpu=1, priority=5)
    grow = live.client.submit(
        {
            "metadata": {"name": "grow"},
            "spec": {
                "roles": {
                    "worker": {
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "resources": {"cpu": 1.5, "memory": "64Mi"},
                        "command": ["sleep", "600"],
                    }
                }
            },
        }
    )
    assert grow.phase == "Pending"
    live.submit("broken", "import sys; sys.exit(3)", max_restarts=1, backoff_s=0.1)
    live.submit(
        "chatty",
        "import os; print(['step 1 loss=0.70', '[rank 1] ready'][int(os.environ['RANK'])])",
        workers=2,
    )
    for namespace in ("a", "b"):
        live.submit("twin", "pass", namespace=namespace)
    live.finished("broken")
    live.finished("chatty")
    live.until("waiting", lambda view: view.pending_reason)
    return live


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """An idle server with a GPU node, labels and a queue with guarantees and limits."""
    with live_server(tmp_path_factory.mktemp("fleet"), FLEET) as server:
        yield server


def tidemill(server: Live | str, *args: str) -> Result:
    url = server if isinstance(server, str) else server.url
    return runner.invoke(app, [*args, "--server", url])


def assert_one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ")
    assert text in result.stderr


def job_yaml(path: Path, name: str, script: str, cpu: float = 0.25) -> Path:
    path.write_text(
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        "  roles:\n"
        "    worker:\n"
        f"      resources: {{cpu: {cpu}, memory: 64Mi}}\n"
        f"      command: [python, -c, {json.dumps(script)}]\n"
        "      restartPolicy: Never\n"
    )
    return path


def row(output: str, first: str) -> list[str]:
    """The table row whose first cell is ``first``, split on runs of spaces."""
    rows = [line for line in output.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, output
    return [cell.strip() for cell in re.split(r"\s{2,}", rows[0].strip())]


def test_an_unreachable_server_is_one_line_and_exit_1(closed_url: str) -> None:
    result = tidemill(closed_url, "jobs")
    assert_one_line_error(result, 1, f"cannot reach the tidemill server at {closed_url}")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        ("http://[::1", "Invalid port"),
        ("http://a\x01b", "non-printable"),
        ("ftp://files", "its scheme is 'ftp', not http or https"),
        ("https://:8500", "it names no host"),
    ],
)
def test_a_server_url_that_does_not_parse_exits_2_naming_it(server: str, problem: str) -> None:
    result = tidemill(server, "jobs")

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith(f"error: the server URL is invalid\nserver: {server!r} ")
    assert problem in result.stderr


def test_the_server_comes_from_the_environment(scene: Live) -> None:
    result = runner.invoke(app, ["jobs", "-o", "json"], env={"TIDEMILL_SERVER": scene.url})
    assert result.exit_code == 0, result.output
    names = {job["name"] for job in json.loads(result.stdout)}
    assert {"busy", "waiting", "grow", "broken", "chatty", "twin"} <= names


def test_jobs_filters_by_phase_in_any_case_and_prints_yaml(scene: Live) -> None:
    result = tidemill(scene, "jobs", "--phase", "failed", "-o", "yaml")
    assert result.exit_code == 0, result.output
    rows = yaml.safe_load(result.stdout)
    assert "broken" in {row["name"] for row in rows}
    assert {row["phase"] for row in rows} == {"Failed"}


def test_jobs_table_shows_name_phase_and_replicas(scene: Live) -> None:
    result = tidemill(scene, "jobs")
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0]
    assert header.split() == [
        "NAMESPACE", "NAME", "QUEUE", "PRIORITY", "PHASE", "REPLICAS", "AGE", "MESSAGE",
    ]
    lines = result.stdout.splitlines()
    waiting = next(line for line in lines if line.split()[1:2] == ["waiting"])
    assert waiting.split()[:5] == ["default", "waiting", "default", "5", "Pending"]
    assert "worker 0/2" in waiting
    busy = next(line for line in lines if line.split()[1:2] == ["busy"])
    assert busy.split()[4] == "Running" and "worker 1/1" in busy


def test_jobs_last_shows_only_the_newest_and_says_how_many_there_are(scene: Live) -> None:
    every = json.loads(tidemill(scene, "jobs", "-o", "json").stdout)
    result = tidemill(scene, "jobs", "--last", "2")
    assert result.exit_code == 0, result.output
    shown = [line.split()[:2] for line in result.stdout.splitlines()[1:-1]]
    assert shown == [[job["namespace"], job["name"]] for job in every[-2:]]
    assert result.stdout.splitlines()[-1] == (
        f"the newest 2 of {len(every)} jobs (without --last: all)"
    )
    failed = tidemill(scene, "jobs", "--phase", "Failed", "--last", "5", "-o", "json")
    assert [job["name"] for job in json.loads(failed.stdout)] == ["broken"]

    refused = tidemill(scene, "jobs", "--last", "0")
    assert refused.exit_code == 2 and "--last" in refused.stderr, refused.output


def test_a_missing_job_exits_1_with_the_servers_hint(scene: Live) -> None:
    result = tidemill(scene, "get", "nope")
    assert_one_line_error(result, 1, "job 'nope' not found; list jobs with `tidemill jobs`")


@pytest.mark.parametrize(
    ("reference", "field"),
    [
        ("default/../../queues", "name"),
        ("a\x01b", "name"),
        ("Busy", "name"),
        ("Ns x/busy", "namespace"),
    ],
)
def test_a_name_no_job_can_have_exits_2_naming_the_rule(
    scene: Live, reference: str, field: str
) -> None:
    scale = ["scale", "--role", "worker", "--replicas", "1"]
    for command in (["get"], ["describe"], ["logs"], scale):
        result = tidemill(scene, *command, reference)
        assert result.exit_code == 2, (command, result.output)
        assert "Traceback" not in result.output and "no such path" not in result.stderr
        assert result.stderr.startswith(f"error: {reference!r} names no job\n{field}: ")
        assert "lowercase letters, digits and '-'" in result.stderr


def test_an_ambiguous_name_asks_for_a_namespace(scene: Live) -> None:
    result = tidemill(scene, "get", "twin")
    assert_one_line_error(result, 1, "exists in several namespaces (a, b); pass --namespace")
    resolved = tidemill(scene, "get", "twin", "-n", "b", "-o", "json")
    assert resolved.exit_code == 0
    assert json.loads(resolved.stdout)["namespace"] == "b"


def test_get_counts_running_replicas_against_the_spec(scene: Live) -> None:
    result = tidemill(scene, "get", "busy")
    assert result.exit_code == 0, result.output
    assert "Running" in result.stdout and "worker 1/1" in result.stdout


def test_describe_says_why_a_job_is_pending(scene: Live) -> None:
    result = tidemill(scene, "describe", "waiting")
    assert result.exit_code == 0, result.output
    reason = re.search(r"^Pending +(\w+): (.+)$", result.stdout, re.MULTILINE)
    assert reason is not None, result.stdout
    assert reason[1] in {"GangDoesNotFit", "InsufficientCPU"}
    assert "needs 1 cpu" in reason[2]


def test_describe_lists_a_running_replica_with_its_pid(scene: Live) -> None:
    pid = scene.client.get("busy").replicas[0].pid
    result = tidemill(scene, "describe", "busy")
    assert result.exit_code == 0, result.output
    assert row(result.stdout, "worker-0")[:7] == [
        "worker-0", "Running", "n1", "-", str(pid), "0", "-",
    ]
    assert row(result.stdout, "Scheduled")[2] == "Running"


def test_describe_lists_a_failed_replica_its_conditions_and_events(scene: Live) -> None:
    result = tidemill(scene, "describe", "broken")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    failed = row(result.stdout, "worker-0")
    # REPLICA PHASE NODE GPUS PID RESTARTS EXIT (the pid is shown if it was seen running)
    assert failed[:4] + failed[5:7] == ["worker-0", "Failed", "n1", "-", "1", "3"]
    assert "exited with code 3" in failed[-1]
    assert row(result.stdout, "Failed")[1:3] == ["True", "ReplicaFailed"]
    assert any("ReplicaFailed" in line and "worker-0" in line for line in lines)
    assert any("Restarting" in line and "restart 1/1" in line for line in lines)


def test_submit_prints_the_job_and_its_queue(live: Live, job_file: Path) -> None:
    result = tidemill(live, "submit", str(job_file))
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"job ads/demo submitted to queue ads \((Pending|Scheduled|Running)\)\n", result.stdout
    )
    assert live.client.get("demo", "ads").queue == "ads"


def test_submit_into_another_namespace(live: Live, job_file: Path) -> None:
    result = tidemill(live, "submit", str(job_file), "-n", "team-b")
    assert result.exit_code == 0, result.output
    assert live.client.get("demo", "team-b").namespace == "team-b"
    bad = tidemill(live, "submit", str(job_file), "-n", "Team B")
    assert_one_line_error(bad, 2, "metadata.namespace: 'Team B' is not a valid namespace")


def test_a_local_error_exits_2_before_anything_is_sent(live: Live, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("metadata: {name: x}\nspec: {roles: {worker: {command: [a], cpu: 2}}}\n")
    before = len(live.client.jobs())
    result = tidemill(live, "submit", str(path))
    assert_one_line_error(result, 2, "spec.roles.worker.cpu: unknown field")
    assert len(live.client.jobs()) == before


def test_a_server_side_422_exits_2_with_its_field_lines(live: Live, tmp_path: Path) -> None:
    path = job_yaml(tmp_path / "big.yaml", "big", "pass", cpu=64)
    result = tidemill(live, "submit", str(path))
    assert_one_line_error(result, 2, "error: the job is invalid\n")
    assert result.stderr.splitlines()[1] == (
        "spec.roles.worker.resources.cpu: asks 64 cpu per replica; the largest node has 2 (n1)"
    )


def test_a_name_clash_exits_1(live: Live, tmp_path: Path) -> None:
    path = job_yaml(tmp_path / "taken.yaml", "taken", "pass")
    live.client.submit(path)
    result = tidemill(live, "submit", str(path))
    assert_one_line_error(result, 1, "job default/taken already exists")


@pytest.mark.parametrize(
    ("name", "script", "code", "summary"),
    [
        ("fine", "print('all good')", 0, "job default/fine Succeeded in "),
        ("fails", "print('all bad'); raise SystemExit(3)", 1, "  worker-0 exited with code 3"),
    ],
)
def test_submit_wait_streams_progress_and_exits_by_the_jobs_outcome(
    live: Live, tmp_path: Path, name: str, script: str, code: int, summary: str
) -> None:
    result = tidemill(live, "submit", str(job_yaml(tmp_path / "job.yaml", name, script)), "--wait")
    assert result.exit_code == code, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"job default/{name} submitted to queue default")
    assert f"[worker-0] all {'good' if code == 0 else 'bad'}" in lines
    assert any(line.startswith("-- ") and "Submitted" in line for line in lines)
    assert summary in result.stdout
    assert live.client.get(name).phase.is_terminal


def test_logs_print_lines_as_they_are(scene: Live) -> None:
    result = tidemill(scene, "logs", "chatty")
    assert result.exit_code == 0, result.output
    printed = [line for line in result.stdout.splitlines() if "===== tidemill:" not in line]
    assert printed == ["[worker-0] step 1 loss=0.70", "[worker-1] [rank 1] ready"]
    one = tidemill(scene, "logs", "chatty", "--role", "worker", "--index", "1")
    assert one.stdout.splitlines()[-1] == "[rank 1] ready"
    assert not any(line.startswith("[worker-") for line in one.stdout.splitlines())


def test_logs_index_without_role_is_a_usage_error(scene: Live) -> None:
    result = tidemill(scene, "logs", "chatty", "--index", "1")
    assert result.exit_code == 2
    assert "--index needs --role" in result.output


def test_delete_reports_the_deleted_key_or_the_servers_refusal(live: Live) -> None:
    live.submit("gone", "pass")
    assert tidemill(live, "delete", "gone").stdout == "job default/gone deleted\n"
    assert_one_line_error(tidemill(live, "delete", "gone"), 1, "job 'gone' not found")
    elsewhere = tidemill(f"{live.url}/nowhere", "delete", "gone")
    assert_one_line_error(elsewhere, 1, "no such path '/nowhere/api/v1/jobs/gone'")


def test_scale_beyond_the_bounds_exits_2(scene: Live) -> None:
    result = tidemill(scene, "scale", "grow", "--role", "worker", "--replicas", "9")
    assert_one_line_error(result, 2, "error: the job is invalid")
    assert "replicas: 9 is outside worker's bounds [1, 4] (minReplicas..maxReplicas)" in (
        result.stderr.splitlines()
    )
    ok = tidemill(scene, "scale", "grow", "--role", "worker", "--replicas", "2")
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("job default/grow: worker scaled to 2")
    assert ok.stdout.rstrip().endswith("/2)"), "desired shows the requested size"


def test_queues_and_nodes_tables_use_peoples_units(fleet: Live) -> None:
    queues = tidemill(fleet, "queues").stdout
    assert "cpu 8, mem 16Gi, gpu 2" in queues and "cpu 32, gpu 4" in queues
    nodes = tidemill(fleet, "nodes").stdout
    assert row(nodes, "n1") == ["n1", "0/16", "0/64Gi", "0/2", "A100", "0% 0%", "yes", "rack=r1"]


def test_events_of_a_job_and_of_the_cluster(scene: Live) -> None:
    table = tidemill(scene, "events", "broken").stdout
    assert "JOB" not in table.splitlines()[0]
    assert any(
        "ReplicaFailed" in line and "worker-0 exited 3" in line for line in table.splitlines()
    )
    everything = json.loads(tidemill(scene, "events", "-o", "json").stdout)
    ids = [event["id"] for event in everything]
    assert ids == sorted(set(ids))
    assert {"default/busy", "default/broken", "a/twin"} <= {event["job"] for event in everything}


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


def test_kubernetes_options_given_to_the_local_engine_exit_2_naming_them(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["server", "--state-dir", str(tmp_path), "--no-network-policy", "--gpu-sharing", "none"],
    )
    assert result.exit_code == 2
    assert "--gpu-sharing, --no-network-policy: only with --engine kubernetes" in result.output
    assert not any(tmp_path.iterdir()), "nothing started"


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--advertise-url", "ftp://tidemill:8500", "its scheme is 'ftp', not http or https"),
        ("--allow-host", "http://tm.example:80", "'http://tm.example:80' is not a DNS name"),
        ("--advertise-url", "http://[::1", "Invalid port"),
        ("--checkpoint-root", "s3://a::file:///b", "chained fsspec URLs (a::b) are not supported"),
        ("--store-url", "not a url", "SQLAlchemy cannot parse it"),
        ("--store-url", "mysql://admin:hunter2@db/tm", "the store is SQLite or Postgres, not"),
        ("--store-url", "pg://admin:hunter2@db/tm", "SQLAlchemy knows no such database or driver"),
        ("--max-connections", "0", "Input should be greater than or equal to 1"),
    ],
)
def test_a_server_option_that_cannot_work_exits_2_before_anything_starts(
    tmp_path: Path, option: str, value: str, problem: str
) -> None:
    result = runner.invoke(app, ["server", "--state-dir", str(tmp_path), option, value])

    assert result.exit_code == 2, result.output
    message = " ".join(line.strip(" │╭╮╰╯─") for line in result.output.splitlines())
    assert f"Invalid value for '{option}'" in message and problem in " ".join(message.split())
    assert "hunter2" not in result.output, "a store URL's password is never echoed"
    assert not any(tmp_path.iterdir()), "nothing started"


def test_allow_host_on_a_server_beyond_loopback_exits_2_saying_it_is_not_needed(
    tmp_path: Path,
) -> None:
    argv = ["server", "--state-dir", str(tmp_path), "--host", "0.0.0.0", "--auth"]
    result = runner.invoke(app, [*argv, "--allow-host", "tm.example"])

    assert_one_line_error(result, 2, "--allow-host is for a server on loopback")
    assert "answers every name already" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing started"


def test_token_commands_refuse_a_store_url_that_does_not_parse(tmp_path: Path) -> None:
    result = runner.invoke(app, ["token", "list", "--store-url", "postgres ql://db"])

    assert result.exit_code == 2
    assert "SQLAlchemy cannot parse it" in " ".join(result.output.split())
