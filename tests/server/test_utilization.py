"""Cluster utilisation over time from a real server: samples in the store as jobs come
and go, each queue's allocation and share, thinning, retention, and refusals."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import delete_every_job, wait_for
from tidemill.client import Client
from tidemill.server.runner import ServerRunner
from tidemill.server.utilization import UtilizationRecorder
from tidemill.store.store import Store

CLUSTER = """
nodes:
  - {name: gpu, cpu: 8, memory: 32Gi, gpus: 4}
queues:
  - {name: ads, weight: 2}
  - {name: search}
"""


def gpu_job(name: str, queue: str, gpus: int) -> dict[str, object]:
    return {
        "metadata": {"name": name},
        "spec": {
            "queue": queue,
            "roles": {
                "worker": {
                    "replicas": 1,
                    "resources": {"cpu": 1, "memory": "64Mi", "gpu": gpus},
                    "command": [sys.executable, "-c", "import time; time.sleep(600)"],
                }
            },
        },
    }


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ServerRunner]:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER)
    started = ServerRunner(tmp_path / "state", cluster, port=0, utilization_interval_s=0.1)
    started.start()
    yield started
    with Client(started.url) as client:
        delete_every_job(client)
    started.stop()


def points(runner: ServerRunner, **query: object) -> list[dict[str, object]]:
    response = httpx.get(f"{runner.url}/api/v1/cluster/utilization", params=query)
    assert response.status_code == 200, response.text
    found: list[dict[str, object]] = response.json()["items"]
    return found


def test_samples_follow_what_each_queue_holds(runner: ServerRunner) -> None:
    with Client(runner.url) as client:
        client.submit(gpu_job("ctr", "ads", 3))
        client.submit(gpu_job("rank", "search", 1))
        wait_for(lambda: client.get("rank").phase == "Running", 30, "both running")

        def full() -> dict[str, object] | None:
            last = points(runner, seconds=60)[-1]
            return last if last["allocated"]["gpu"] == 4 else None  # type: ignore[index]

        last = wait_for(full, 10, "a sample with all 4 GPUs held")
    assert isinstance(last, dict)
    assert last["capacity"] == {"cpu": 8.0, "memory": 32 * 2**30, "gpu": 4.0}
    ads, search = last["queues"]["ads"], last["queues"]["search"]
    assert ads["allocated"]["gpu"] == 3 and search["allocated"]["gpu"] == 1
    assert (ads["dominant_share"], search["dominant_share"]) == (0.375, 0.25)  # 3/4 over 2
    assert (ads["running"], ads["pending"]) == (1, 0)
    history = points(runner, seconds=60)
    assert history[0]["allocated"]["gpu"] < 4  # the samples before the jobs ran
    times = [p["time"] for p in history]
    assert times == sorted(times)


def test_a_long_history_is_thinned_and_old_samples_dropped(tmp_path: Path) -> None:
    store = Store.in_folder(tmp_path)
    clock = [1_000_000.0]
    recorder = UtilizationRecorder(store, retention_s=100.0, clock=lambda: clock[0])
    for _ in range(300):
        recorder.record_once()
        clock[0] += 1.0
    with store.read() as tx:
        kept = tx.utilization_since(0.0, 10_000)
        thinned = tx.utilization_since(0.0, 20)
    assert [row.time for row in kept] == [clock[0] - 101 + i for i in range(101)]
    assert 15 <= len(thinned) <= 20
    store.close()


@pytest.mark.parametrize(
    "query,field",
    [({"seconds": -1}, "seconds"), ({"points": 10**9}, "points"), ({"seconds": "week"}, "seconds")],
)
def test_bad_ranges_are_refused_with_the_field(
    runner: ServerRunner, query: dict[str, object], field: str
) -> None:
    response = httpx.get(f"{runner.url}/api/v1/cluster/utilization", params=query)
    assert response.status_code == 422
    assert field in response.text
