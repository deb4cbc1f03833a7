"""Real control planes for end-to-end tests: a `tidemill server` subprocess per test,
on a free port, with its own state folder; every process it started is gone after."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from tidemill.client import Client
from tidemill.data.testing import LocalBroker
from tidemill.engines.local import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    """A `tidemill server` child process; restartable on the same state folder."""

    state_dir: Path
    cluster_file: Path | None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    args: tuple[str, ...] = ()
    """More `tidemill server` options, e.g. ("--auth",)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "tidemill",
            "server",
            "--state-dir",
            str(self.state_dir),
            "--port",
            str(self.port),
        ]
        if self.cluster_file is not None:
            argv += ["--cluster", str(self.cluster_file)]
        argv += self.args
        log = open(self.state_dir / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.server_log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.server_log()}")

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a lost machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def server_log(self) -> str:
        path = self.state_dir / "server.log"
        return path.read_text() if path.exists() else ""


def write_cluster(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _processes_under(state_dir: Path) -> list[psutil.Process]:
    """Replica processes of this test: their supervisor's argv names the state folder."""
    marker = str(state_dir)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and marker in cmdline:
                found.append(proc)
                found.extend(proc.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[ServerProcess, Client]]]:
    """Start a real server (optionally with a cluster file); cleans up everything after."""
    servers: list[ServerProcess] = []
    clients: list[Client] = []

    def start(cluster: str | None = None) -> tuple[ServerProcess, Client]:
        state = tmp_path / f"state{len(servers)}"
        state.mkdir()
        cluster_file = write_cluster(tmp_path / "cluster.yaml", cluster) if cluster else None
        server = ServerProcess(state, cluster_file)
        server.start()
        servers.append(server)
        client = Client(server.url)
        clients.append(client)
        return server, client

    yield start
    for client in clients:
        client.close()
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            with Client(server.url) as client:
                for job in client.jobs():
                    client.delete(job.name, namespace=job.namespace)
        server.stop()
        leftovers = _processes_under(server.state_dir)
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@pytest.fixture
def broker() -> Iterator[LocalBroker]:
    """A real Kafka-protocol broker (tansu) on a free port, stopped after the test."""
    with LocalBroker() as running:
        yield running
