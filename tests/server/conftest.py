"""A real control plane in this process (uvicorn on a free loopback port, SQLite in
the test's folder), stopped with every job it ran."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import delete_every_job, wait_for
from tidemill.client import Client
from tidemill.server.limits import Limits
from tidemill.server.runner import ServerRunner

CLUSTER = "nodes:\n  - {name: n1, cpu: 4, memory: 8Gi}\n"


def chatty_job(name: str, lines: int = 3) -> dict[str, Any]:
    """A job whose one worker prints ``lines`` lines, then sleeps until deleted."""
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 0.1, "memory": "16Mi"},
                    "command": ["sh", "-c", f"seq 1 {lines}; exec sleep 600"],
                }
            }
        },
    }


def wait_for_log(client: Client, name: str) -> None:
    """Until the job's worker runs and has written its first line."""
    wait_for(lambda: client.get(name).phase == "Running", 30, f"{name} running")
    wait_for(lambda: list(client.logs(name)), 30, f"{name} logging")


@pytest.fixture
def start_runner(tmp_path: Path) -> Iterator[Callable[..., ServerRunner]]:
    """``start_runner(limits)`` → a started ServerRunner; everything stops after."""
    runners: list[ServerRunner] = []

    def start(limits: Limits | None = None) -> ServerRunner:
        state = tmp_path / f"state{len(runners)}"
        state.mkdir()
        cluster = state / "cluster.yaml"
        cluster.write_text(CLUSTER)
        runner = ServerRunner(state, cluster, port=0, limits=limits)
        runner.start()
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        with Client(runner.url) as client:
            delete_every_job(client)
        runner.stop()
