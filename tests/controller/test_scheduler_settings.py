"""The cluster file's ``scheduler`` section reaches the control plane's scheduler: a
Controller on SQLite with the local engine places a real replica where the declared
policy and pod mix say.

The cluster: gpu-a has 2 GPUs and 8 cores, gpu-b 4 GPUs and 4 cores; the job asks one
GPU and one core. Best fit takes gpu-a (fewest whole GPUs left). So does fragmentation
scoring when it knows only the job itself (both nodes stay usable for it). Told that the
cluster mostly runs 2-GPU pods of 3 cores, it takes gpu-b: there the job costs those
pods nothing (cpu already limits gpu-b to one of them), while on gpu-a it would leave
one GPU that no such pod can use.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidemill.api.cluster import ClusterSpec
from tidemill.api.job import TrainingJob
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.engines.local import LocalEngine
from tidemill.store.store import Store

NODES = [
    {"name": "gpu-a", "cpu": 8, "memory": "8Gi", "gpus": 2},
    {"name": "gpu-b", "cpu": 4, "memory": "8Gi", "gpus": 4},
]
MOSTLY_TWO_GPU_PODS = [{"cpu": 3, "memory": "1Gi", "gpu": 2, "weight": 10}]


@pytest.fixture
def make_controller(tmp_path: Path) -> Iterator[Any]:
    made: list[tuple[Controller, LocalEngine]] = []

    def make(scheduler: dict[str, Any] | None) -> Controller:
        engine = LocalEngine(tmp_path / "engine", warm_start=False)
        document: dict[str, Any] = {"nodes": NODES}
        if scheduler is not None:
            document["scheduler"] = scheduler
        config = ControllerConfig(stop_grace_s=1.0, resync_s=0.0, schedule_pacing=0.0)
        cluster = ClusterSpec.model_validate(document)
        controller = Controller(Store.in_folder(tmp_path / "state"), engine, cluster, config)
        made.append((controller, engine))
        return controller

    yield make
    for controller, engine in made:
        controller.delete("ads", "one-gpu")
        for _ in range(20):
            controller.reconcile_once()
        engine.close()


def one_gpu_job() -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "one-gpu", "namespace": "ads"},
            "spec": {
                "roles": {
                    "worker": {
                        "replicas": 1,
                        "resources": {"cpu": 1, "memory": "32Mi", "gpu": 1},
                        "command": [sys.executable, "-c", "import time; time.sleep(60)"],
                    }
                }
            },
        }
    )


@pytest.mark.parametrize(
    "scheduler,node",
    [
        pytest.param(None, "gpu-a", id="no section: the defaults"),
        pytest.param({"workload": MOSTLY_TWO_GPU_PODS}, "gpu-b", id="a declared pod mix"),
        pytest.param(
            {"scoring": "best-fit", "workload": MOSTLY_TWO_GPU_PODS},
            "gpu-a",
            id="best-fit ignores the mix",
        ),
    ],
)
def test_the_declared_policy_and_pod_mix_decide_where_a_replica_runs(
    make_controller: Any, scheduler: dict[str, Any] | None, node: str
) -> None:
    controller: Controller = make_controller(scheduler)
    controller.submit(one_gpu_job())
    controller.reconcile_once()
    with controller.store.read() as tx:
        row = tx.job("ads", "one-gpu")
        assert row is not None
        assert [(r.role, r.index, r.node) for r in row.replicas] == [("worker", 0, node)]
        assert row.phase in {"Scheduled", "Running"}
