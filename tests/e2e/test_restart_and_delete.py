"""Restart policies and deletion, with real replica processes."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from tests.e2e.harness import SLEEP_FOREVER, running_pids, script_job, wait_for

pytestmark = pytest.mark.e2e

# Attempt 0 waits to be killed; a restarted attempt finishes at once.
KILL_ME_ONCE = (
    "import os, time\n"
    "attempt = int(os.environ['TIDEMILL_ATTEMPT'])\n"
    "print('attempt', attempt, 'rank', os.environ['RANK'], flush=True)\n"
    "time.sleep(120 if attempt == 0 else 0.2)\n"
)


def test_killed_worker_is_restarted_and_the_job_succeeds(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server()
    client.submit(script_job("kill-me", KILL_ME_ONCE, workers=2))
    pids = wait_for(lambda: running_pids(client, "kill-me"), what="both workers running")
    victim = client.get("kill-me").replicas[1]
    os.kill(victim.pid, signal.SIGKILL)

    final = client.wait("kill-me", timeout_s=60)

    assert final.phase == "Succeeded", final.message
    by_name = {f"{r.role}-{r.index}": r for r in final.replicas}
    assert by_name["worker-1"].restarts == 1
    # AllReduce restarts the gang: the survivor was stopped and started again too.
    assert by_name["worker-0"].pid not in pids
    reasons = [e.reason for e in client.job_events("kill-me")]
    assert "ReplicaFailed" in reasons and "Restarting" in reasons
    failed = next(e for e in client.job_events("kill-me") if e.reason == "ReplicaFailed")
    assert "worker-1 exited 137" in failed.message
    assert "attempt 1" in "".join(client.logs("kill-me", role="worker", index=1))


def test_a_replica_that_keeps_failing_fails_the_job_after_max_restarts(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server()
    client.submit(script_job("always-fails", "raise SystemExit(3)", max_restarts=2))

    final = client.wait("always-fails", timeout_s=60)

    assert final.phase == "Failed"
    assert final.replicas[0].restarts == 2
    assert "exited with code 3 after 2 restart(s); maxRestarts is 2" in final.message


def test_restart_policy_never_fails_the_job_on_the_first_failure(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server()
    client.submit(script_job("never", "raise SystemExit(5)", restart_policy="Never"))

    final = client.wait("never", timeout_s=60)

    assert final.phase == "Failed"
    assert final.replicas[0].restarts == 0
    assert "restartPolicy is Never" in final.message


def test_deleting_a_running_job_leaves_no_process_behind(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server()
    # Each worker starts a grandchild, one of them in its own session, to escape a naive kill.
    spawner = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
        " start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    client.submit(script_job("tree", spawner, workers=2))
    pids = wait_for(lambda: running_pids(client, "tree"), what="workers running")
    wait_for(
        lambda: all(len(psutil.Process(p).children()) == 2 for p in pids),
        what="grandchildren started",
    )
    family = [p for pid in pids for p in [psutil.Process(pid), *psutil.Process(pid).children()]]

    client.delete("tree")

    alive = [p.pid for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert [j.name for j in client.jobs()] == []


def test_success_stops_the_parameter_servers(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server()
    client.submit(
        script_job("ps-done", "print('trained')", workers=2, mode="ps", ps_script=SLEEP_FOREVER)
    )

    final = client.wait("ps-done", timeout_s=60)

    assert final.phase == "Succeeded"
    phases = {f"{r.role}-{r.index}": r.phase for r in final.replicas}
    assert phases == {"ps-0": "Stopped", "worker-0": "Succeeded", "worker-1": "Succeeded"}
