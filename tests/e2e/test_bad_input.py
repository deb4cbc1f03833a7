"""Bad input gets a clear error and a non-zero exit; the server and other jobs carry on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.harness import SLEEP_FOREVER, running_pids, script_job, wait_for

pytestmark = pytest.mark.e2e

CLUSTER = """
nodes:
  - {name: n, count: 2, cpu: 8, memory: 32Gi, gpus: 8}
queues:
  - {name: ads, max: {gpu: 8}}
"""


def tidemill(*args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tidemill", *args]
    if server is not None:
        argv += ["--server", server]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, name: str, document: object) -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


@pytest.fixture
def busy_server(start_server):  # type: ignore[no-untyped-def]
    """A server with one running job that every bad request must leave alone."""
    server, client = start_server(CLUSTER)
    client.submit(script_job("bystander", SLEEP_FOREVER, queue="ads"))
    [pid] = wait_for(lambda: running_pids(client, "bystander"), what="bystander running")
    yield server, client
    after = client.get("bystander")
    assert after.phase == "Running" and after.replicas[0].pid == pid
    assert client.health()


def test_validate_prints_every_error_with_its_path(tmp_path: Path) -> None:
    job = script_job("bad", "pass")
    job["spec"]["roles"]["worker"].update(replica=2, minReplicas=3, resources={"gpu": 1.5})
    path = write(tmp_path, "bad.yaml", job)

    result = tidemill("validate", str(path))

    assert result.returncode == 2
    lines = result.stderr + result.stdout
    assert "spec.roles.worker.replica: unknown field; did you mean 'replicas'?" in lines
    assert "spec.roles.worker.resources.gpu: 1.5 mixes whole and shared GPUs" in lines


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "apiVersion: tidemill/v1\nkind: [TrainingJob\n")

    result = tidemill("validate", str(path))

    assert result.returncode == 2
    assert "not valid YAML" in result.stderr + result.stdout
    assert "line 3" in result.stderr + result.stdout


def test_submitting_invalid_jobs_is_refused_with_the_field(busy_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = busy_server
    cases = {
        "unknown-queue": (dict(queue="nope"), "spec.queue: queue 'nope' does not exist"),
        "too-big": (
            dict(gpu=16),
            "spec.roles.worker.resources.gpu: asks 16 gpu per replica; the largest node has 8",
        ),
        "over-max": (
            dict(gpu=8, workers=2, queue="ads"),
            "spec.queue: the job needs 16 gpu in all; queue 'ads' may hold at most 8",
        ),
    }
    for name, (options, expected) in cases.items():
        path = write(tmp_path, f"{name}.yaml", script_job(name, "pass", **options))
        result = tidemill("submit", str(path), server=server.url)
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        assert expected in result.stdout + result.stderr, name


def test_name_clash_and_missing_jobs_are_clear_errors(busy_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, _ = busy_server
    path = write(tmp_path, "clash.yaml", script_job("bystander", "pass", queue="ads"))

    clash = tidemill("submit", str(path), server=server.url)
    missing = [
        tidemill(*cmd, server=server.url)
        for cmd in (
            ("get", "ghost"),
            ("delete", "ghost"),
            ("logs", "ghost"),
            ("describe", "ghost"),
        )
    ]

    assert clash.returncode != 0
    assert "job default/bystander already exists" in clash.stdout + clash.stderr
    for result in missing:
        assert result.returncode != 0
        assert "job 'ghost' not found" in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


def test_unreachable_server_is_a_clear_error() -> None:
    result = tidemill("jobs", server="http://127.0.0.1:9")

    assert result.returncode == 1
    assert "cannot reach the tidemill server at http://127.0.0.1:9" in result.stdout + result.stderr
