"""The FGD packing protocol: demand readings, and batches that decide as one pod per call."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from tidemill.scheduler import ClusterState, NodeInfo, QueueInfo, RunningJob, schedule
from tidemill.scheduler.sim import POLICIES, SimInputError, TraceJob, allocation_at_demand
from tidemill.scheduler.sim.packing import QUEUE, trace_mix, workload
from tidemill.scheduler.sim.replay import requests

GIB = 2**30


def pod(name: str, gpu: float, cpu_millis: int = 1000) -> TraceJob:
    return TraceJob(name, 0.0, 10.0, "ls", 1, gpu, cpu_millis, GIB)


def test_the_workload_is_shuffled_and_topped_up_to_the_demand_by_seed() -> None:
    pods = [pod(f"p{i}", 1.0) for i in range(4)]
    jobs = workload(pods, total_gpus=4, seed=42, demand=1.3)
    assert sum(j.gpus for j in jobs) == 6  # 4 then draws until >= 5.2
    assert len({j.name for j in jobs}) == 6
    assert jobs == workload(pods, total_gpus=4, seed=42, demand=1.3)


@pytest.mark.parametrize("policy", ["tidemill", "first-fit", "best-fit"])
def test_whole_gpu_pods_fill_a_small_cluster_to_100_percent(policy: str) -> None:
    cluster = ClusterState(nodes=(NodeInfo("n", 8000, 64 * GIB, 4),), queues={})
    readings = allocation_at_demand(cluster, [pod("p", 1.0)], POLICIES[policy], seed=1)
    assert readings == {1.0: 100.0, 1.1: 100.0, 1.2: 100.0, 1.3: 100.0}


def test_a_cpu_bound_cluster_reads_the_gpus_the_cpu_allowed() -> None:
    cluster = ClusterState(nodes=(NodeInfo("n", 2000, 64 * GIB, 4),), queues={})
    readings = allocation_at_demand(cluster, [pod("p", 1.0, 1000)], POLICIES["tidemill"], seed=1)
    assert readings[1.3] == 50.0


def test_a_batch_through_schedule_places_as_one_pod_per_call_would() -> None:
    rng = random.Random(5)
    shapes = [(0.25, 2000), (0.5, 4000), (1.0, 6000), (2.0, 8000), (0.0, 12000)]
    pods = [pod(f"p{i}", *rng.choice(shapes)) for i in range(60)]
    nodes = tuple(NodeInfo(f"n{i}", 32_000, 256 * GIB, (2, 4, 8)[i % 3]) for i in range(6))
    cluster = ClusterState(nodes=nodes, queues={})
    batched = allocation_at_demand(cluster, pods, POLICIES["tidemill"], seed=3)
    mix = trace_mix(pods)
    one_by_one = ClusterState(nodes=nodes, queues={QUEUE: QueueInfo(QUEUE)}, workload=mix)
    allocated, asked = 0.0, 0.0
    for sequence, job in enumerate(workload(pods, 28.0, seed=3, demand=1.3)):
        asked += job.gpus
        request = requests(replace(job, queue=QUEUE), sequence)
        for bind in schedule(one_by_one, [request]).binds:
            running = (*one_by_one.running, RunningJob(bind.job, QUEUE, 0, 0, bind.placements))
            one_by_one = replace(one_by_one, running=running)
            allocated += sum(p.gpu_share * len(p.gpu_ids) for p in bind.placements)
    assert asked >= 1.3 * 28
    assert batched[1.3] == pytest.approx(100 * allocated / 28)
    assert 50 < batched[1.3] < 100


def test_packing_without_gpus_to_ask_or_to_give_is_refused_not_looped() -> None:
    gpus = ClusterState(nodes=(NodeInfo("n", 8000, 64 * GIB, 4),), queues={})
    cpus = ClusterState(nodes=(NodeInfo("n", 8000, 64 * GIB, 0),), queues={})
    with pytest.raises(SimInputError, match="no job asks a GPU"):
        allocation_at_demand(gpus, [pod("p", 0.0)], POLICIES["tidemill"], seed=1)
    with pytest.raises(SimInputError, match="cluster: has no GPUs"):
        allocation_at_demand(cpus, [pod("p", 1.0)], POLICIES["tidemill"], seed=1)
