"""Whom a higher-priority gang stops: only lower priority, and as little as will do."""

from __future__ import annotations

import pytest

from tidemill.scheduler import Decisions

from .builders import bound, decide, device_shares, job, node, placements, queue, running

# n1 (8 gpus) is full: one 4-gpu job and two 2-gpu jobs, all priority 0.
FULL_NODE = [
    running("big").seq(1).on("n1", gpu_ids=[0, 1, 2, 3]),
    running("older-pair").seq(2).on("n1", gpu_ids=[4, 5]),
    running("newer-pair").seq(3).on("n1", gpu_ids=[6, 7]),
]


def victims(decisions: Decisions) -> list[str]:
    return [p.victim for p in decisions.preemptions]


SMALLEST_SET_CASES = [
    pytest.param(
        2,
        ["newer-pair"],
        id="two gpus are freed by stopping one small job, the newest of equal size",
    ),
    pytest.param(
        6,
        ["older-pair", "big"],
        id="six gpus stop the big job and one pair, not all three jobs",
    ),
    pytest.param(
        8,
        ["newer-pair", "older-pair", "big"],
        id="eight gpus stop everything on the node",
    ),
]


@pytest.mark.parametrize(("gpus", "expected"), SMALLEST_SET_CASES)
def test_preemption_frees_no_more_than_the_gang_needs(gpus: int, expected: list[str]) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(gpus).priority(10)],
        running_jobs=FULL_NODE,
    )
    assert victims(decisions) == expected
    assert bound(decisions) == ["urgent"]
    assert {p.preemptor for p in decisions.preemptions} == {"urgent"}
    assert max(device_shares(decisions, FULL_NODE).values()) == 1.0


def test_the_preemptor_gets_the_devices_its_victim_frees() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(2).priority(10)],
        running_jobs=FULL_NODE,
    )
    (pod,) = placements(decisions, "urgent")
    assert (pod.node, pod.gpu_ids) == ("n1", (6, 7))
    assert "priority 10 > 0" in decisions.preemptions[0].message
    assert "2 gpu" in decisions.preemptions[0].message


def test_lowest_priority_is_stopped_before_a_higher_one_even_if_larger() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(2).priority(10)],
        running_jobs=[
            running("mid").priority(5).on("n1", gpu_ids=[0, 1]),
            running("low").priority(1).on("n1", gpu_ids=[2, 3, 4, 5, 6, 7]),
        ],
    )
    assert victims(decisions) == ["low"]


NODE_CHOICE_CASES = [
    pytest.param(
        [
            running("whole-n1").on("n1", gpu_ids=range(8)),
            running("pair-a").seq(1).on("n2", gpu_ids=[0, 1]),
            running("pair-b").seq(2).on("n2", gpu_ids=[2, 3]),
        ],
        6,
        ["pair-b"],
        id="the node where the least must be stopped is chosen",
    ),
    pytest.param(
        [
            running("low-four").priority(0).on("n1", gpu_ids=range(4)),
            running("mid-two").priority(5).on("n2", gpu_ids=[0, 1]),
        ],
        8,
        ["low-four"],
        id="a node with lower-priority victims wins over one needing less stopped",
    ),
]


@pytest.mark.parametrize(("held", "gpus", "expected"), NODE_CHOICE_CASES)
def test_preemption_chooses_the_cheapest_node(
    held: list[running], gpus: int, expected: list[str]
) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("urgent").gpus(gpus).priority(10)],
        running_jobs=held,
    )
    assert victims(decisions) == expected
    assert bound(decisions) == ["urgent"]


NO_PREEMPTION_CASES = [
    pytest.param(
        [running("peer").priority(10).on("n1", gpu_ids=range(8))],
        True,
        id="a job of equal priority is never stopped",
    ),
    pytest.param(
        [running("vip").priority(50).on("n1", gpu_ids=range(8))],
        True,
        id="a job of higher priority is never stopped",
    ),
    pytest.param(
        [running("pinned").on("n1", gpu_ids=range(8)).not_preemptible()],
        True,
        id="a job marked not preemptible is never stopped",
    ),
    pytest.param(
        [running("low").on("n1", gpu_ids=range(8))],
        False,
        id="nothing is stopped when preemption is switched off",
    ),
]


@pytest.mark.parametrize(("held", "enabled"), NO_PREEMPTION_CASES)
def test_jobs_that_must_not_be_stopped_are_not(held: list[running], enabled: bool) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(4).priority(10)],
        running_jobs=held,
        preemption=enabled,
    )
    assert decisions.preemptions == []
    assert decisions.binds == []
    assert decisions.pending["urgent"].code == "InsufficientGPU"


def test_a_gang_preempts_across_nodes() -> None:
    held = [running(f"r{n}{d}").on(n, gpu_ids=[d]) for n in ("n1", "n2") for d in range(8)]
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("gang").pods(2).gpus(8).priority(1)],
        running_jobs=held,
    )
    assert len(victims(decisions)) == 16
    assert sorted(p.node for p in placements(decisions, "gang")) == ["n1", "n2"]


def test_victims_are_only_taken_from_nodes_the_gang_can_use() -> None:
    held = [
        running("on-a100").on("a", gpu_ids=range(8)),
        running("on-h100").on("h", gpu_ids=range(8)),
    ]
    decisions = decide(
        nodes=[node("a").gpus(8).model("a100"), node("h").gpus(8).model("h100")],
        jobs=[job("needs-h100").gpus(4).model("h100").priority(5)],
        running_jobs=held,
    )
    assert victims(decisions) == ["on-h100"]


def test_what_a_victim_frees_beyond_its_preemptor_is_not_handed_to_later_jobs() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(4).priority(10), job("opportunist").gpus(4).priority(10)],
        running_jobs=[running("whole").on("n1", gpu_ids=range(8))],
    )
    assert victims(decisions) == ["whole"]
    assert bound(decisions) == ["urgent"]
    assert decisions.pending["opportunist"].code == "InsufficientGPU"


def test_a_preemptor_still_respects_its_queue_max() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").queue("ads").gpus(8).priority(10)],
        running_jobs=[running("low").queue("search").on("n1", gpu_ids=range(8))],
        queues=[queue("ads").max_gpu(4), queue("search")],
    )
    assert decisions.preemptions == []
    assert decisions.pending["urgent"].code == "QueueAtMax"


def test_a_preemption_lowers_the_victims_queue_allocation() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").cpu(8)],
        jobs=[job("urgent").queue("ads").gpus(8).priority(10), job("next").queue("search")],
        running_jobs=[running("low").queue("search").on("n1", gpu_ids=range(8), cpu=8)],
        queues=[queue("ads"), queue("search").max_cpu(8)],
    )
    assert victims(decisions) == ["low"]
    assert bound(decisions) == ["urgent", "next"]
