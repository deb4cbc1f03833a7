"""Poison jobs against a real `tidemill server`: each is a 4xx naming the field, the server
keeps answering on the same connection, and a good job submitted alongside still runs to
Succeeded. `tidemill validate` and `tidemill run` refuse the same inputs with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import script_job, wait_for

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}


def poison(**worker: Any) -> dict[str, Any]:
    job = script_job("poison", "pass")
    job["spec"]["roles"]["worker"].update(worker)
    return job


def with_spec(**fields: Any) -> dict[str, Any]:
    job = script_job("poison", "pass")
    job["spec"].update(fields)
    return job


def with_label(value: str) -> dict[str, Any]:
    job = script_job("poison", "pass")
    job["metadata"]["labels"] = {"team": value}
    return job


def alias_bomb() -> str:
    """384 bytes that a naive loader expands to a billion nodes."""
    lines = ["a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]"]
    for level in "bcdefghi":
        previous = chr(ord(level) - 1)
        lines.append(f"{level}: &{level} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join(lines) + "\napiVersion: *i\nkind: TrainingJob\n"


def body(document: dict[str, Any]) -> bytes:
    """JSON as a client that writes Python floats would send it (inf as 1e400)."""
    return json.dumps(document).replace("Infinity", "1e400").encode()


POISON: dict[str, tuple[bytes, dict[str, str], str]] = {
    "replicas 2**63": (
        body(poison(replicas=9223372036854775808)),
        JSON,
        "spec.roles.worker.replicas",
    ),
    "a NUL byte in command": (
        body(poison(command=[sys.executable, "-c", "pass\x00"])),
        JSON,
        "spec.roles.worker.command.2",
    ),
    "a 200 KiB env value": (
        body(poison(env={"BLOB": "x" * 200 * 2**10})),
        JSON,
        "spec.roles.worker.env.BLOB",
    ),
    "ttlSecondsAfterFinished 1e400": (
        body(with_spec(ttlSecondsAfterFinished=float("inf"))),
        JSON,
        "spec.ttlSecondsAfterFinished",
    ),
    "priority 2**70": (body(with_spec(priority=2**70)), JSON, "spec.priority"),
    'memory "1e400Gi"': (
        body(poison(resources={"memory": "1e400Gi"})),
        JSON,
        "spec.roles.worker.resources.memory",
    ),
    'cpu "inf"': (body(poison(resources={"cpu": "inf"})), JSON, "spec.roles.worker.resources.cpu"),
    "a lone surrogate in a label": (
        json.dumps(with_label("\ud800")).encode(),
        JSON,
        "metadata.labels.team",
    ),
    "a 384-byte YAML alias bomb": (alias_bomb().encode(), YAML, "<body>"),
    "10,000-deep JSON": (('{"a":' * 10_000 + "1" + "}" * 10_000).encode(), JSON, "<body>"),
    "10,000-deep YAML lists": (("a: " + "[" * 10_000 + "]" * 10_000).encode(), YAML, "<body>"),
    "a gang larger than the whole cluster": (
        body(script_job("too-big", "pass", workers=3, cpu=1)),
        JSON,
        "spec.roles",
    ),
}

CLUSTER = "nodes: [{name: n, cpu: 2, memory: 4Gi}]\n"


def test_poison_jobs_are_refused_and_a_good_job_still_succeeds(start_server) -> None:  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    good = script_job("good", "import time; time.sleep(1); print('done')")
    client.submit(good)

    with httpx.Client(base_url=server.url, timeout=30) as http:
        for case, (content, headers, path) in POISON.items():
            started = time.monotonic()
            response = http.post("/api/v1/jobs", content=content, headers=headers)
            elapsed_s = time.monotonic() - started

            assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
            errors = response.json()["error"]["errors"]
            assert errors and errors[0]["path"] == path, (case, errors)
            assert errors[0]["message"], case
            assert elapsed_s < 2, (case, elapsed_s)
            assert http.get("/healthz").status_code == 200, case

        listed = http.get("/api/v1/jobs").json()["items"]

    assert [job["name"] for job in listed] == ["good"]
    final = wait_for(
        lambda: (view := client.get("good")).phase in ("Succeeded", "Failed") and view,
        what="the good job to finish",
    )
    assert final.phase == "Succeeded"  # type: ignore[attr-defined]


def test_the_yaml_bomb_is_refused_by_validate_in_moments(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())

    started = time.monotonic()
    result = tidemill("validate", str(path))

    assert result.returncode == 2
    assert time.monotonic() - started < 10
    assert f"{path}: aliases expand this document to" in result.stderr


def test_validate_names_each_poison_field(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    job = poison(replicas=2**63, env={"BLOB": "x" * 100 * 2**10})
    job["metadata"]["labels"] = {"team": "\ud800"}
    path.write_text(json.dumps(job))

    result = tidemill("validate", str(path))

    assert result.returncode == 2
    assert "spec.roles.worker.replicas: 9223372036854775808 is beyond" in result.stderr
    assert "metadata.labels.team: is not valid UTF-8 text" in result.stderr


def half_the_machine_twice(tmp_path: Path) -> tuple[Path, str]:
    """Two workers of 3/4 of this machine's cores: each fits, the gang never does."""
    cores = os.cpu_count() or 1
    job = script_job("oversized", "print('ran anyway')", workers=2, cpu=cores * 0.75)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    gang = f"{cores * 1.5:g}"
    return path, f"needs {gang} cpu as a gang (2 worker x {cores * 0.75:g} cpu)"


def test_run_refuses_a_gang_larger_than_this_machine_with_the_numbers(tmp_path: Path) -> None:
    path, numbers = half_the_machine_twice(tmp_path)

    result = tidemill("run", str(path))

    assert result.returncode == 2
    assert "--oversubscribe" in result.stderr
    assert numbers in result.stderr
    assert f"the cluster has {os.cpu_count()} cpu in all (1 node)" in result.stderr


def test_run_oversubscribe_runs_it_anyway_with_a_warning(tmp_path: Path) -> None:
    path, _ = half_the_machine_twice(tmp_path)

    result = tidemill("run", "--oversubscribe", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Oversubscribed (Warning): this machine has" in result.stdout
    assert "running it anyway (--oversubscribe)" in result.stdout
    lines = result.stdout.splitlines()
    assert "[worker-0] ran anyway" in lines and "[worker-1] ran anyway" in lines


def tidemill(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tidemill", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)
