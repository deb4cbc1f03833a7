"""tidemill's parameter servers on the Kubernetes engine (emulated API server,
tests/kube): a PS shard lost with its node (alone, or with the job master) is placed
again on another node while the other replicas keep their pods, and the ledger the
workers keep on the servers (see ``ps_train.py``) ends exact: every sample trained once."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import wait_for
from tests.e2e.kubernetes import Cluster, emulated, server
from tests.e2e.test_ps_training import expected_ledger, ps_job
from tidemill.api.job import TrainingJob
from tidemill.client import Client
from tidemill.engines.kubernetes import names

pytestmark = pytest.mark.e2e
STEPS = 200
"""At 0.05 s a step, 10 s of training at least: the lost shard is placed again and
started on another node while the job still trains."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Its pod GC waits 40 s, as a real cluster's: the lost pods still show Running."""
    yield from emulated(tmp_path, podgc_quarantine_s=40)


def ledger_job(cluster: Cluster, result: Path, checkpoints: Path) -> TrainingJob:
    """``ps_job`` of the local PS tests on this cluster: two shards and two workers of
    2 cpu each, so each 4-cpu node holds one shard (spread) and one worker."""
    document = ps_job("ledger", result)
    document["metadata"]["namespace"] = cluster.namespace
    # A URL every pod reaches, as a bucket is on a cluster: the emulated pods share this
    # machine's disk.
    document["spec"]["checkpoint"] = {"dir": checkpoints.as_uri(), "everySteps": 5}
    worker = document["spec"]["roles"]["worker"]
    worker["command"] = [sys.executable, worker["command"][1], str(STEPS), str(result)]
    for role in document["spec"]["roles"].values():
        role.update(image=cluster.image, resources={"cpu": 2, "memory": "256Mi"})
    return TrainingJob.model_validate(document)


def reached(api: Client, step: int) -> bool:
    """Worker 0 logged ``step N`` (a pod's process has no pid on this host to wait for)."""
    running = [r for r in api.get("ledger").replicas if r.role == "worker" and r.index == 0]
    if not running or running[0].phase != "Running":
        return False
    return any(line.startswith(f"step {step} ") for line in api.logs("ledger", "worker", 0))


def running_elsewhere(cluster: Cluster, name: str, lost: str) -> str | None:
    """The node ``name`` runs on again, once it is not ``lost``."""
    pod = pods_by_replica(cluster).get(name)
    if pod is None or pod.status.phase != "Running" or pod.spec.node_name == lost:
        return None
    return str(pod.spec.node_name)


def pods_by_replica(cluster: Cluster) -> dict[str, Any]:
    """``role-index`` -> its pod (not terminating)."""
    return {
        f"{p.metadata.labels[names.ROLE_LABEL]}-{p.metadata.labels[names.INDEX_LABEL]}": p
        for p in cluster.pods("ledger")
        if not p.metadata.deletion_timestamp
    }


@pytest.mark.parametrize(
    "shard", ["ps-1", "ps-0"], ids=["a shard's node", "the node of a shard and the job master"]
)
def test_a_ps_shard_lost_with_its_node_is_placed_again_and_the_ledger_stays_exact(
    cluster: Cluster, tmp_path: Path, shard: str
) -> None:
    assert cluster.emulator is not None
    result = tmp_path / "ledger.json"
    with server(cluster, tmp_path / "state") as (_, api):
        api.submit(ledger_job(cluster, result, tmp_path / "ckpt"))
        wait_for(lambda: reached(api, 17), timeout_s=120, what="training past step 17")
        before = pods_by_replica(cluster)
        lost = before[shard].spec.node_name
        assert len({before[n].spec.node_name for n in ("ps-0", "ps-1")}) == 2, "spread"
        with_master = before["master-0"].spec.node_name == lost
        kept = {
            name: pod.metadata.uid for name, pod in before.items() if pod.spec.node_name != lost
        }
        cluster.emulator.add_node("node-spare", cpu="4", memory="16Gi")
        cluster.emulator.lose_node(lost)
        moved = wait_for(
            lambda: running_elsewhere(cluster, shard, lost), timeout_s=120, what=f"{shard} moved"
        )
        during = {name: pod.metadata.uid for name, pod in pods_by_replica(cluster).items()}

        final = api.wait("ledger", timeout_s=300)

        events = [f"{e.reason}: {e.message}" for e in api.job_events("ledger")]
        assert final.phase == "Succeeded", f"{final.message}\n{events}"
    assert not [e for e in events if e.startswith(("BindFailed", "Requeued"))], events
    lost_events = [e for e in events if e.startswith(f"ReplicaLost: {shard} was lost")]
    assert len(lost_events) == 1 and f"with its node {lost}" in lost_events[0], events
    assert f"ReplicaPlaced: {shard} placed again on node-spare" in events, events
    assert with_master == any(e.startswith("MasterMoved: master-0") for e in events), events
    assert json.loads(result.read_text()) == expected_ledger(STEPS)
    assert moved == "node-spare"
    assert {name: during.get(name) for name in kept} == kept, "the others kept their pods"
