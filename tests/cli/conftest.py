"""Fixtures: a fake REST server (see fake_api), a dead URL and a valid job file."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.fake_api import FakeServer, serve


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeServer]:
    with serve() as server:
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
    path = tmp_path / "job.yaml"
    path.write_text(
        "apiVersion: tidemill/v1\n"
        "kind: TrainingJob\n"
        "metadata: {name: demo, namespace: ads}\n"
        "spec:\n"
        "  roles:\n"
        "    worker:\n"
        "      replicas: 2\n"
        "      command: [python, train.py]\n"
        "      workingDir: src\n"
    )
    return path
