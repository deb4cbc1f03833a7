"""One reading of the process table gives each replica's tree and figures as psutil
would, process by process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil

from tidemill.engines.usage import ProcessTable

from .processes import wait_for

# The child spins for 0.5 s of CPU and the test waits for 0.3 s: /proc reports user and
# system time each rounded down to a clock tick, so their sum can stay just under what
# the child measured itself.
BUSY_CHILD = (
    "import time\n"
    "end = time.process_time() + 0.5\n"
    "while time.process_time() < end: pass\n"
    "time.sleep(60)"
)


def test_a_tree_read_once_finds_children_and_grandchildren_as_psutil_does() -> None:
    root = subprocess.Popen(
        ["sh", "-c", "sleep 60 & sh -c 'sleep 60; true' & wait"], start_new_session=True
    )
    try:
        parent = psutil.Process(root.pid)
        wait_for(lambda: len(parent.children(recursive=True)) == 3, "three descendants")

        table = ProcessTable()

        expected = parent.children(recursive=True)
        assert sorted(p.pid for p in table.descendants(root.pid)) == sorted(p.pid for p in expected)
        leaf = next(p for p in expected if not p.children())
        assert table.descendants(leaf.pid) == []
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def test_each_process_has_psutils_start_time_cpu_seconds_and_memory() -> None:
    busy = subprocess.Popen([sys.executable, "-c", BUSY_CHILD])
    try:
        process = psutil.Process(busy.pid)
        wait_for(lambda: sum(process.cpu_times()[:2]) >= 0.3, "0.3 s of CPU used")

        seen = ProcessTable().process(busy.pid)
        with process.oneshot():
            cpu_s = sum(process.cpu_times()[:2])
            rss = process.memory_info().rss
            created = process.create_time()

        assert seen is not None and seen.parent == os.getpid() and not seen.zombie
        assert abs(seen.created - created) < 0.05
        assert abs(seen.cpu_s - cpu_s) < 0.05
        assert abs(seen.rss_bytes - rss) <= rss * 0.1
    finally:
        busy.kill()
        busy.wait()


def test_a_process_that_ended_unreaped_is_a_zombie_and_one_never_seen_is_none() -> None:
    ended = subprocess.Popen(["true"])
    wait_for(lambda: psutil.Process(ended.pid).status() == psutil.STATUS_ZOMBIE, "a zombie")
    table = ProcessTable()
    ended.wait()

    zombie = table.process(ended.pid)
    assert zombie is not None and zombie.zombie
    assert table.process(2**22 + 1) is None
