"""Fixtures: a real job master process per test, and hand-driven replica connections."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .processes import MasterProcess, Replica


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Callable[..., MasterProcess]]:
    """``master(MIN=1, MAX=4, TIMEOUT_S=...)``: a started master; killed after the test."""
    started: list[MasterProcess] = []

    def start(**settings: float | int) -> MasterProcess:
        env = {f"TIDEMILL_ELASTIC_{key}": str(value) for key, value in settings.items()}
        process = MasterProcess(tmp_path, {"TIDEMILL_ELASTIC_SETTLE_S": "0.2", **env})
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def replicas() -> Iterator[Callable[[str], Replica]]:
    opened: list[Replica] = []

    def connect(address: str) -> Replica:
        replica = Replica(address)
        opened.append(replica)
        return replica

    yield connect
    for replica in opened:
        replica.close()
