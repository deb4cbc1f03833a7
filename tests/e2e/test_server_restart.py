"""SIGKILL the control plane mid-job: nothing is lost, the lifecycle carries on."""

from __future__ import annotations

import time

import pytest

from tests.e2e.harness import SLEEP_FOREVER, script_job, wait_for

pytestmark = pytest.mark.e2e

# worker-0 outlives the outage and succeeds; worker-1 fails once during it.
WORKER = (
    "import os, time\n"
    "index, attempt = os.environ['TIDEMILL_INDEX'], int(os.environ['TIDEMILL_ATTEMPT'])\n"
    "print('worker', index, 'attempt', attempt, flush=True)\n"
    "if index == '0': time.sleep(6)\n"
    "elif attempt == 0:\n"
    "    time.sleep(1.5); raise SystemExit(7)\n"
)


def test_server_sigkill_and_restart_keeps_jobs_and_readopts_replicas(start_server):  # type: ignore[no-untyped-def]
    server, client = start_server()
    client.submit(script_job("survivor", WORKER, workers=2, mode="ps", ps_script=SLEEP_FOREVER))
    client.submit(script_job("queued-later", SLEEP_FOREVER, cpu=2, workers=1))
    view = wait_for(
        lambda: (
            (v := client.get("survivor")).phase == "Running"
            and all(r.pid for r in v.replicas)
            and v
        ),
        what="survivor running",
    )
    pids = {f"{r.role}-{r.index}": r.pid for r in view.replicas}

    server.kill()
    time.sleep(2.5)  # worker-1 exits with 7 while nobody watches
    server.start()

    after = client.get("survivor")
    assert {f"{r.role}-{r.index}": r.pid for r in after.replicas}["worker-0"] == pids["worker-0"]
    assert client.get("queued-later").phase == "Pending"
    final = client.wait("survivor", timeout_s=60)
    assert final.phase == "Succeeded", final.message
    replicas = {f"{r.role}-{r.index}": r for r in final.replicas}
    assert replicas["worker-1"].restarts == 1
    assert replicas["ps-0"].phase == "Stopped"
    failure = next(e for e in client.job_events("survivor") if e.reason == "ReplicaFailed")
    assert "worker-1 exited 7" in failure.message
