"""Where gangs land: all pods or none, whole GPUs exclusive, shared GPUs never over 1.0."""

from __future__ import annotations

import random

import pytest

from tidemill.scheduler import Decisions

from .builders import bound, decide, device_shares, job, node, placements, running


def test_parameter_servers_go_first_one_per_node_while_workers_pack() -> None:
    decisions = decide(
        nodes=[node("n1").cpu(16), node("n2").cpu(16), node("n3").cpu(16)],
        jobs=[job("ctr").pods(4).cpu(2).plus("ps", 3, cpu=2, memory=8, spread=True)],
    )
    servers = sorted(p.node for p in placements(decisions, "ctr") if p.role == "ps")
    assert servers == ["n1", "n2", "n3"]


def test_parameter_servers_share_a_node_when_no_other_node_has_room() -> None:
    decisions = decide(
        nodes=[node("n1").cpu(16), node("n2").cpu(1)],
        jobs=[job("ctr").pods(1).cpu(1).plus("ps", 2, cpu=4, spread=True)],
    )
    assert sorted(p.node for p in placements(decisions, "ctr") if p.role == "ps") == ["n1", "n1"]


def test_without_spread_best_fit_packs_servers_onto_one_node() -> None:
    decisions = decide(
        nodes=[node("n1").cpu(16), node("n2").cpu(16)],
        jobs=[job("tf").pods(1).cpu(1).plus("ps", 2, cpu=2)],
    )
    assert len({p.node for p in placements(decisions, "tf")}) == 1


def test_a_gang_that_does_not_fit_whole_holds_nothing() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("big").pods(3).gpus(8)],
    )
    assert decisions.binds == []
    assert decisions.pending["big"].code == "GangDoesNotFit"


def test_a_gang_that_fits_binds_every_pod_with_its_own_devices() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("pair").pods(2).gpus(8)],
    )
    pods = placements(decisions, "pair")
    assert [(p.role, p.index) for p in pods] == [("worker", 0), ("worker", 1)]
    assert sorted(p.node for p in pods) == ["n1", "n2"]
    assert all(p.gpu_ids == tuple(range(8)) and p.gpu_share == 1.0 for p in pods)


def test_a_gang_of_several_roles_is_placed_together() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(4).cpu(16)],
        jobs=[job("ps-job").pods(2).gpus(2).cpu(4).plus("ps", 2, cpu=4)],
    )
    roles = sorted((p.role, p.index) for p in placements(decisions, "ps-job"))
    assert roles == [("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1)]


def test_small_pods_of_a_gang_are_packed_onto_one_node() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("small").pods(4).gpus(2), job("whole-node").gpus(8)],
    )
    assert {p.node for p in placements(decisions, "small")} == {"n1"}
    assert [p.node for p in placements(decisions, "whole-node")] == ["n2"]


def test_whole_gpus_skip_a_device_that_is_partly_shared() -> None:
    shared = running("notebook").on("n1", gpu_ids=[0], share=0.25)
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("eight").gpus(8), job("seven").gpus(7)],
        running_jobs=[shared],
    )
    assert decisions.pending["eight"].code == "InsufficientGPU"
    (seven,) = placements(decisions, "seven")
    assert seven.gpu_ids == (1, 2, 3, 4, 5, 6, 7)


def test_two_whole_gpu_jobs_never_get_the_same_device() -> None:
    decisions = decide(nodes=[node("n1").gpus(4)], jobs=[job("a").gpus(2), job("b").gpus(2)])
    a_ids = placements(decisions, "a")[0].gpu_ids
    b_ids = placements(decisions, "b")[0].gpu_ids
    assert len(a_ids) == len(b_ids) == 2
    assert not set(a_ids) & set(b_ids)


SHARED_FIT_CASES = [
    pytest.param(
        [(0, 0.5), (1, 0.25)],
        0.5,
        ("n1", 0),
        id="a half gpu fills the device that is already half used",
    ),
    pytest.param(
        [(0, 0.75), (1, 0.25)],
        0.5,
        ("n1", 1),
        id="a half gpu skips a device it would overfill for the fullest one that fits",
    ),
    pytest.param(
        [(0, 0.9)],
        0.25,
        ("n1", 1),
        id="a quarter gpu takes a fresh device when no used one has room",
    ),
]


@pytest.mark.parametrize(("used", "ask", "expected"), SHARED_FIT_CASES)
def test_shared_gpu_pods_take_the_fullest_device_that_fits(
    used: list[tuple[int, float]], ask: float, expected: tuple[str, int]
) -> None:
    held = [running(f"r{d}").on("n1", gpu_ids=[d], share=s) for d, s in used]
    decisions = decide(nodes=[node("n1").gpus(4)], jobs=[job("slice").gpus(ask)], running_jobs=held)
    (pod,) = placements(decisions, "slice")
    assert (pod.node, pod.gpu_ids) == (expected[0], (expected[1],))
    assert pod.gpu_share == ask


def test_a_shared_pod_prefers_a_partly_used_node_so_whole_nodes_stay_free() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("slice").gpus(0.5)],
        running_jobs=[running("other").on("n2", gpu_ids=[3], share=0.5)],
    )
    (pod,) = placements(decisions, "slice")
    assert (pod.node, pod.gpu_ids) == ("n2", (3,))


def test_shared_gpu_shares_never_exceed_one_device() -> None:
    rng = random.Random(3)
    jobs = [
        job(f"j{i}").pods(rng.choice([1, 2, 3])).gpus(rng.choice([0.1, 0.25, 0.3, 0.5, 0.7]))
        for i in range(40)
    ]
    decisions = decide(nodes=[node("n1").gpus(2), node("n2").gpus(2)], jobs=jobs)
    shares = device_shares(decisions)
    assert max(shares.values()) <= 1.0 + 1e-9
    assert len(decisions.binds) >= 5
    assert len(decisions.binds) + len(decisions.pending) == len(jobs)
    assert sum(shares.values()) > 3.0


MODEL_CASES = [
    pytest.param(
        job("h").gpus(1).model("h100"), "n2", id="a pod asking h100 lands on the h100 node"
    ),
    pytest.param(
        job("a").gpus(1).model("a100"), "n1", id="a pod asking a100 lands on the a100 node"
    ),
    pytest.param(job("any").gpus(8), "n1", id="a pod without a model takes any gpu node"),
]


@pytest.mark.parametrize(("request_", "expected_node"), MODEL_CASES)
def test_gpu_model_restricts_nodes(request_: job, expected_node: str) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8).model("a100"), node("n2").gpus(8).model("h100")],
        jobs=[request_],
    )
    assert [p.node for p in placements(decisions, request_.key)] == [expected_node]


def test_a_cordoned_node_takes_nothing() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8).cordoned(), node("n2").gpus(8)],
        jobs=[job("one").gpus(8), job("two").gpus(8)],
    )
    assert [p.node for p in placements(decisions, "one")] == ["n2"]
    assert decisions.pending["two"].code == "InsufficientGPU"


def test_cpu_only_pods_keep_off_gpu_nodes_when_they_can() -> None:
    decisions = decide(nodes=[node("gpu").gpus(8), node("cpu")], jobs=[job("etl").cpu(8)])
    assert [p.node for p in placements(decisions, "etl")] == ["cpu"]
    assert placements(decisions, "etl")[0].gpu_ids == ()


def test_cpu_and_memory_are_respected_as_well_as_gpus() -> None:
    decisions: Decisions = decide(
        nodes=[node("n1").gpus(8).cpu(16).memory(64)],
        jobs=[job("a").gpus(1).cpu(10), job("b").gpus(1).cpu(10), job("c").gpus(1).memory(64)],
    )
    assert bound(decisions) == ["a"]
    assert decisions.pending["b"].code == "InsufficientCPU"
    assert decisions.pending["c"].code == "InsufficientMemory"
