"""Replays small enough to check by hand: JCT, queueing delay, allocation, slowdown."""

from __future__ import annotations

import doctest
import importlib

import pytest

from tidemill.scheduler import ClusterState, NodeInfo, QueueInfo
from tidemill.scheduler.sim import POLICIES, SimInputError, TraceJob, replay, summarize

GIB = 2**30


def cluster(*gpus: int) -> ClusterState:
    nodes = tuple(NodeInfo(f"n{i}", 32_000, 256 * GIB, g) for i, g in enumerate(gpus))
    return ClusterState(nodes=nodes, queues={})


def job(
    name: str,
    at: float,
    gpus: float,
    run_s: float | None,
    queue: str = "q",
    pods: int = 1,
    priority: int = 0,
) -> TraceJob:
    return TraceJob(name, at, run_s, queue, pods, gpus / pods, 1000, GIB, priority)


# A fills the node until 100; B and C wait for it, then share it. By hand:
# JCT A 100, B 150-10=140, C 130-20=110; waits 0, 90, 80; GPUs 8 for 0-130, 4 for 130-150.
QUEUED = [
    job("a", 0, 8, 100, queue="first"),
    job("b", 10, 4, 50, queue="second"),
    job("c", 20, 4, 30, queue="second"),
]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_jobs_that_wait_for_a_full_node_have_hand_checked_figures(policy: str) -> None:
    record = replay(cluster(8), QUEUED, POLICIES[policy])
    assert [(o.start_s, o.end_s) for o in record.outcomes] == [(0, 100), (100, 150), (100, 130)]
    summary = summarize(record)
    assert summary["jct_s"] == pytest.approx(
        {"mean": 350 / 3, "median": 110, "p99": 140, "max": 140}
    )
    assert summary["queueing_delay_s"] == pytest.approx(
        {"mean": 170 / 3, "median": 80, "p99": 90, "max": 90}
    )
    assert summary["gpu_allocation"]["mean_percent"] == pytest.approx(
        100 * (8 * 130 + 4 * 20) / 150 / 8
    )
    queues = summary["queues"]
    assert queues["first"]["mean_slowdown"] == 1.0
    assert queues["second"]["mean_slowdown"] == pytest.approx((140 / 50 + 110 / 30) / 2)
    assert queues["second"]["mean_wait_s"] == 85
    assert summary["worst_queue"] == "second"
    overall = (1 + 140 / 50 + 110 / 30) / 3
    assert summary["worst_queue_to_mean"] == pytest.approx(
        queues["second"]["mean_slowdown"] / overall
    )
    assert summary["scheduler_cpu_ms"]["calls"] == 4  # arrivals at 0, 10 and 20; the end at 100


def test_a_gang_starts_only_when_every_pod_has_room() -> None:
    trace = [job("small", 0, 4, 60), job("gang", 1, 16, 10, pods=2)]
    record = replay(cluster(8, 8), trace, POLICIES["tidemill"])
    gang = record.outcomes[1]
    assert (gang.start_s, gang.end_s, gang.wait_s) == (60, 70, 59)


def test_fifo_holds_a_small_job_behind_a_waiting_one_where_first_fit_does_not() -> None:
    trace = [job("a", 0, 6, 100), job("b", 1, 4, 10), job("c", 2, 2, 10)]
    fifo = replay(cluster(8), trace, POLICIES["fifo"])
    first_fit = replay(cluster(8), trace, POLICIES["first-fit"])
    assert fifo.outcomes[2].start_s == 100
    assert first_fit.outcomes[2].start_s == 2


def test_a_preempted_job_goes_back_to_waiting_and_runs_again_from_the_start() -> None:
    trace = [job("low", 0, 8, 100, priority=0), job("high", 10, 8, 20, priority=10)]
    record = replay(cluster(8), trace, POLICIES["tidemill"])
    low, high = record.outcomes
    assert (high.start_s, high.end_s) == (10, 30)
    assert (low.start_s, low.end_s, low.preemptions) == (30, 130, 1)
    assert summarize(record)["preemptions"] == 1


def test_a_job_of_unknown_duration_holds_its_gpus_to_the_end_and_one_too_big_never_starts() -> None:
    trace = [job("forever", 0, 2, None), job("short", 5, 2, 10), job("huge", 6, 16, 10)]
    record = replay(cluster(8), trace, POLICIES["tidemill"])
    forever, short, huge = record.outcomes
    assert (forever.start_s, forever.end_s) == (0, None)
    assert (short.start_s, short.end_s) == (5, 15)
    assert huge.start_s is None
    summary = summarize(record)
    assert (summary["ended"], summary["never_started"]) == (1, 1)
    assert record.allocation[-1] == (15, 2)


def test_the_same_trace_replays_to_the_same_outcome() -> None:
    trace = [
        job(f"j{i}", i * 7 % 50, (1, 2, 4, 8, 0.5)[i % 5], 20 + i % 13, queue=f"q{i % 3}")
        for i in range(60)
    ]
    first = replay(cluster(8, 8, 4), trace, POLICIES["tidemill"])
    second = replay(cluster(8, 8, 4), trace, POLICIES["tidemill"])
    times = [(o.start_s, o.end_s) for o in first.outcomes]
    assert times == [(o.start_s, o.end_s) for o in second.outcomes]
    assert first.allocation == second.allocation
    assert all(start is not None for start, _ in times)


def test_a_trace_queue_the_cluster_does_not_declare_is_refused() -> None:
    declared = ClusterState(nodes=cluster(8).nodes, queues={"ads": QueueInfo("ads")})
    with pytest.raises(SimInputError, match=r"job a uses queue 'q'.*declares ads"):
        replay(declared, [job("a", 0, 1, 1)], POLICIES["tidemill"])


def test_progress_counts_every_arrival_and_end() -> None:
    seen: list[tuple[int, int]] = []
    replay(cluster(8), QUEUED, POLICIES["tidemill"], lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_trace_with_a_repeated_job_name_is_refused() -> None:
    with pytest.raises(SimInputError, match=r"job names must be unique; repeated: \['a'\]"):
        replay(cluster(8), [job("a", 0, 1, 1), job("a", 1, 1, 1)], POLICIES["tidemill"])


def test_the_replay_docstring_example_runs() -> None:
    # The package's ``replay`` attribute is the function, so fetch the module by name.
    module = importlib.import_module("tidemill.scheduler.sim.replay")
    assert doctest.testmod(module).failed == 0
