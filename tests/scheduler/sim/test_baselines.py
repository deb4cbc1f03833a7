"""The baselines place like their textbook names, and keep a gang all-or-nothing."""

from __future__ import annotations

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    RunningJob,
)
from tidemill.scheduler.sim.baselines import best_fit, fifo, first_fit

GIB = 2**30


def state(*held: Placement) -> ClusterState:
    nodes = (NodeInfo("n1", 32_000, 64 * GIB, 8), NodeInfo("n2", 32_000, 64 * GIB, 8))
    running = tuple(RunningJob(f"r{i}", "q", 0, i, (p,)) for i, p in enumerate(held))
    return ClusterState(nodes=nodes, queues={"q": QueueInfo("q")}, running=running)


def request(key: str, gpu: float, pods: int = 1, sequence: int = 0) -> JobRequest:
    members = tuple(PodRequest("worker", i, 1000, GIB, gpu) for i in range(pods))
    return JobRequest(key, "q", 0, sequence, members)


SIX_ON_N2 = Placement("worker", 0, "n2", 1000, GIB, (0, 1, 2, 3, 4, 5), 1.0)
SHARES_ON_N1 = Placement("worker", 0, "n1", 1000, GIB, (3,), 0.5)


def test_first_fit_takes_the_first_node_and_best_fit_the_one_left_fullest() -> None:
    snapshot = state(SIX_ON_N2)
    first = first_fit(snapshot, [request("a", 2)]).binds[0].placements[0]
    best = best_fit(snapshot, [request("a", 2)]).binds[0].placements[0]
    assert (first.node, first.gpu_ids) == ("n1", (0, 1))
    assert (best.node, best.gpu_ids) == ("n2", (6, 7))


def test_a_share_goes_to_the_first_device_or_for_best_fit_the_fullest_that_fits() -> None:
    snapshot = state(SHARES_ON_N1)
    first = first_fit(snapshot, [request("a", 0.5)]).binds[0].placements[0]
    best = best_fit(snapshot, [request("a", 0.5)]).binds[0].placements[0]
    assert (first.node, first.gpu_ids, first.gpu_share) == ("n1", (0,), 0.5)
    assert (best.node, best.gpu_ids, best.gpu_share) == ("n1", (3,), 0.5)


def test_a_gang_that_does_not_fit_holds_nothing_and_the_next_job_still_places() -> None:
    snapshot = state(SIX_ON_N2)
    decisions = first_fit(snapshot, [request("gang", 8, pods=2), request("b", 8, sequence=1)])
    assert [bind.job for bind in decisions.binds] == ["b"]
    assert decisions.binds[0].placements[0].node == "n1"
    assert decisions.pending["gang"].code == "GangDoesNotFit"
    assert "1 of 2 pod(s) fit" in decisions.pending["gang"].message


def test_fifo_stops_at_the_first_job_that_does_not_fit() -> None:
    snapshot = state(SIX_ON_N2)
    decisions = fifo(
        snapshot, [request("b", 1, sequence=2), request("gang", 8, pods=2, sequence=1)]
    )
    assert decisions.binds == []
    assert decisions.pending["b"].code == "BlockedByQueueHead"
    assert "gang is waiting ahead of it" in decisions.pending["b"].message
