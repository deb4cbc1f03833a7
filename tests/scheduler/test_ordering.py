"""Who goes first: DRF between queues, priority then FIFO inside one."""

from __future__ import annotations

from collections import Counter

import pytest

from tidemill.scheduler.ordering import dominant_share
from tidemill.scheduler.types import ResourceVector

from .builders import bound, decide, job, node, queue, running


def one_gpu_jobs(queue_name: str, count: int) -> list[job]:
    return [job(f"{queue_name}{i}").queue(queue_name).gpus(1) for i in range(count)]


FAIR_SHARE_CASES = [
    pytest.param(
        [queue("a"), queue("b")],
        [],
        {"a": 3, "b": 3},
        id="two queues of equal weight split six gpus three and three",
    ),
    pytest.param(
        [queue("a").weight(2), queue("b")],
        [],
        {"a": 4, "b": 2},
        id="a queue with twice the weight ends up with twice the gpus",
    ),
    pytest.param(
        [queue("a"), queue("b")],
        [running("held").queue("a").on("n1", gpu_ids=[6, 7])],
        {"a": 2, "b": 4},
        id="a queue already holding gpus waits while the other catches up",
    ),
    pytest.param(
        [queue("a").weight(10), queue("b").guarantee_gpu(4)],
        [],
        {"a": 2, "b": 4},
        id="a queue below its guarantee goes first even against a heavier queue",
    ),
]


@pytest.mark.parametrize(("queues", "held", "expected"), FAIR_SHARE_CASES)
def test_drf_divides_the_cluster_between_queues(
    queues: list[queue], held: list[running], expected: dict[str, int]
) -> None:
    held_gpus = sum(len(p.gpu_ids) for r in held for p in r.placements)
    decisions = decide(
        nodes=[node("n1").gpus(6 + held_gpus)],
        jobs=one_gpu_jobs("a", 8) + one_gpu_jobs("b", 8),
        running_jobs=held,
        queues=queues,
    )
    per_queue = Counter(key[0] for key in bound(decisions))
    assert dict(per_queue) == expected


def test_drf_alternates_between_equal_queues_rather_than_draining_one() -> None:
    decisions = decide(
        nodes=[node("n1").gpus(4)],
        jobs=one_gpu_jobs("a", 4) + one_gpu_jobs("b", 4),
        queues=[queue("a"), queue("b")],
    )
    assert bound(decisions) == ["a0", "b0", "a1", "b1"]


WITHIN_QUEUE_CASES = [
    pytest.param(
        [job("low").priority(0), job("high").priority(5), job("mid").priority(3)],
        ["high", "mid"],
        id="higher priority jobs of one queue go first whatever their submission order",
    ),
    pytest.param(
        [job("third").seq(30), job("first").seq(10), job("second").seq(20)],
        ["first", "second"],
        id="jobs of equal priority go in submission order",
    ),
    pytest.param(
        [job("old-low").seq(1), job("new-high").priority(9).seq(2), job("new-low").seq(3)],
        ["new-high", "old-low"],
        id="priority beats age and age breaks priority ties",
    ),
]


@pytest.mark.parametrize(("jobs", "expected"), WITHIN_QUEUE_CASES)
def test_priority_then_fifo_within_a_queue(jobs: list[job], expected: list[str]) -> None:
    decisions = decide(nodes=[node("n1").gpus(2)], jobs=[j.gpus(1) for j in jobs])
    assert bound(decisions) == expected


DOMINANT_SHARE_CASES = [
    pytest.param(
        ResourceVector(cpu_millis=16_000, memory_bytes=10, gpu=1),
        ResourceVector(cpu_millis=64_000, memory_bytes=1000, gpu=8),
        0.25,
        id="the share is the largest fraction of any one resource",
    ),
    pytest.param(
        ResourceVector(cpu_millis=8_000, gpu=4),
        ResourceVector(cpu_millis=64_000, memory_bytes=1000, gpu=0),
        0.125,
        id="a resource the cluster does not have is left out",
    ),
    pytest.param(
        ResourceVector(),
        ResourceVector(),
        0.0,
        id="an empty cluster gives every queue a share of zero",
    ),
]


@pytest.mark.parametrize(("held", "capacity", "expected"), DOMINANT_SHARE_CASES)
def test_dominant_share(held: ResourceVector, capacity: ResourceVector, expected: float) -> None:
    assert dominant_share(held, capacity) == pytest.approx(expected)
