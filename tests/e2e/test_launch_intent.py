"""The control plane dies between a launch and its record: after a restart every
replica runs exactly once.

``TIDEMILL_FAULT_AFTER_LAUNCH=exit`` (a test hook of controller/launches.py) makes the
server exit right after its first ``engine.launch`` returns, before the handle is
committed: the job's replicas are all recorded as Launching, one of them started. The
restarted server adopts that one and launches the others.
"""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.harness import script_job, wait_for
from tidemill.controller.launches import FAULT_EXIT_CODE, FAULT_VAR

pytestmark = pytest.mark.e2e

RECORD_START = (
    "import os, time\n"
    "with open(os.environ['STARTS'], 'a') as f:\n"
    "    f.write(f\"{os.environ['TIDEMILL_ROLE']}-{os.environ['TIDEMILL_INDEX']} \"\n"
    '            f"{os.getpid()}\\n")\n'
    "while True: time.sleep(0.5)\n"
)


def starts(path: Path) -> list[tuple[str, int]]:
    """(replica, pid) per start, in order."""
    if not path.exists():
        return []
    return [
        (name, int(pid)) for name, pid in (line.split() for line in path.read_text().splitlines())
    ]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_server_killed_between_a_launch_and_its_commit_runs_each_replica_once(  # type: ignore[no-untyped-def]
    start_server, monkeypatch, tmp_path
):
    monkeypatch.setenv(FAULT_VAR, "exit")
    server, client = start_server()
    monkeypatch.delenv(FAULT_VAR)
    record = tmp_path / "starts.txt"
    job = script_job("once", RECORD_START, workers=3)
    job["spec"]["roles"]["worker"]["env"] = {"STARTS": str(record)}

    client.submit(job)

    assert server.process is not None
    assert server.process.wait(timeout=60) == FAULT_EXIT_CODE
    first = wait_for(lambda: starts(record), what="the one launch made before the crash")
    time.sleep(1)  # nothing else starts while no server runs
    assert starts(record) == first and len(first) == 1
    [(launched, pid)] = first

    server.start()

    wait_for(lambda: len(starts(record)) == 3, what="the other replicas launched")
    view = wait_for(
        lambda: (
            (v := client.get("once")).phase == "Running" and all(r.pid for r in v.replicas) and v
        ),
        what="the job running",
    )
    time.sleep(1.5)  # a few more cycles: nothing is launched twice
    seen = starts(record)
    assert sorted(name for name, _ in seen) == ["worker-0", "worker-1", "worker-2"]
    assert all(alive(p) for _, p in seen)
    by_name = {f"{r.role}-{r.index}": r for r in view.replicas}
    assert by_name[launched].pid == pid  # the launch made before the crash, adopted
    assert by_name[launched].restarts == 0
    adopted = [e for e in client.job_events("once") if e.reason == "ReplicaAdopted"]
    assert [e.replica for e in adopted] == [launched]
