"""Helpers for end-to-end tests: small job documents (real Python one-liners as
replicas) and polling with a deadline."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tidemill.client import NotFound


def script_job(
    name: str,
    script: str,
    *,
    workers: int = 1,
    gpu: float = 0,
    cpu: float = 0.1,
    priority: int = 0,
    queue: str | None = None,
    namespace: str = "default",
    restart_policy: str = "OnFailure",
    max_restarts: int = 3,
    mode: str = "allreduce",
    ps_script: str | None = None,
    backoff_s: float = 0.2,
) -> dict[str, Any]:
    """A job whose workers run ``script`` with this test's interpreter."""
    worker: dict[str, Any] = {
        "replicas": workers,
        "resources": {"cpu": cpu, "memory": "64Mi", "gpu": gpu},
        "command": [sys.executable, "-c", script],
        "restartPolicy": restart_policy,
        "maxRestarts": max_restarts,
    }
    roles: dict[str, Any] = {"worker": worker}
    if ps_script is not None:
        roles["ps"] = {
            "replicas": 1,
            "resources": {"cpu": cpu, "memory": "64Mi"},
            "command": [sys.executable, "-c", ps_script],
        }
    spec: dict[str, Any] = {
        "mode": mode,
        "priority": priority,
        "roles": roles,
        "restartBackoffSeconds": backoff_s,
    }
    if queue is not None:
        spec["queue"] = queue
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


SLEEP_FOREVER = "import time\nwhile True: time.sleep(0.5)"
"""A replica that runs until stopped."""


def idle_elastic_job(name: str, checkpoint: dict[str, Any] | None = None) -> dict[str, Any]:
    """An elastic job (1..2 workers, so it has a master) whose worker idles until
    stopped, with ``checkpoint`` as its ``spec.checkpoint``."""
    job = script_job(name, SLEEP_FOREVER)
    job["spec"]["roles"]["worker"].update(minReplicas=1, maxReplicas=2)
    if checkpoint is not None:
        job["spec"]["checkpoint"] = checkpoint
    return job


def wait_for(predicate: Callable[[], object], timeout_s: float = 60, what: str = "") -> object:
    """Poll until ``predicate`` returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def delete_every_job(client: Any) -> None:
    """Delete every job, then wait until the controller has stopped their replicas,
    masters included: replicas outlive a stopped server (a restarted one adopts them),
    so a fixture that stops its server at once leaves processes behind."""
    for row in client.jobs():
        client.delete(row.name, namespace=row.namespace)
    wait_for(lambda: not client.jobs(), 30, "every job's replicas stopped")


def running_pids(client: Any, name: str) -> list[int] | None:
    """The pids of every replica once all of them run (None until then)."""
    view = client.get(name)
    pids = [r.pid for r in view.replicas if r.phase == "Running" and r.pid]
    return pids if pids and len(pids) == len(view.replicas) else None


def master_address(client: Any, job: str, namespace: str | None = None) -> tuple[str, int] | None:
    """Where the job master listens, from its "listening on HOST:PORT as ..." log line;
    None until it has logged it."""
    try:
        lines = list(client.logs(job, role="master", index=0, namespace=namespace))
    except NotFound:
        return None
    found = (re.search(r"listening on (\S+):(\d+) as ", line) for line in lines)
    return next(((match.group(1), int(match.group(2))) for match in found if match), None)


def trained_once(result: Path, steps: int, batch: int) -> dict[str, Any]:
    """The summary examples/elastic/train.py wrote, checked: every sample of every
    committed step trained exactly once, nothing beyond the last commit."""
    summary: dict[str, Any] = json.loads(result.read_text())
    assert summary["committed_step"] == steps
    assert summary["ids_trained_once"] == steps * batch
    assert summary["counts_min"] == summary["counts_max"] == 1.0
    assert summary["ids_beyond_commit_nonzero"] == 0
    return summary


def run_cli(*args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``tidemill ARGS`` to its end. Past ``timeout_s`` (keep it under pytest's own
    timeout, so this runs), it and every process under it (an embedded run's server,
    master and replicas) are killed, and the test fails with what it printed."""
    argv = [sys.executable, "-m", "tidemill", *args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        tree = [psutil.Process(process.pid)]
        with contextlib.suppress(psutil.NoSuchProcess):
            tree += tree[0].children(recursive=True)
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        stdout, stderr = process.communicate()
        pytest.fail(
            f"tidemill {' '.join(args)} did not end within {timeout_s:g} s; killed it and "
            f"{len(tree) - 1} processes under it. Its output ended with:\n"
            f"{stdout[-3000:]}{stderr[-3000:]}"
        )
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
