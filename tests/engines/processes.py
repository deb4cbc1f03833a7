"""What engine tests with real processes share: waiting, and finding a launch's processes."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from tidemill.engines._supervise import UID_VAR
from tidemill.engines.base import Engine, Observation, ReplicaHandle

DEADLINE_S = 15.0


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def wait_exit(engine: Engine, handle: ReplicaHandle) -> Observation:
    seen: list[Observation] = []

    def ended() -> bool:
        seen.append(engine.observe(handle))
        return not seen[-1].running

    wait_for(ended, "the replica to exit")
    return seen[-1]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def carrying(uid: str) -> list[int]:
    """Live processes whose environment names the launch ``uid``: all of one replica's."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(UID_VAR) == uid and not gone(proc.pid):
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found
