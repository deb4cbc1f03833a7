"""Elastic training in place on the Kubernetes engine (emulated API server, tests/kube):
a worker's container killed, the job scaled up and down; every sample trained exactly
once, and the pods nobody touched kept their process from start to end."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import trained_once, wait_for
from tests.e2e.kubernetes import Cluster, emulated, server
from tidemill.api.job import TrainingJob
from tidemill.client import Client
from tidemill.engines.kubernetes import names

pytestmark = pytest.mark.e2e
STEPS, BATCH = 2400, 60
"""Enough steps (at least 24 s at 0.01 s a step) that every resize happens while the job
trains: on a busy machine a new pod takes seconds to start, and with 900 the job once
finished at world 3 before the fourth worker could join."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    yield from emulated(tmp_path)


def progress(api: Client) -> list[dict[str, Any]]:
    lines = [line.split("progress ", 1)[1] for line in api.logs("counting") if "progress {" in line]
    return [json.loads(line) for line in lines]


def world_reached(api: Client, size: int, after: float) -> dict[str, Any] | None:
    return next((p for p in progress(api) if p["world"] == size and p["t"] > after), None)


def wait_world(api: Client, size: int, after: float, timeout_s: float, what: str) -> None:
    """Until rank 0 reports a step at world ``size`` after ``after``; a timeout says which
    worlds it reported since and the job's last events, to tell a stall from a race."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if world_reached(api, size, after):
            return
        time.sleep(0.1)
    seen = [(p["world"], round(p["t"] - after, 1)) for p in progress(api) if p["t"] > after]
    events = [f"{e.reason}: {e.message}" for e in api.job_events("counting")][-12:]
    pytest.fail(
        f"timed out after {timeout_s}s waiting for {what}; (world, seconds after) since: "
        f"{seen[:5]} ... {seen[-5:]}; last events: {events}"
    )


def worker_pods(cluster: Cluster) -> dict[str, str]:
    """worker-i -> the name of its running pod."""
    return {
        f"worker-{p.metadata.labels[names.INDEX_LABEL]}": p.metadata.name
        for p in cluster.pods("counting")
        if p.metadata.labels[names.ROLE_LABEL] == "worker"
        and p.status.phase == "Running"
        and not p.metadata.deletion_timestamp
    }


def counting_job(
    cluster: Cluster, result: Path, steps: int, step_time: float, **changes: Any
) -> TrainingJob:
    """The elastic example as job ``counting``: its progress every 5 steps, and how often
    each sample was trained in ``result``; ``changes`` as for :meth:`Cluster.example`."""
    job = cluster.example(
        "elastic",
        args=["--steps", str(steps), "--batch", str(BATCH), "--step-time", str(step_time),
              "--log-every", "5", "--result", str(result)],
        **changes,
    )
    return job.model_copy(update={"metadata": job.metadata.model_copy(update={"name": "counting"})})


def pids_of(summary: dict[str, Any], name: str) -> set[int]:
    """Every process ``name`` trained in, over all epochs (one: it stayed in place)."""
    return {pid for epoch in summary["epochs"] for replica, pid in epoch["pids"] if replica == name}


def one_worker_per_node(cluster: Cluster, result: Path, steps: int) -> TrainingJob:
    """Two workers, one per node (3 of a node's 4 cpu each), and a spare node where a
    replacement can go."""
    assert cluster.emulator is not None
    cluster.emulator.add_node("node-spare", cpu="4", memory="16Gi")
    return counting_job(
        cluster, result, steps, 0.02,
        resources={"cpu": 3, "memory": "512Mi"}, replicas=2, maxReplicas=2,
    )


def test_kill_add_remove_workers_on_kubernetes_and_every_sample_is_trained_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.emulator is not None
    result = tmp_path / "result.json"
    job = counting_job(
        cluster, result, STEPS, 0.01,
        resources={"cpu": 0.5, "memory": "512Mi"},
    )
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        api.scale("counting", "worker", 3)
        wait_for(lambda: world_reached(api, 3, 0), timeout_s=120, what="training at world 3")
        before = worker_pods(cluster)
        assert sorted(before) == ["worker-0", "worker-1", "worker-2"]

        killed_at = time.time()
        cluster.emulator.kill_process(cluster.namespace, before["worker-2"], signal.SIGKILL)
        resumed = wait_for(lambda: world_reached(api, 2, killed_at), timeout_s=60,
                           what="survivors training at world 2")
        wait_world(api, 3, resumed["t"], 90, "the replacement pod joining (world 3)")
        asked = time.time()
        api.scale("counting", "worker", 4)
        wait_world(api, 4, asked, 90, "world 4")
        asked = time.time()
        api.scale("counting", "worker", 2)
        wait_world(api, 2, asked, 90, "world 2")

        final = api.wait("counting", timeout_s=300)
        assert final.phase == "Succeeded", final.message
    summary = trained_once(result, STEPS, BATCH)
    assert {2, 3, 4} <= {epoch["world_size"] for epoch in summary["epochs"]}
    for name in ("worker-0", "worker-1"):
        pids = pids_of(summary, name)
        assert len(pids) == 1, f"{name} kept its process in place: {pids}"


def test_an_elastic_worker_lost_with_its_node_is_replaced_elsewhere_and_none_is_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.emulator is not None
    result, steps = tmp_path / "result.json", 400
    job = one_worker_per_node(cluster, result, steps)
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        wait_for(lambda: world_reached(api, 2, 0), timeout_s=120, what="training at world 2")
        pods = {p.metadata.labels[names.INDEX_LABEL]: p for p in cluster.pods("counting")
                if p.metadata.labels[names.ROLE_LABEL] == "worker"}
        lost = pods["1"].spec.node_name
        assert pods["0"].spec.node_name != lost
        lost_at = time.time()
        cluster.emulator.lose_node(lost)
        wait_world(api, 1, lost_at, 60, "the survivor training alone")
        wait_world(api, 2, lost_at, 90, "a replacement joining on another node")
        final = api.wait("counting", timeout_s=300)
        assert final.phase == "Succeeded", final.message
        reasons = [e.reason for e in api.job_events("counting")]
        assert "ReplicaLost" in reasons
    summary = trained_once(result, steps, BATCH)
    survivor = pids_of(summary, "worker-0")
    assert len(survivor) == 1, "the survivor kept its process"


def test_a_master_lost_with_its_node_restarts_beside_a_survivor_which_keeps_its_process(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.emulator is not None
    result, steps = tmp_path / "result.json", 400
    job = one_worker_per_node(cluster, result, steps)
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        wait_for(lambda: world_reached(api, 2, 0), timeout_s=120, what="training at world 2")
        nodes = {f"{p.metadata.labels[names.ROLE_LABEL]}-{p.metadata.labels[names.INDEX_LABEL]}":
                 p.spec.node_name for p in cluster.pods("counting")}
        lost = nodes["master-0"]
        [survivor] = [name for name, node in nodes.items() if node != lost]
        lost_at = time.time()
        cluster.emulator.lose_node(lost)
        # The survivor may train alone for an epoch, or the replacement join at once.
        wait_world(api, 2, lost_at, 90, "the survivor and a replacement on another node")
        final = api.wait("counting", timeout_s=300)
        assert final.phase == "Succeeded", final.message
        events = [f"{e.reason}: {e.message}" for e in api.job_events("counting")]
    assert not [e for e in events if e.startswith("BindFailed")], events
    assert any(e.startswith(f"MasterMoved: master-0 was lost with its node {lost}") for e in events)
    summary = trained_once(result, steps, BATCH)
    pids = pids_of(summary, survivor)
    assert len(pids) == 1, f"{survivor} kept its process: {pids}"


def test_a_restart_the_api_refuses_is_tried_again_uncharged_and_the_survivor_trains_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    assert cluster.emulator is not None
    result = tmp_path / "result.json"
    steps = 600
    job = counting_job(
        cluster, result, steps, 0.02,
        resources={"cpu": 1, "memory": "512Mi"},
        replicas=2,
        maxReplicas=2,
    )
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(job)
        wait_for(lambda: world_reached(api, 2, 0), timeout_s=120, what="training at world 2")
        pods = worker_pods(cluster)
        # Two launches' worth of failed creates (the client tries each 4 times).
        cluster.emulator.inject("POST", r"/namespaces/default/pods$", 500, times=8)
        cluster.emulator.kill_process(cluster.namespace, pods["worker-1"], signal.SIGKILL)
        final = api.wait("counting", timeout_s=300)
        assert final.phase == "Succeeded", final.message
        events = [f"{e.reason}: {e.message}" for e in api.job_events("counting")]
        [worker_1] = [r for r in api.get("counting").replicas if (r.role, r.index) == ("worker", 1)]
    assert not [e for e in events if e.startswith("BindFailed")], events
    refused = [e for e in events if e.startswith("LaunchFailed: worker-1 could not be made")]
    assert len(refused) == 2, events
    assert worker_1.restarts == 1, "only the kill is charged, not the refused launches"
    summary = trained_once(result, steps, BATCH)
    assert summary["epochs"][-1]["world_size"] == 2, "worker-1 came back"
    survivor = pids_of(summary, "worker-0")
    assert len(survivor) == 1, f"worker-0 kept its process: {survivor}"
