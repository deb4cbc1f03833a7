"""PS replicas as real processes (``python -m tidemill.ps``), started and stopped per use."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tidemill.ps import OptimizerConfig, PSConfig, TableConfig

LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass
class PSProcesses:
    processes: list[subprocess.Popen[str]]
    addresses: list[tuple[str, int]]

    def stop(self) -> list[int]:
        """SIGTERM every replica still running; their exit codes."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=20))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait())
        return codes


StartPS = Callable[..., PSProcesses]


def start_replicas(config: PSConfig, replicas: int) -> PSProcesses:
    env = {
        **os.environ,
        "TIDEMILL_PS": config.to_spec(replicas).model_dump_json(by_alias=True),
        "TIDEMILL_PS_ADDRS": ",".join(["127.0.0.1:0"] * replicas),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tidemill.ps"],
            env={**env, "TIDEMILL_INDEX": str(index)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for index in range(replicas)
    ]
    started = PSProcesses(processes, [])
    for process in processes:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = LISTENING.search(line)
        if found is None:
            started.stop()
            pytest.fail(f"PS replica did not start: {line!r}")
        started.addresses.append((found.group(1), int(found.group(2))))
    return started


@pytest.fixture
def start_ps() -> Iterator[StartPS]:
    """``start_ps(config, replicas)``: replicas as processes, all stopped after the test."""
    started: list[PSProcesses] = []

    def start(config: PSConfig, replicas: int = 2) -> PSProcesses:
        started.append(start_replicas(config, replicas))
        return started[-1]

    yield start
    for group in started:
        group.stop()


SHARED_TABLES = (
    TableConfig("sgd_ref", 8, OptimizerConfig("sgd", lr=0.5), init_scale=0.1, seed=3),
    TableConfig("adagrad_ref", 8, OptimizerConfig("adagrad", lr=0.3), init_scale=0.1, seed=4),
    TableConfig("two_ranks", 4, OptimizerConfig("adagrad", lr=0.2), init_scale=0.1, seed=5),
    TableConfig("bag", 6, OptimizerConfig("sgd", lr=0.1), init_scale=0.1, seed=6),
    TableConfig("collection", 3, OptimizerConfig("sgd", lr=0.1), init_scale=0.1, seed=7),
    TableConfig("undo", 4, OptimizerConfig("sgd", lr=1.0), init_scale=0.1, seed=8),
    TableConfig("misc", 4, OptimizerConfig("sgd", lr=1.0), init_scale=0.1, seed=9),
    TableConfig("speed", 64, OptimizerConfig("adagrad", lr=0.01), init_scale=0.01, seed=10),
)
SHARED_CONFIG = PSConfig(SHARED_TABLES, pull_timeout_s=20.0, virtual_shards=64)


@pytest.fixture(scope="session")
def shared_ps() -> Iterator[PSProcesses]:
    """Two sync replicas for the whole session; each test uses its own tables."""
    started = start_replicas(SHARED_CONFIG, 2)
    yield started
    assert started.stop() == [0, 0]
