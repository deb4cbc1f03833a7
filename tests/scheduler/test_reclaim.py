"""A queue below its guarantee takes room back from queues over theirs, at any priority,
lowest priority and newest first, and never takes a queue below its own guarantee."""

from __future__ import annotations

import pytest

from tidemill.scheduler import Decisions, Reclaim, ResourceVector

from .builders import bound, decide, job, node, queue, running, shrunk

NODES = [node("n1").gpus(8), node("n2").gpus(8)]


def search(key: str, node_name: str, devices: range, started: float, priority: int = 0) -> running:
    return (
        running(key)
        .queue("search")
        .priority(priority)
        .started(started)
        .on(node_name, gpu_ids=devices)
    )


SEARCH = [
    search("s-old", "n1", range(0, 4), started=0),
    search("s-new", "n1", range(4, 8), started=100),
    search("s-mid", "n2", range(0, 4), started=50),
    search("s-newest", "n2", range(4, 8), started=200),
]
"""Queue search fills the cluster (16 gpu); queue ads holds nothing."""
ADS = queue("ads").guarantee_gpu(8)


def victims(decisions: Decisions) -> list[str]:
    return [p.victim for p in decisions.preemptions]


RECLAIM_CASES = [
    pytest.param(
        SEARCH,
        [ADS, queue("search").guarantee_gpu(4)],
        job("ads-job").queue("ads").gpus(4),
        ["s-newest"],
        id="a queue under its guarantee reclaims from a queue over its own at equal priority",
    ),
    pytest.param(
        [*SEARCH[:3], search("s-newest", "n2", range(4, 8), started=200, priority=50)],
        [ADS, queue("search")],
        job("ads-job").queue("ads").gpus(4),
        ["s-new"],
        id="the newest job of the lowest priority goes first, a higher priority one later",
    ),
    pytest.param(
        [
            search("s-old", "n1", range(0, 4), started=0, priority=100),
            search("s-new", "n1", range(4, 8), started=100, priority=100),
            search("s-mid", "n2", range(0, 4), started=50, priority=100),
            search("s-newest", "n2", range(4, 8), started=200, priority=100),
        ],
        [ADS, queue("search")],
        job("ads-job").queue("ads").gpus(4).priority(1),
        ["s-newest"],
        id="a queue under its guarantee reclaims even from jobs of higher priority",
    ),
    pytest.param(
        SEARCH,
        [ADS, queue("search").guarantee_gpu(4)],
        job("ads-job").queue("ads").gpus(8),
        ["s-newest", "s-mid"],
        id="a whole node is freed by the fewest newest jobs on one node, sparing the rest",
    ),
    pytest.param(
        SEARCH,
        [ADS, queue("search").guarantee_gpu(12)],
        job("ads-job").queue("ads").gpus(4),
        ["s-newest"],
        id="a victim queue may be taken down to exactly its guarantee",
    ),
]


@pytest.mark.parametrize(("held", "queues", "claimant", "expected"), RECLAIM_CASES)
def test_a_queue_under_its_guarantee_reclaims_lowest_priority_and_newest_first(
    held: list[running], queues: list[queue], claimant: job, expected: list[str]
) -> None:
    decisions = decide(nodes=NODES, jobs=[claimant], running_jobs=held, queues=queues)
    assert victims(decisions) == expected
    assert bound(decisions) == ["ads-job"]


NO_RECLAIM_CASES = [
    pytest.param(
        [ADS, queue("search").guarantee_gpu(12)],
        job("ads-job").queue("ads").gpus(8),
        id="nothing is taken that would leave the victim queue below its guarantee",
    ),
    pytest.param(
        [ADS, queue("search")],
        job("ads-job").queue("ads").pods(2).gpus(8),
        id="a gang that would take its queue over its guarantee reclaims nothing",
    ),
    pytest.param(
        [queue("ads"), queue("search")],
        job("ads-job").queue("ads").gpus(4),
        id="a queue with no guarantee reclaims nothing",
    ),
    pytest.param(
        [ADS, queue("search").guarantee_gpu(16)],
        job("ads-job").queue("ads").gpus(4),
        id="a queue at its guarantee gives nothing back",
    ),
]


@pytest.mark.parametrize(("queues", "claimant"), NO_RECLAIM_CASES)
def test_reclaim_never_goes_past_a_guarantee(queues: list[queue], claimant: job) -> None:
    decisions = decide(nodes=NODES, jobs=[claimant], running_jobs=SEARCH, queues=queues)
    assert victims(decisions) == []
    assert bound(decisions) == []
    assert decisions.pending["ads-job"].code == "InsufficientGPU"


@pytest.mark.parametrize(
    ("preemption", "reclaim"),
    [
        pytest.param(False, True, id="nothing is reclaimed when preemption is switched off"),
        pytest.param(True, False, id="nothing is reclaimed when reclaim is switched off"),
    ],
)
def test_reclaim_can_be_switched_off(preemption: bool, reclaim: bool) -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[job("ads-job").queue("ads").gpus(4)],
        running_jobs=SEARCH,
        queues=[ADS, queue("search")],
        preemption=preemption,
        reclaim=reclaim,
    )
    assert victims(decisions) == []


def test_the_decision_names_the_guarantee_reclaimed_for_the_event() -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[job("ads-job").queue("ads").gpus(4)],
        running_jobs=SEARCH,
        queues=[ADS, queue("search").guarantee_gpu(4)],
    )
    (preemption,) = decisions.preemptions
    assert preemption.reclaim == Reclaim("ads", ResourceVector(gpu=8), held=ResourceVector())
    assert preemption.message == (
        "preempted for ads-job: queue ads reclaims its guarantee of 8 gpu (it held nothing); "
        "queue search is over its own; frees 1 cpu, 4 gpu, 1Gi memory on n2"
    )


def test_an_elastic_job_over_its_queues_guarantee_is_shrunk_before_anything_is_stopped() -> None:
    elastic = (
        running("s-elastic")
        .queue("search")
        .started(0)
        .on("n2", gpu_ids=[0, 1])
        .on("n2", gpu_ids=[2, 3])
        .on("n2", gpu_ids=[4, 5])
        .on("n2", gpu_ids=[6, 7])
        .keep(2)
    )
    decisions = decide(
        nodes=NODES,
        jobs=[job("ads-job").queue("ads").gpus(4)],
        running_jobs=[*SEARCH[:2], elastic],
        queues=[ADS, queue("search").guarantee_gpu(4)],
    )
    assert victims(decisions) == []
    assert shrunk(decisions) == {"s-elastic": ["worker-3", "worker-2"]}
    (shrink,) = decisions.shrinks
    assert shrink.reclaim is not None and shrink.reclaim.queue == "ads"
    assert "queue ads reclaims its guarantee of 8 gpu" in shrink.message
    assert bound(decisions) == ["ads-job"]


def test_a_higher_priority_job_preempts_by_priority_before_it_reclaims() -> None:
    own_low = running("ads-low").queue("ads").priority(0).on("n1", gpu_ids=range(4))
    decisions = decide(
        nodes=NODES,
        jobs=[job("ads-job").queue("ads").gpus(4).priority(10)],
        running_jobs=[own_low, *SEARCH[1:]],
        queues=[queue("ads").guarantee_gpu(12), queue("search")],
    )
    assert victims(decisions) == ["ads-low"]
    assert decisions.preemptions[0].reclaim is None


GUARDED = [
    running("ads-a").queue("ads").seq(2).on("n1", gpu_ids=range(4)),
    running("search-low").queue("search").seq(1).on("n1", gpu_ids=range(4, 8)),
]
"""n1 only: ads holds 4 gpu of its 8 guaranteed; ads-a is the newest, preempted first."""


def test_a_higher_priority_job_of_another_queue_preempts_around_a_queue_within_its_guarantee() -> (
    None
):
    decisions = decide(
        nodes=NODES[:1],
        jobs=[job("urgent").queue("search").gpus(4).priority(50)],
        running_jobs=GUARDED,
        queues=[ADS, queue("search")],
    )
    assert victims(decisions) == ["search-low"]


def test_a_higher_priority_job_never_takes_another_queue_below_its_guarantee() -> None:
    decisions = decide(
        nodes=NODES[:1],
        jobs=[job("urgent").queue("search").gpus(8).priority(50)],
        running_jobs=GUARDED,
        queues=[ADS, queue("search")],
    )
    assert victims(decisions) == []
    assert decisions.pending["urgent"].message.endswith(
        "preempting lower-priority jobs would take queue ads below its guarantee"
    )


def test_a_reclaimed_job_of_higher_priority_does_not_take_the_room_straight_back() -> None:
    """Reclaim, then priority preemption, then reclaim again would never end."""
    first = decide(
        nodes=NODES[:1],
        jobs=[job("ads-job").queue("ads").gpus(8)],
        running_jobs=[running("vip").queue("search").priority(50).on("n1", gpu_ids=range(8))],
        queues=[ADS, queue("search")],
    )
    assert victims(first) == ["vip"]
    second = decide(
        nodes=NODES[:1],
        jobs=[job("vip").queue("search").gpus(8).priority(50)],
        running_jobs=[running("ads-job").queue("ads").on("n1", gpu_ids=range(8))],
        queues=[ADS, queue("search")],
    )
    assert victims(second) == []
    assert bound(second) == []
