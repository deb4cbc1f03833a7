"""The cycle as a whole: pure, deterministic, strict or best-effort FIFO, fast at scale."""

from __future__ import annotations

import copy
import doctest
import random
import time

import pytest

import tidemill.scheduler
import tidemill.scheduler.core
from tidemill.scheduler import ClusterState, JobRequest, SchedulerConfig, schedule

from .builders import backlog, bound, decide, device_shares, job, node, queue, running, state_of


def busy_cluster(
    seed: int, nodes: int = 12, jobs: int = 40
) -> tuple[ClusterState, list[JobRequest]]:
    """A mixed cluster: running jobs of several priorities, whole and shared gpus, two models."""
    rng = random.Random(seed)
    node_builders = [node(f"n{i}").gpus(8).model("h100" if i % 3 else "a100") for i in range(nodes)]
    held = [
        running(f"r{i}")
        .queue(rng.choice(["ads", "search", "cv"]))
        .priority(rng.choice([0, 5, 10]))
        .seq(i)
        .on(f"n{i}", gpu_ids=range(rng.choice([2, 4, 6])))
        for i in range(nodes)
    ]
    pending = [
        job(f"j{i}")
        .queue(rng.choice(["ads", "search", "cv", "missing"]))
        .priority(rng.choice([0, 5, 10, 20]))
        .pods(rng.choice([1, 2, 4]))
        .gpus(rng.choice([0.25, 0.5, 1, 2, 4, 8]))
        for i in range(jobs)
    ]
    queues = [queue("ads").weight(2), queue("search").max_gpu(24), queue("cv")]
    return state_of(node_builders, held, queues), backlog(pending)


def test_schedule_changes_none_of_its_inputs() -> None:
    state, pending = busy_cluster(seed=1)
    state_before, pending_before = copy.deepcopy(state), copy.deepcopy(pending)
    config = SchedulerConfig(preemption=True)
    decisions = schedule(state, pending, config)
    assert decisions.binds and decisions.preemptions and decisions.pending
    assert state == state_before
    assert pending == pending_before
    assert config == SchedulerConfig(preemption=True)


def test_the_same_inputs_always_give_the_same_decisions() -> None:
    state, pending = busy_cluster(seed=2)
    first = schedule(state, pending)
    assert all(schedule(state, pending) == first for _ in range(3))


def test_the_order_pending_jobs_and_queues_arrive_in_does_not_matter() -> None:
    state, pending = busy_cluster(seed=3)
    shuffled = list(pending)
    random.Random(0).shuffle(shuffled)
    reversed_queues = dict(reversed(list(state.queues.items())))
    other = ClusterState(state.nodes, reversed_queues, state.running)
    assert schedule(other, shuffled) == schedule(state, pending)


def test_every_job_is_decided_once() -> None:
    state, pending = busy_cluster(seed=4)
    decisions = schedule(state, pending)
    keys = [b.job for b in decisions.binds] + list(decisions.pending)
    assert sorted(keys) == sorted(j.key for j in pending)


FIFO_CASES = [
    pytest.param(
        True,
        ["other-queue"],
        "BlockedByQueueHead",
        id="under strict fifo a head that does not fit holds back the smaller job behind it",
    ),
    pytest.param(
        False,
        ["small", "other-queue"],
        "InsufficientGPU",
        id="best effort lets a smaller job pass a head that does not fit",
    ),
]


@pytest.mark.parametrize(("strict", "expected_bound", "small_code"), FIFO_CASES)
def test_strict_fifo_blocks_only_the_heads_own_queue(
    strict: bool, expected_bound: list[str], small_code: str
) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[
            job("head").queue("a").gpus(8).priority(1),
            job("small").queue("a").gpus(2),
            job("other-queue").queue("b").gpus(2),
        ],
        running_jobs=[running("busy").queue("c").on("n1", gpu_ids=range(4)).not_preemptible()],
        queues=[queue("a"), queue("b"), queue("c")],
        strict_fifo=strict,
    )
    assert sorted(bound(decisions)) == sorted(expected_bound)
    assert decisions.pending["head"].code == "InsufficientGPU"
    if strict:
        assert decisions.pending["small"].code == small_code
    else:
        assert "small" not in decisions.pending


def test_ten_thousand_nodes_are_scheduled_quickly_and_correctly() -> None:
    nodes = [node(f"n{i:05d}").gpus(8) for i in range(10_000)]
    held = [running(f"r{i}").on(f"n{i:05d}", gpu_ids=range(i % 8)) for i in range(10_000)]
    jobs = [job(f"j{i}").pods(1 + i % 4).gpus([8, 4, 2, 0.5][i % 4]) for i in range(200)]
    started = time.perf_counter()
    decisions = decide(nodes=nodes, jobs=jobs, running_jobs=held)
    elapsed_s = time.perf_counter() - started
    assert len(decisions.binds) == 200
    assert max(device_shares(decisions, held).values()) <= 1.0
    assert elapsed_s < 20, f"one cycle over 10,000 nodes took {elapsed_s:.1f}s"


def test_the_public_names_are_pinned() -> None:
    assert sorted(tidemill.scheduler.__all__) == [
        "Bind",
        "ClusterState",
        "Code",
        "Decisions",
        "JobRequest",
        "Memo",
        "NodeInfo",
        "NumaNode",
        "Placement",
        "PodRequest",
        "PodType",
        "Preemption",
        "QueueInfo",
        "Reason",
        "Reclaim",
        "Reservation",
        "ResourceVector",
        "RunningJob",
        "SchedulerConfig",
        "Shrink",
        "TopologyRequest",
        "schedule",
        "schedule_incremental",
    ]
    assert tidemill.scheduler.schedule is tidemill.scheduler.core.schedule


def test_the_example_in_the_schedule_docstring_runs() -> None:
    result = doctest.testmod(tidemill.scheduler.core)
    assert result.attempted > 0
    assert result.failed == 0
