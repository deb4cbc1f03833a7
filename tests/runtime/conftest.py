"""Start replicas the way tidemill does: one real process per rank, env set, then stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TIDEMILL_JOB",
    "TIDEMILL_ROLE",
    "TIDEMILL_INDEX",
    "TF_CONFIG",
)


@dataclass(frozen=True)
class Finished:
    rank: int
    returncode: int
    stdout: str
    stderr: str


Launch = Callable[..., list[Finished]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No launch variables inherited from whoever runs the tests."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def launch() -> Iterator[Launch]:
    """``launch(argv, world_size, cwd=..., ranks=...)``: run ranks to completion, stop leftovers."""
    started: list[subprocess.Popen[str]] = []

    def run(
        argv: Sequence[str],
        world_size: int,
        *,
        cwd: Path,
        ranks: Sequence[int] | None = None,
        timeout_s: float = 60,
    ) -> list[Finished]:
        port = free_port()
        base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        for rank in range(world_size) if ranks is None else ranks:
            env = {
                **base,
                "RANK": str(rank),
                "WORLD_SIZE": str(world_size),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "TIDEMILL_JOB": "tests/ddp",
                "TIDEMILL_ROLE": "worker",
                "TIDEMILL_INDEX": str(rank),
                "CUDA_VISIBLE_DEVICES": "",
            }
            started.append(
                subprocess.Popen(
                    [sys.executable, *argv],
                    cwd=cwd,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        finished = []
        for rank, process in zip(ranks or range(world_size), started, strict=True):
            stdout, stderr = process.communicate(timeout=timeout_s)
            finished.append(Finished(rank, process.returncode, stdout, stderr))
        return finished

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()
