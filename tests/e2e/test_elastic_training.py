"""Elastic training in place, under the control plane, checked sample by sample.

examples/elastic/train.py trains a counting model: each optimizer step adds exactly +1
to counts[id] for every sample id of the step's global batch. We kill a worker, add
two, remove one; at the end every sample of every committed step must read exactly 1
(none lost, none trained twice) and the workers that were never touched kept their PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import trained_once, wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "elastic" / "train.py"
STEPS, BATCH = 1500, 60
CLUSTER = "nodes:\n  - {name: n, cpu: 8, memory: 16Gi}\n"


def job(result: Path) -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "counting"},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 4,
                    "minReplicas": 1,
                    "maxReplicas": 6,
                    "resources": {"cpu": 0.5, "memory": "512Mi"},
                    "command": [sys.executable, str(TRAIN)],
                    "args": [
                        "--steps",
                        str(STEPS),
                        "--batch",
                        str(BATCH),
                        "--step-time",
                        "0.01",
                        "--log-every",
                        "5",
                        "--result",
                        str(result),
                    ],
                    "restartPolicy": "OnFailure",
                }
            },
            "restartBackoffSeconds": 0.5,
        },
    }


def progress(client) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    lines = [
        line.split("progress ", 1)[1] for line in client.logs("counting") if "progress {" in line
    ]
    return [json.loads(line) for line in lines]


def world_reached(client, size: int, after: float) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    return next((p for p in progress(client) if p["world"] == size and p["t"] > after), None)


def worker_pids(client) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {
        f"{r.role}-{r.index}": r.pid
        for r in client.get("counting").replicas
        if r.role == "worker" and r.phase == "Running" and r.pid
    }


def scale(server, replicas: int) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidemill",
            "scale",
            "counting",
            "--role",
            "worker",
            "--replicas",
            str(replicas),
            "--server",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_kill_add_remove_workers_and_every_sample_is_trained_exactly_once(
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    server, client = start_server(CLUSTER)
    result = tmp_path / "result.json"
    client.submit(job(result))
    scale(server, 4)
    wait_for(lambda: world_reached(client, 4, 0), timeout_s=90, what="training at world 4")
    before = worker_pids(client)
    assert sorted(before) == ["worker-0", "worker-1", "worker-2", "worker-3"]

    killed_at = time.time()
    os.kill(before["worker-3"], signal.SIGKILL)
    resumed = wait_for(
        lambda: world_reached(client, 3, killed_at),
        timeout_s=60,
        what="survivors training at world 3",
    )
    print(f"survivors resumed at world 3 {resumed['t'] - killed_at:.2f}s after kill -9")
    wait_for(
        lambda: world_reached(client, 4, resumed["t"]),
        timeout_s=60,
        what="the replacement joining (world 4)",
    )

    asked = time.time()
    scale(server, 6)
    wait_for(lambda: world_reached(client, 6, asked), timeout_s=60, what="world 6")
    asked = time.time()
    scale(server, 5)
    wait_for(lambda: world_reached(client, 5, asked), timeout_s=60, what="world 5")

    final = client.wait("counting", timeout_s=240)

    assert final.phase == "Succeeded", final.message
    summary = trained_once(result, STEPS, BATCH)
    worlds = [epoch["world_size"] for epoch in summary["epochs"]]
    assert {3, 4, 5, 6} <= set(worlds)
    # The workers nobody touched trained in the same process from start to end.
    for name in ("worker-0", "worker-1", "worker-2"):
        pids = {
            pid for epoch in summary["epochs"] for replica, pid in epoch["pids"] if replica == name
        }
        assert pids == {before[name]}, (name, pids)
