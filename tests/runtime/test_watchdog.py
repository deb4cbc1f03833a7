"""The group-change watchdog ends a process stuck in native code with the GIL held."""

from __future__ import annotations

import subprocess
import sys
import time

STUCK = """
import ctypes
from tidemill.runtime._watchdog import watchdog

def change_the_group():
    ctypes.PyDLL(None).sleep(30)  # libc sleep called with the GIL held: no thread runs

with watchdog(limit_s=0.5):
    change_the_group()
"""


def test_a_process_stuck_with_the_gil_held_prints_its_stacks_and_exits() -> None:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, text=True, timeout=20)
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    assert "Timeout (0:00:00.500000)!" in done.stderr
    assert "change_the_group" in done.stderr


def test_a_group_change_that_finishes_in_time_leaves_the_process_alone() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time\nfrom tidemill.runtime._watchdog import watchdog\n"
            "with watchdog(limit_s=0.3):\n    pass\ntime.sleep(0.6)\nprint('alive')",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode == 0 and done.stdout.strip() == "alive"
