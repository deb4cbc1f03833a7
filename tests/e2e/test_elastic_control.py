"""Elastic jobs under the controller: start at what fits, grow into idle capacity, scale
on request, shrink instead of dying for a higher-priority job; bad scale requests refused.

The replicas here are plain processes that leave on SIGTERM, so these tests pin the
control plane's side; tests/e2e/test_elastic_training.py runs real elastic training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.e2e.harness import script_job, wait_for

pytestmark = pytest.mark.e2e

CLUSTER = """
nodes:
  - {name: n, cpu: 4, memory: 16Gi}
queues:
  - {name: ads}
priorityClasses: {urgent: 100}
"""

LEAVES_ON_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "while True: time.sleep(0.2)\n"
)


def elastic_job(name: str, low: int, high: int, cpu: float = 1) -> dict[str, object]:
    job = script_job(name, LEAVES_ON_SIGTERM, workers=low, cpu=cpu, queue="ads")
    worker = job["spec"]["roles"]["worker"]  # type: ignore[index]
    worker.update(minReplicas=low, maxReplicas=high)
    return job


def workers(client, name):  # type: ignore[no-untyped-def]
    """worker name -> pid for the running workers (None until every one has a pid)."""
    view = client.get(name)
    running = {
        f"{r.role}-{r.index}": r.pid
        for r in view.replicas
        if r.role == "worker" and r.phase == "Running"
    }
    return running if running and all(running.values()) else None


def count_is(client, name, n):  # type: ignore[no-untyped-def]
    current = workers(client, name)
    return current if current is not None and len(current) == n else None


def scale(server_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidemill", "scale", *args, "--server", server_url],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_elastic_job_grows_into_idle_capacity_and_scales_in_place(start_server):  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    client.submit(elastic_job("flex", low=1, high=3))
    # Room for 4 cpu: it takes its maximum, 3 workers, and a master.
    first = wait_for(lambda: count_is(client, "flex", 3), what="3 workers")
    assert {r.role for r in client.get("flex").replicas} == {"master", "worker"}

    done = scale(server.url, "flex", "--role", "worker", "--replicas", "1")

    assert done.returncode == 0, done.stderr
    after = wait_for(lambda: count_is(client, "flex", 1), what="1 worker")
    assert after == {"worker-0": first["worker-0"]}  # the survivor kept its process
    def both_left() -> list[str] | None:
        reasons = [e.reason for e in client.job_events("flex")]
        return reasons if reasons.count("ScaledIn") == 2 else None

    # Leaving workers show Stopping (not Running) until they are gone: wait for that.
    reasons = wait_for(both_left, what="both leavers gone")
    assert "ScalingIn" in reasons and reasons.count("ScaledIn") == 2

    assert scale(server.url, "flex", "--role", "worker", "--replicas", "3").returncode == 0
    grown = wait_for(lambda: count_is(client, "flex", 3), what="3 workers again")
    assert grown["worker-0"] == first["worker-0"]
    assert client.get("flex").phase == "Running"
    assert any(e.reason == "ScaledOut" for e in client.job_events("flex"))


def test_a_higher_priority_job_shrinks_an_elastic_job_instead_of_preempting_it(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server(CLUSTER)
    client.submit(elastic_job("flex", low=1, high=4))
    first = wait_for(lambda: count_is(client, "flex", 4), what="4 workers")
    urgent = script_job("urgent", "import time; time.sleep(2)", workers=2, cpu=1, queue="ads")
    urgent["spec"]["priorityClassName"] = "urgent"  # type: ignore[index]

    client.submit(urgent)

    wait_for(lambda: client.get("urgent").phase == "Running", what="urgent running")
    flex = client.get("flex")
    assert flex.phase == "Running"
    kept = count_is(client, "flex", 2)
    assert kept == {"worker-0": first["worker-0"], "worker-1": first["worker-1"]}
    shrunk = next(e for e in client.job_events("flex") if e.reason == "Shrunk")
    assert "urgent" in shrunk.message
    # When the urgent job is done, the elastic job grows back into the room.
    assert client.wait("urgent", timeout_s=60).phase == "Succeeded"
    wait_for(lambda: count_is(client, "flex", 4), what="4 workers again")


def test_the_master_is_restarted_on_its_port_when_killed(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server(CLUSTER)
    client.submit(elastic_job("flex", low=1, high=2))
    pids = wait_for(lambda: count_is(client, "flex", 2), what="2 workers")
    master = next(r for r in client.get("flex").replicas if r.role == "master")
    wait_for(
        lambda: next(r for r in client.get("flex").replicas if r.role == "master").pid,
        what="master pid",
    )
    master_pid = next(r for r in client.get("flex").replicas if r.role == "master").pid

    os.kill(master_pid, signal.SIGKILL)

    restarted = wait_for(
        lambda: (
            (m := next(r for r in client.get("flex").replicas if r.role == "master"))
            and m.pid not in (None, master_pid)
            and m.phase == "Running"
            and m
        ),
        what="a new master",
    )
    assert restarted.restarts == master.restarts + 1
    assert workers(client, "flex") == pids
    assert any(e.reason == "MasterRestarting" for e in client.job_events("flex"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--role", "worker", "--replicas", "0"],
            "0 is outside worker's bounds [1, 3]",
            id="below minReplicas",
        ),
        pytest.param(
            ["--role", "worker", "--replicas", "9"],
            "9 is outside worker's bounds [1, 3]",
            id="above maxReplicas",
        ),
        pytest.param(
            ["--role", "ps", "--replicas", "2"],
            "has no role 'ps'",
            id="a role the job does not have",
        ),
    ],
)
def test_bad_scale_requests_are_refused_and_change_nothing(start_server, args, expected):  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    client.submit(elastic_job("flex", low=1, high=3))
    before = wait_for(lambda: count_is(client, "flex", 3), what="3 workers")

    refused = scale(server.url, "flex", *args)

    assert refused.returncode == 2
    assert expected in refused.stdout + refused.stderr
    assert workers(client, "flex") == before


def test_scaling_a_role_without_elastic_bounds_is_refused(start_server):  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    client.submit(script_job("fixed", "print('done')", workers=1, cpu=1, queue="ads"))
    assert client.wait("fixed", timeout_s=60).phase == "Succeeded"

    refused = scale(server.url, "fixed", "--role", "worker", "--replicas", "2")

    assert refused.returncode == 2
    assert "role 'worker' is not elastic" in refused.stdout + refused.stderr
