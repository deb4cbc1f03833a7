"""Fragmentation-aware placement: a pod goes where the expected pod mix loses least GPU."""

from __future__ import annotations

import functools
import math
import random
from dataclasses import replace

import pytest

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    PodType,
    QueueInfo,
    RunningJob,
    SchedulerConfig,
    schedule,
)

from .builders import GIB, backlog, job, node, placements, running, state_of

EPS = 1e-9


def place_one(state: ClusterState, pod: PodRequest, scoring: str = "fragmentation") -> Placement:
    request = JobRequest("probe", "default", 0, 0, (pod,))
    decisions = schedule(state, [request], SchedulerConfig(scoring=scoring))  # type: ignore[arg-type]
    ((placement,),) = [b.placements for b in decisions.binds]
    return placement


def unusable(
    cpu: int, memory: int, free: list[float], model: str | None, mix: list[PodType]
) -> float:
    """The measure written out per node: the free GPU each type could not use (its pods
    that fit by devices and cpu, if one fits by memory, times their GPU), weighted by
    popularity; plus each device's eventual waste, or all the free GPU if no type's pod
    fits by cpu and memory."""
    total = sum(mix_type.weight for mix_type in mix)
    hosts = any(
        memory >= t.memory_bytes
        and t.gpu_model in (None, model)
        and (t.cpu_millis == 0 or cpu >= t.cpu_millis)
        for t in mix
    )
    score = sum(eventual_waste(round(f * 1000), tuple(mix)) for f in free) if hosts else sum(free)
    for t in mix:
        if t.gpu < 1:
            by_gpu = sum(math.floor((f + EPS) / t.gpu) for f in free)
        else:
            by_gpu = sum(f >= 1 - EPS for f in free) // int(t.gpu)
        by_cpu = cpu // t.cpu_millis if t.cpu_millis else by_gpu
        fits = memory >= t.memory_bytes and t.gpu_model in (None, model)
        pods = min(by_gpu, by_cpu) if fits else 0
        score += t.weight / total * (sum(free) - pods * t.gpu)
    return score


@functools.cache
def eventual_waste(room: int, mix: tuple[PodType, ...]) -> float:
    """The share (of ``room`` thousandths of a device) left when the types that fit fill it
    in arrival order, each next pod of a type as likely as its weight among them."""
    fitting = [t for t in mix if round(min(t.gpu, 1.0) * 1000) <= room]
    if not fitting:
        return room / 1000
    weight = sum(t.weight for t in fitting)
    return sum(
        t.weight / weight * eventual_waste(room - round(min(t.gpu, 1.0) * 1000), mix)
        for t in fitting
    )


def random_cluster(rng: random.Random, mix: list[PodType]) -> ClusterState:
    nodes, held = [], []
    for n in range(12):
        gpus = rng.choice((0, 2, 4, 8))
        info = NodeInfo(f"n{n}", 32_000, 128 * GIB, gpus, rng.choice(("A", "B")) if gpus else None)
        nodes.append(info)
        for d in range(gpus):
            used = rng.choice((0.0, 0.0, 0.25, 0.5, 0.7, 1.0))
            if used:
                cpu = rng.randrange(0, 8_000, 1000)
                held.append(Placement("w", len(held), info.name, cpu, 4 * GIB, (d,), used))
    running_jobs = (RunningJob("busy", "default", 0, 0, tuple(held)),)
    return ClusterState(tuple(nodes), {"default": QueueInfo("default")}, running_jobs, tuple(mix))


def options(state: ClusterState, pod: PodRequest) -> dict[tuple[str, tuple[int, ...]], float]:
    """Every place ``pod`` fits, with how much its node's unusable GPU would grow."""
    cpu = {n.name: n.cpu_millis for n in state.nodes}
    memory = {n.name: n.memory_bytes for n in state.nodes}
    used = {n.name: [0.0] * n.gpus for n in state.nodes}
    for p in state.running[0].placements:
        cpu[p.node] -= p.cpu_millis
        memory[p.node] -= p.memory_bytes
        for d in p.gpu_ids:
            used[p.node][d] += p.gpu_share
    mix = list(state.workload)
    rises = {}
    for n in state.nodes:
        free = [max(0.0, 1.0 - u) for u in used[n.name]]
        if cpu[n.name] < pod.cpu_millis or memory[n.name] < pod.memory_bytes:
            continue
        before = unusable(cpu[n.name], memory[n.name], free, n.gpu_model, mix)
        left_cpu, left_memory = cpu[n.name] - pod.cpu_millis, memory[n.name] - pod.memory_bytes
        if pod.gpu >= 1:
            whole = [d for d, f in enumerate(free) if f >= 1 - EPS][: int(pod.gpu)]
            choices = [tuple(whole)] if len(whole) == pod.gpu else []
        elif pod.gpu > 0:
            choices = [(d,) for d, f in enumerate(free) if f >= pod.gpu - EPS]
        else:
            choices = [()]
        for devices in choices:
            after = list(free)
            for d in devices:
                after[d] -= min(pod.gpu, 1.0)
            rise = unusable(left_cpu, left_memory, after, n.gpu_model, mix) - before
            rises[(n.name, devices)] = rise
    return rises


MIX = [
    PodType(4_000, 16 * GIB, 1.0, weight=40),
    PodType(2_000, 8 * GIB, 0.5, weight=25),
    PodType(8_000, 32 * GIB, 0.25, weight=10, gpu_model="A"),
    PodType(16_000, 64 * GIB, 4.0, weight=5),
    PodType(1_000, 4 * GIB, 0.7, weight=20),
]


@pytest.mark.parametrize("seed", range(40))
def test_each_pod_goes_where_the_mix_loses_least_gpu_by_the_measure_written_out(
    seed: int,
) -> None:
    rng = random.Random(seed)
    state = random_cluster(rng, MIX)
    gpu = rng.choice((0.0, 0.25, 0.5, 0.7, 1.0, 2.0))
    pod = PodRequest("w", 0, rng.choice((1_000, 8_000, 20_000)), 8 * GIB, gpu)
    rises = options(state, pod)
    if not rises:
        pytest.skip("the pod fits nowhere in this draw")
    placement = place_one(state, pod)
    chosen = rises[(placement.node, placement.gpu_ids)]
    assert chosen == pytest.approx(min(rises.values()), abs=1e-9)


def test_a_shared_pod_keeps_whole_devices_whole_when_the_mix_wants_whole_gpus() -> None:
    # Device 0 has 0.25 free, device 1 0.75; a 0.5 share fits device 1 or a fresh one.
    state = state_of(
        [node("n1").gpus(4)],
        [running("r0").on("n1", [0], share=0.75), running("r1").on("n1", [1], share=0.25)],
    )
    mix = (PodType(1000, GIB, 1.0, weight=3), PodType(1000, GIB, 0.5))
    pod = PodRequest("w", 0, 1000, GIB, 0.5)
    assert place_one(replace(state, workload=mix), pod).gpu_ids == (1,)


def test_a_shared_pod_leaves_room_a_common_pod_will_fill_not_a_sliver_none_fits() -> None:
    # Device 0 has 0.53 free beside a 0.47 pod, device 1 0.68 beside a 0.32 one. Looking
    # one pod ahead the two are alike for a 0.32 pod (either way one 0.47 and one 0.32
    # fewer fit) and best fit's fuller device wins, leaving 0.21 that no pod fits. Filled
    # as pods arrive, 0.53 takes the next 0.47 and 0.36 the next 0.32: device 1.
    state = state_of(
        [node("n1").gpus(3)],
        [running("r0").on("n1", [0], share=0.47), running("r1").on("n1", [1], share=0.32)],
    )
    mix = (
        PodType(1000, GIB, 1.0, weight=55),
        PodType(1000, GIB, 0.47, weight=10),
        PodType(1000, GIB, 0.32, weight=5),
    )
    pod = PodRequest("w", 0, 1000, GIB, 0.32)
    assert place_one(replace(state, workload=mix), pod).gpu_ids == (1,)
    assert place_one(replace(state, workload=mix), pod, "best-fit").gpu_ids == (0,)


def test_a_cpu_pod_leaves_cpu_for_every_free_gpu_not_just_one_more_pod() -> None:
    # Both nodes have 4 GPUs free. After 4 more cores taken, "small" keeps cpu for 3 of
    # the expected 8-core GPU pods, "large" for all 4: one pod of a GPU is lost on
    # "small" (FGD as published counts a node fine while one pod fits; best fit takes
    # the node left with less cpu).
    state = state_of(
        [node("small").gpus(8).cpu(64), node("large").gpus(8).cpu(64)],
        [running("r").on("small", range(4), cpu=32).on("large", range(4), cpu=28)],
    )
    mix = (PodType(8_000, 16 * GIB, 1.0),)
    pod = PodRequest("w", 0, 4_000, GIB, 0.0)
    assert place_one(replace(state, workload=mix), pod).node == "large"
    assert place_one(replace(state, workload=mix), pod, "best-fit").node == "small"


def test_a_cpu_pod_stays_off_a_gpu_node_whose_gpus_it_would_starve_of_cpu() -> None:
    # Both nodes have 4 GPUs free; 28 cores on the small one would leave 4, below the
    # 8 each expected GPU pod asks, stranding its GPUs (best fit takes the tighter node).
    state = state_of(
        [node("small").gpus(8).cpu(32), node("large").gpus(8).cpu(64)],
        [running("r").on("small", range(4)).on("large", range(4))],
    )
    mix = (PodType(8_000, 16 * GIB, 1.0),)
    pod = PodRequest("w", 0, 28_000, 16 * GIB, 0.0)
    assert place_one(replace(state, workload=mix), pod).node == "large"
    assert place_one(replace(state, workload=mix), pod, "best-fit").node == "small"


def test_a_whole_gpu_goes_where_the_mix_could_not_use_the_gpus_anyway() -> None:
    # n1 has little cpu left: the mix's pods (8 cores each) no longer fit there, so its
    # free GPUs are lost to them already; a 1-core GPU pod best uses one of those.
    state = state_of(
        [node("n1").gpus(8).cpu(32), node("n2").gpus(8).cpu(32)],
        [running("r").on("n1", [0, 1, 2, 3], cpu=28), running("s").on("n2", [0, 1, 2, 3, 4])],
    )
    mix = (PodType(8_000, 16 * GIB, 1.0),)
    pod = PodRequest("w", 0, 1_000, GIB, 1.0)
    assert place_one(replace(state, workload=mix), pod).node == "n1"
    assert place_one(replace(state, workload=mix), pod, "best-fit").node == "n2"


def test_on_a_large_cluster_only_the_nodes_best_fit_ranks_first_are_scored() -> None:
    # As above, but scoring at most one node: best fit's first, n2, is the only one
    # looked at; with room to look at both, fragmentation's choice comes back.
    state = state_of(
        [node("n1").gpus(8).cpu(32), node("n2").gpus(8).cpu(32)],
        [running("r").on("n1", [0, 1, 2, 3], cpu=28), running("s").on("n2", [0, 1, 2, 3, 4])],
    )
    state = replace(state, workload=(PodType(8_000, 16 * GIB, 1.0),))
    probe = JobRequest("probe", "default", 0, 0, (PodRequest("w", 0, 1_000, GIB, 1.0),))
    chosen = {
        limit: schedule(state, [probe], SchedulerConfig(score_nodes=limit)).binds[0]
        for limit in (1, 2, None)
    }
    assert {limit: bind.placements[0].node for limit, bind in chosen.items()} == {
        1: "n2",
        2: "n1",
        None: "n1",
    }


def test_a_score_nodes_below_one_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"SchedulerConfig.score_nodes: 0; use at least 1"):
        SchedulerConfig(score_nodes=0)


def test_without_a_workload_the_pending_and_running_pods_stand_for_the_mix() -> None:
    # Whole-GPU jobs are pending with the shared one: it keeps the fresh devices whole.
    decisions = schedule(
        state_of(
            [node("n1").gpus(4)],
            [running("r0").on("n1", [0], share=0.75), running("r1").on("n1", [1], share=0.25)],
        ),
        backlog([job("slice").gpus(0.5), job("a").gpus(1), job("b").gpus(1)]),
    )
    assert placements(decisions, "slice")[0].gpu_ids == (1,)
    assert sorted(d for j in ("a", "b") for d in placements(decisions, j)[0].gpu_ids) == [2, 3]


def test_the_default_scoring_is_fragmentation() -> None:
    assert SchedulerConfig().scoring == "fragmentation"


def test_an_unknown_scoring_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"SchedulerConfig.scoring: 'worst-fit'; use 'fragmentation' or 'best-fit'"
    ):
        SchedulerConfig(scoring="worst-fit")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"gpu": 1.5}, r"PodType.gpu: 1.5; a whole count", id="a gpu count between whole ones"
        ),
        pytest.param({"gpu": -1.0}, r"every amount must be zero or more", id="a negative gpu"),
        pytest.param({"weight": 0.0}, r"PodType.weight: 0; must be above 0", id="a zero weight"),
    ],
)
def test_a_bad_pod_type_is_refused_naming_the_field(kwargs: dict[str, float], message: str) -> None:
    fields: dict[str, float] = {"cpu_millis": 1000, "memory_bytes": GIB, "gpu": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        PodType(**fields)  # type: ignore[arg-type]
