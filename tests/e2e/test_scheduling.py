"""Queues, DRF order and preemption on a declared cluster of virtual GPU nodes."""

from __future__ import annotations

import json
import re

import httpx
import psutil
import pytest

from tests.e2e.harness import SLEEP_FOREVER, script_job, wait_for

pytestmark = pytest.mark.e2e

CLUSTER = """
nodes:
  - {name: gpu, cpu: 16, memory: 64Gi, gpus: 4, gpuModel: A100}
queues:
  - {name: ads}
  - {name: search}
  - {name: ops}
priorityClasses: {high: 1000}
"""

PRINT_GPUS = (
    "import os, time\n"
    "print('visible', os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
    "while True: time.sleep(0.5)\n"
)


def phase(client, name):  # type: ignore[no-untyped-def]
    return client.get(name).phase


def test_drf_picks_the_queue_with_the_smaller_share_and_explains_the_other(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server(CLUSTER)
    client.submit(script_job("ads-small", SLEEP_FOREVER, gpu=1, queue="ads"))
    client.submit(script_job("blocker", SLEEP_FOREVER, gpu=3, queue="ops"))
    wait_for(lambda: phase(client, "blocker") == "Running", what="blocker running")
    # Both wait for the same 3 GPUs; ads was first in time but already holds a GPU.
    client.submit(script_job("ads-big", SLEEP_FOREVER, gpu=3, queue="ads"))
    client.submit(script_job("search-big", SLEEP_FOREVER, gpu=3, queue="search"))
    wait_for(lambda: client.get("search-big").pending_reason, what="a pending reason")

    client.delete("blocker")

    wait_for(lambda: phase(client, "search-big") == "Running", what="search-big running")
    ads_big = wait_for(
        lambda: (view := client.get("ads-big")).pending_reason and view, what="ads-big reason"
    )
    assert ads_big.phase == "Pending"
    assert ads_big.pending_reason.code == "InsufficientGPU"
    assert "3" in ads_big.pending_reason.message and "gpu" in ads_big.pending_reason.message
    listed = {job.name: job for job in client.jobs(phase="Pending")}
    assert listed["ads-big"].pending_reason == client.get("ads-big").pending_reason
    queues = {q.name: q for q in client.queues()}
    assert queues["ads"].pending == 1 and queues["search"].running == 1
    assert queues["search"].allocated.gpu == 3


def test_gpu_ids_chosen_by_the_scheduler_reach_the_replica(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server(CLUSTER)
    client.submit(script_job("two-gpus", PRINT_GPUS, gpu=2, queue="ads"))
    client.submit(script_job("half", PRINT_GPUS, gpu=0.5, workers=2, queue="search"))

    def logs_ready(name: str) -> list[str] | None:
        lines = [line for line in client.logs(name) if "] visible " in line]
        return lines if len(lines) == len(client.get(name).replicas) else None

    two = wait_for(lambda: logs_ready("two-gpus"), what="two-gpus logs")
    half = wait_for(lambda: logs_ready("half"), what="half logs")

    assigned = client.get("two-gpus").replicas[0].gpus
    assert len(assigned) == 2
    assert f"visible {','.join(assigned)}" in two[0]
    # Two half-GPU replicas share one device, not the ones held by two-gpus.
    shared = {r.gpus[0] for r in client.get("half").replicas}
    assert len(shared) == 1 and shared.isdisjoint(assigned)
    assert all(f"visible {next(iter(shared))}" in line for line in half)
    node = client.nodes()[0]
    assert sorted(node.gpu_used) == [0.0, 1.0, 1.0, 1.0]


def test_high_priority_job_preempts_a_low_priority_one_which_requeues(start_server):  # type: ignore[no-untyped-def]
    _, client = start_server(CLUSTER)
    client.submit(script_job("low", SLEEP_FOREVER, gpu=4, workers=1, queue="ads"))
    low_pid = wait_for(
        lambda: [r.pid for r in client.get("low").replicas if r.pid], what="low running"
    )[0]
    high = script_job("high", "import time; time.sleep(1.5)", gpu=2, workers=2, queue="search")
    high["spec"]["priorityClassName"] = "high"

    client.submit(high)

    wait_for(lambda: phase(client, "high") == "Running", what="high running")
    low = client.get("low")
    assert low.phase == "Pending"
    preempted = next(c for c in low.conditions if c.type == "Preempted")
    assert preempted.status and "default/high" in preempted.message
    assert not psutil.pid_exists(low_pid) or psutil.Process(low_pid).status() == "zombie"
    assert client.get("high").priority == 1000
    # Once the high-priority job is done, the victim runs again.
    assert client.wait("high", timeout_s=60).phase == "Succeeded"
    wait_for(lambda: phase(client, "low") == "Running", what="low running again")
    events = [e.reason for e in client.job_events("low")]
    assert events.count("Running") == 2 and "Preempted" in events


def test_metrics_show_jobs_queues_and_allocation(start_server):  # type: ignore[no-untyped-def]
    server, client = start_server(CLUSTER)
    client.submit(script_job("m", SLEEP_FOREVER, gpu=1, queue="ads"))
    wait_for(lambda: phase(client, "m") == "Running", what="m running")

    text = httpx.get(f"{server.url}/metrics").text

    assert 'tidemill_jobs{phase="Running"} 1.0' in text
    assert 'tidemill_capacity{resource="gpu"} 4.0' in text
    assert 'tidemill_allocated{resource="gpu"} 1.0' in text
    assert 'tidemill_queue_running_jobs{queue="ads"} 1.0' in text
    assert 'tidemill_queue_allocated{queue="ads",resource="gpu"} 1.0' in text
    assert 'tidemill_queue_allocated{queue="search",resource="gpu"} 0.0' in text
    assert 'tidemill_queue_dominant_share{queue="ads"} 0.25' in text  # 1 of 4 GPUs
    assert "tidemill_scheduling_latency_seconds_count 1.0" in text
    assert json.loads(httpx.get(f"{server.url}/openapi.json").text)["paths"]["/api/v1/jobs"]
    dashboard = httpx.get(f"{server.url}/")
    assert dashboard.status_code == 200 and "<title>tidemill</title>" in dashboard.text


WHOLE_NODE = """
nodes:
  - {name: only, cpu: 2, memory: 4Gi}
queues:
  - {name: a-backlog}
  - {name: b-team}
"""


def test_a_queue_with_a_backlog_of_whole_cluster_jobs_does_not_starve_another(start_server):  # type: ignore[no-untyped-def]
    """Each job of a-backlog (first by name) takes the whole node. Before, whenever the
    node freed both queues held nothing, the tie went by name, and b-team's job waited
    for the whole backlog; now the queue that used less lately goes first."""
    server, client = start_server(WHOLE_NODE)
    short = "import time; time.sleep(0.5)"
    for i in range(8):
        client.submit(script_job(f"a{i}", short, cpu=2, queue="a-backlog"))
    wait_for(lambda: phase(client, "a0") == "Running", what="the backlog's first job running")
    client.submit(script_job("b0", short, cpu=2, queue="b-team"))
    wait_for(lambda: phase(client, "b0") == "Succeeded", timeout_s=60, what="b-team's job done")
    started = {job.name: client.get(job.name).started_at for job in client.jobs()}
    backlog_before = sorted(
        name
        for name, at in started.items()
        if name != "b0" and at is not None and at < started["b0"]
    )
    assert backlog_before in (["a0"], ["a0", "a1"]), started
    metrics = httpx.get(f"{server.url}/metrics").text
    used = {
        queue: float(value)
        for queue, value in re.findall(
            r'tidemill_queue_recent_use_share_seconds\{queue="([^"]+)"\} (\S+)', metrics
        )
    }
    assert used["a-backlog"] > used["b-team"] > 0, used
