"""Topology through the real parts: a cluster file with racks and NUMA layouts, a
Controller on SQLite, replicas as real processes of the local engine. A packed gang
lands in one rack, each replica runs on the CPUs of its GPU's NUMA node, and a job
the cluster's topology could never hold is refused at submit with the field."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidemill.api.cluster import ClusterSpec
from tidemill.api.errors import SpecError
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.engines.local import LocalEngine
from tidemill.store.store import Store

CPUS = sorted(os.sched_getaffinity(0))[:2]

CLUSTER = f"""
topology: {{levels: [rack]}}
nodes:
  - name: gpu-a
    cpu: 2
    memory: 8Gi
    gpus: 2
    labels: {{rack: r1}}
    numa: [{{cpus: "{CPUS[0]}", gpus: [0]}}, {{cpus: "{CPUS[-1]}", gpus: [1]}}]
  - {{name: gpu-b, cpu: 2, memory: 8Gi, gpus: 2, labels: {{rack: r2}}}}
"""

REPORT = """\
import os, time
name = f"{os.environ['TIDEMILL_ROLE']}-{os.environ['TIDEMILL_INDEX']}"
cpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
with open(os.path.join(os.environ["OUT"], name), "w") as out:
    out.write(f"{os.environ['CUDA_VISIBLE_DEVICES']} {cpus}")
time.sleep(60)
"""


def packed_job(name: str, out: Path, workers: int, **topology: Any) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {"name": name, "namespace": "ads"},
            "spec": {
                "roles": {
                    "worker": {
                        "replicas": workers,
                        "resources": {"cpu": 0.5, "memory": "32Mi", "gpu": 1},
                        "command": [sys.executable, "-c", REPORT],
                        "env": {"OUT": str(out)},
                        "topology": topology,
                    }
                }
            },
        }
    )


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    engine = LocalEngine(tmp_path / "engine", warm_start=False)
    cluster = ClusterSpec.model_validate(yaml.safe_load(CLUSTER))
    config = ControllerConfig(stop_grace_s=1.0, resync_s=0.0, schedule_pacing=0.0)
    made = Controller(Store.in_folder(tmp_path / "state"), engine, cluster, config)
    yield made
    with made.store.read() as tx:
        names = [row.name for row in tx.jobs()]
    for name in names:
        made.delete("ads", name)
    for _ in range(20):
        made.reconcile_once()
    engine.close()


def reports(out: Path, count: int) -> dict[str, str]:
    """``worker-i`` -> "GPUS CPUS" as each replica saw them, once all have written."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = {p.name: p.read_text() for p in out.iterdir() if p.read_text()}
        if len(found) == count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"only {sorted(out.iterdir())} of {count} replicas reported")


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two usable CPUs")
def test_a_packed_gang_shares_one_rack_and_each_replica_runs_beside_its_gpu(
    controller: Controller, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    controller.submit(packed_job("packed", out, 2, packWithin="rack", required=True))
    controller.reconcile_once()
    with controller.store.read() as tx:
        row = tx.job("ads", "packed")
        assert row is not None
        nodes = {r.node for r in row.replicas if r.role == "worker"}
    assert nodes == {"gpu-a"}  # both racks are free: the first of equals
    assert sorted(reports(out, 2).values()) == [f"0 {CPUS[0]}", f"1 {CPUS[-1]}"]


def test_a_preferred_packing_no_rack_holds_is_spread_and_the_event_says_why(
    controller: Controller, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    controller.submit(packed_job("wide", out, 3, packWithin="rack"))
    controller.reconcile_once()
    with controller.store.read() as tx:
        messages = [e.message for e in tx.events("ads/wide") if e.reason == "Scheduled"]
    assert len(messages) == 1
    assert messages[0].endswith(
        "(worker: no rack holds 3 gpu (3 worker x 1 gpu); the largest free rack block is "
        "2 gpu on r1; spread over 2 nodes)"
    )


@pytest.mark.parametrize(
    "workers,topology,path,message",
    [
        pytest.param(
            3,
            {"packWithin": "rack", "required": True},
            "spec.roles.worker.topology",
            "needs 3 worker replicas within one rack (500m cpu, 32Mi, 1 gpu each); the "
            "largest rack holds 2 (r1, 1 node(s))",
            id="a required packing larger than every rack",
        ),
        pytest.param(
            1,
            {"packWithin": "zone"},
            "spec.roles.worker.topology.packWithin",
            "'zone' is not a topology level of this cluster (levels: rack)",
            id="a level the cluster does not declare",
        ),
    ],
)
def test_a_packing_the_cluster_could_never_honour_is_refused_at_submit(
    controller: Controller,
    tmp_path: Path,
    workers: int,
    topology: dict[str, Any],
    path: str,
    message: str,
) -> None:
    with pytest.raises(SpecError) as caught:
        controller.submit(packed_job("refused", tmp_path, workers, **topology))
    found = {e.path: e.message for e in caught.value.errors}
    assert path in found, found
    assert found[path].startswith(message), found[path]


def test_a_packed_job_runs_on_a_cluster_without_levels_and_the_event_says_packing_was_ignored(
    tmp_path: Path,
) -> None:
    engine = LocalEngine(tmp_path / "engine", warm_start=False)
    cluster = ClusterSpec.model_validate(
        {"nodes": [{"name": "laptop", "cpu": 2, "memory": "8Gi", "gpus": 2}]}
    )
    config = ControllerConfig(stop_grace_s=1.0, resync_s=0.0, schedule_pacing=0.0)
    laptop = Controller(Store.in_folder(tmp_path / "state"), engine, cluster, config)
    out = tmp_path / "out"
    out.mkdir()
    try:
        laptop.submit(packed_job("packed", out, 2, packWithin="rack", required=True))
        laptop.reconcile_once()
        with laptop.store.read() as tx:
            messages = [e.message for e in tx.events("ads/packed") if e.reason == "Scheduled"]
        assert messages == [
            "placed 2 replica(s) on laptop (packWithin ignored: this cluster declares no "
            "topology levels)"
        ]
    finally:
        laptop.delete("ads", "packed")
        for _ in range(20):
            laptop.reconcile_once()
        engine.close()
