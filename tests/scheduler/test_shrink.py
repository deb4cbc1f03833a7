"""A higher-priority job shrinks lower-priority elastic jobs before it stops any whole."""

from __future__ import annotations

import pytest

from tidemill.scheduler import Decisions, Shrink

from .builders import (
    bound,
    decide,
    device_shares,
    job,
    node,
    placements,
    queue,
    running,
    shrunk,
)


def workers(*indexes: int) -> list[str]:
    return [f"worker-{i}" for i in indexes]


def victims(decisions: Decisions) -> list[str]:
    return [p.victim for p in decisions.preemptions]


def one_gpu_workers(key: str, node_name: str, devices: range) -> running:
    built = running(key)
    for device in devices:
        built = built.on(node_name, gpu_ids=[device])
    return built


# n1 (8 gpus) is full: "elastic" runs workers 0-5 on devices 0-5 and may shrink to 2;
# "pair" holds devices 6-7. Both priority 0.
ELASTIC_AND_PAIR = [
    one_gpu_workers("elastic", "n1", range(6)).keep(2),
    running("pair").seq(1).on("n1", gpu_ids=[6, 7]),
]

SHRINK_FIRST_CASES = [
    pytest.param(
        2,
        {"elastic": workers(5, 4)},
        [],
        id="a higher-priority job shrinks a lower-priority elastic job instead of stopping it",
    ),
    pytest.param(
        4,
        {"elastic": workers(5, 4, 3, 2)},
        [],
        id="shrinking goes down to the minimum before anything is stopped",
    ),
    pytest.param(
        6,
        {"elastic": workers(5, 4, 3, 2)},
        ["pair"],
        id="when shrinking to the minimum is not enough a job is stopped and the shrink kept",
    ),
    pytest.param(
        8,
        {},
        ["pair", "elastic"],
        id="a job that must be stopped whole is not also shrunk",
    ),
]


@pytest.mark.parametrize(("gpus", "expected_shrinks", "expected_victims"), SHRINK_FIRST_CASES)
def test_shrinking_comes_before_stopping(
    gpus: int, expected_shrinks: dict[str, list[str]], expected_victims: list[str]
) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(gpus).priority(10)],
        running_jobs=ELASTIC_AND_PAIR,
    )
    assert shrunk(decisions) == expected_shrinks
    assert victims(decisions) == expected_victims
    assert bound(decisions) == ["urgent"]
    assert {s.preemptor for s in decisions.shrinks} <= {"urgent"}
    assert max(device_shares(decisions, ELASTIC_AND_PAIR).values()) == 1.0


def test_the_shrink_says_what_it_removes_and_for_whom() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("ads/urgent").gpus(2).priority(100)],
        running_jobs=ELASTIC_AND_PAIR,
    )
    assert decisions.shrinks == [
        Shrink(
            job="elastic",
            pods=(("worker", 5), ("worker", 4)),
            preemptor="ads/urgent",
            message=(
                "shrunk worker 6→4 (removes worker-5, worker-4) "
                "to make room for ads/urgent (priority 100 > 0)"
            ),
        )
    ]
    (pod,) = placements(decisions, "ads/urgent")
    assert (pod.node, pod.gpu_ids) == ("n1", (4, 5))


def test_two_preemptors_shrink_the_same_job_step_by_step() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("first").gpus(2).priority(10), job("second").gpus(2).priority(10)],
        running_jobs=ELASTIC_AND_PAIR,
    )
    assert [(s.preemptor, s.message) for s in decisions.shrinks] == [
        (
            "first",
            "shrunk worker 6→4 (removes worker-5, worker-4) to make room for first "
            "(priority 10 > 0)",
        ),
        (
            "second",
            "shrunk worker 4→2 (removes worker-3, worker-2) to make room for second "
            "(priority 10 > 0)",
        ),
    ]
    assert victims(decisions) == []


def test_a_job_shrunk_earlier_in_the_cycle_is_stopped_with_what_it_still_holds() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("first").gpus(2).priority(30), job("second").gpus(6).priority(20)],
        running_jobs=[one_gpu_workers("elastic", "n1", range(8)).keep(6)],
    )
    assert shrunk(decisions) == {"elastic": workers(7, 6)}
    assert [(p.victim, p.preemptor, p.message) for p in decisions.preemptions] == [
        (
            "elastic",
            "second",
            "preempted for second (priority 20 > 0); frees 6 cpu, 6 gpu, 6Gi memory on n1",
        ),
    ]
    assert bound(decisions) == ["first", "second"]


def test_a_gang_across_nodes_shrinks_a_job_on_each() -> None:
    held = [
        one_gpu_workers("left", "n1", range(8)).keep(2),
        one_gpu_workers("right", "n2", range(8)).keep(2),
    ]
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("gang").pods(2).gpus(4).priority(10)],
        running_jobs=held,
    )
    assert shrunk(decisions) == {"left": workers(7, 6, 5, 4), "right": workers(7, 6, 5, 4)}
    assert victims(decisions) == []
    assert sorted(p.node for p in placements(decisions, "gang")) == ["n1", "n2"]
    assert max(device_shares(decisions, held).values()) == 1.0


FEWEST_PODS_CASES = [
    pytest.param(
        0,
        {"wide": workers(3)},
        id="among jobs of equal priority the one giving back the fewest pods is shrunk",
    ),
    pytest.param(
        5,
        {"narrow": workers(7, 6)},
        id="a lower-priority job is shrunk before a higher one even if it gives back more pods",
    ),
]


@pytest.mark.parametrize(("wide_priority", "expected"), FEWEST_PODS_CASES)
def test_shrink_removes_the_fewest_pods_from_the_lowest_priority(
    wide_priority: int, expected: dict[str, list[str]]
) -> None:
    narrow = one_gpu_workers("narrow", "n1", range(8)).keep(4)
    wide = running("wide").priority(wide_priority)
    for pair in ([0, 1], [2, 3], [4, 5], [6, 7]):
        wide = wide.on("n2", gpu_ids=pair)
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(8)],
        jobs=[job("urgent").gpus(2).priority(10)],
        running_jobs=[narrow, wide.keep(2)],
    )
    assert shrunk(decisions) == expected
    assert victims(decisions) == []


# worker-5 runs on an a100 node, workers 0-4 on h100; everything else is pinned.
SPREAD = [
    one_gpu_workers("elastic", "h", range(5)).on("a", gpu_ids=[0]),
    running("pinned-h").on("h", gpu_ids=[5, 6, 7]).not_preemptible(),
    running("pinned-a").on("a", gpu_ids=range(1, 8)).not_preemptible(),
]
SPREAD_NODES = [node("h").gpus(8).model("h100"), node("a").gpus(8).model("a100")]

ORDER_CASES = [
    pytest.param(
        (5, 4, 3, 2),
        "h100",
        workers(5, 4),
        id="pods go strictly in the order given, even one on a node the preemptor cannot use",
    ),
    pytest.param(
        (5, 4, 3, 2),
        "a100",
        workers(5),
        id="the first pod in the order given goes when it alone makes room",
    ),
    pytest.param(
        (2, 3, 4, 5),
        "h100",
        workers(2),
        id="the order given is followed even when it is not highest index first",
    ),
]


@pytest.mark.parametrize(("order", "model", "expected"), ORDER_CASES)
def test_shrink_removes_a_prefix_of_the_order_given(
    order: tuple[int, ...], model: str, expected: list[str]
) -> None:
    decisions = decide(
        nodes=SPREAD_NODES,
        jobs=[job("urgent").gpus(1).model(model).priority(10)],
        running_jobs=[SPREAD[0].shrink_order(*order), *SPREAD[1:]],
    )
    assert shrunk(decisions) == {"elastic": expected}
    assert victims(decisions) == []


def test_room_a_shrink_frees_beyond_its_preemptor_is_not_handed_to_later_jobs() -> None:
    decisions = decide(
        nodes=SPREAD_NODES,
        jobs=[
            job("urgent").gpus(1).model("h100").priority(10),
            job("later").gpus(1).model("a100").priority(0),
        ],
        running_jobs=[SPREAD[0].keep(2), *SPREAD[1:]],
    )
    assert shrunk(decisions) == {"elastic": workers(5, 4)}
    assert bound(decisions) == ["urgent"]
    assert decisions.pending["later"].code == "InsufficientGPU"


NEVER_SHRUNK_CASES = [
    pytest.param(
        one_gpu_workers("peer", "n1", range(8)).priority(10).keep(1),
        id="an elastic job of equal priority is never shrunk",
    ),
    pytest.param(
        one_gpu_workers("vip", "n1", range(8)).priority(50).keep(1),
        id="an elastic job of higher priority is never shrunk",
    ),
    pytest.param(
        one_gpu_workers("pinned", "n1", range(8)).keep(1).not_preemptible(),
        id="an elastic job marked not preemptible is never shrunk",
    ),
]


@pytest.mark.parametrize("held", NEVER_SHRUNK_CASES)
def test_jobs_that_must_not_be_touched_are_not_shrunk(held: running) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(2).priority(10)],
        running_jobs=[held],
    )
    assert decisions.shrinks == decisions.preemptions == decisions.binds == []
    assert decisions.pending["urgent"].code == "InsufficientGPU"


def test_nothing_is_shrunk_when_preemption_is_switched_off() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("urgent").gpus(2).priority(10)],
        running_jobs=ELASTIC_AND_PAIR,
        preemption=False,
    )
    assert decisions.shrinks == decisions.binds == []
    assert decisions.pending["urgent"].code == "InsufficientGPU"


def test_a_shrink_gives_the_shrunk_jobs_queue_back_what_it_removed() -> None:
    held = (
        running("elastic")
        .queue("search")
        .on("n1", gpu_ids=[0], cpu=2)
        .on("n1", gpu_ids=[1], cpu=2)
        .on("n1", gpu_ids=[2], cpu=2)
        .on("n1", gpu_ids=[3], cpu=2)
        .keep(2)
    )
    decisions = decide(
        nodes=[node("n1").gpus(4), node("n2").cpu(8)],
        jobs=[job("urgent").queue("ads").gpus(2).priority(10), job("next").queue("search").cpu(4)],
        running_jobs=[held],
        queues=[queue("ads"), queue("search").max_cpu(8)],
    )
    assert shrunk(decisions) == {"elastic": workers(3, 2)}
    assert bound(decisions) == ["urgent", "next"]
