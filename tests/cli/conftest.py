"""Fixtures: a real control plane in this process, a dead URL and a valid job file.

The CLI and the SDK are tested against the real app (``ServerRunner`` on a free port,
real SQLite, real replica processes running Python one-liners). A module starts its
server once and arranges the jobs its tests read; every job is deleted and the server
stopped when the module ends.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import delete_every_job, script_job, wait_for
from tidemill.api.status import JobView
from tidemill.client import Client
from tidemill.server.runner import ServerRunner

CLUSTER = "nodes:\n  - {name: n1, cpu: 2, memory: 4Gi}\n"
"""One small node, so a job that takes a whole core keeps a two-core gang waiting."""
SLEEP = "import time; time.sleep(600)"


@dataclass
class Live:
    """A running control plane and an SDK client to arrange jobs with."""

    url: str
    client: Client

    def submit(self, name: str, script: str, **options: Any) -> JobView:
        """Submit a job whose workers run ``script`` (see ``tests.e2e.harness.script_job``)."""
        return self.client.submit(script_job(name, script, **options))

    def until(
        self,
        name: str,
        ready: Callable[[JobView], object],
        namespace: str | None = None,
        timeout_s: float = 30,
    ) -> JobView:
        """The job's view once ``ready(view)`` holds."""
        views: list[JobView] = []

        def check() -> object:
            views.append(self.client.get(name, namespace))
            return ready(views[-1])

        wait_for(check, timeout_s, f"job {name} to be ready")
        return views[-1]

    def finished(self, name: str, namespace: str | None = None) -> JobView:
        return self.until(name, lambda view: view.phase.is_terminal, namespace)

    def running(self, name: str, namespace: str | None = None) -> JobView:
        """Running with every replica's pid known."""
        return self.until(
            name,
            lambda view: view.phase == "Running" and all(r.pid for r in view.replicas),
            namespace,
        )


@contextmanager
def live_server(state_dir: Path, cluster: str = CLUSTER) -> Iterator[Live]:
    """A real server on a free port; its jobs deleted and the server stopped after."""
    cluster_file = state_dir / "cluster.yaml"
    cluster_file.write_text(cluster)
    with pytest.MonkeyPatch.context() as patch:
        # Replicas here are one-liners; a fork server preloading torch would cost more.
        patch.setenv("TIDEMILL_WARM_START", "0")
        runner = ServerRunner(state_dir, cluster_file, port=0)
    url = runner.start()
    client = Client(url)
    try:
        yield Live(url, client)
    finally:
        try:
            delete_every_job(client)
        finally:
            client.close()
            runner.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with live_server(tmp_path_factory.mktemp("state")) as server:
        yield server


@pytest.fixture
def closed_url() -> str:
    """A URL where nothing listens: a port we bound and released."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    """``ads/demo``: two workers that print a line each and exit 0 (``src/train.py``)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train.py").write_text(
        "import os\nprint('hello from rank', os.environ['RANK'], flush=True)\n"
    )
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: tidemill/v1\n"
        "kind: TrainingJob\n"
        "metadata: {name: demo, namespace: ads}\n"
        "spec:\n"
        "  roles:\n"
        "    worker:\n"
        "      replicas: 2\n"
        "      resources: {cpu: 0.25, memory: 64Mi}\n"
        "      command: [python, train.py]\n"
        "      workingDir: src\n"
    )
    return path
