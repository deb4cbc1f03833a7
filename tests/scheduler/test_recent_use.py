"""Queues holding equal shares are served by who used less lately, not by name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tidemill.scheduler import ClusterState, NodeInfo, SchedulerConfig, schedule
from tidemill.scheduler.recent_use import RecentUse
from tidemill.scheduler.sim import POLICIES, TraceJob, replay

from .builders import backlog, bound, job, node, queue, state_of

HOUR = 3600.0


def test_use_halves_over_a_half_life_and_adds_what_was_held() -> None:
    used = RecentUse(at=0.0, share_seconds={"a": 100.0}, holding={"b": 1.0})
    later = used.advanced(HOUR, half_life_s=HOUR)
    assert later.at == HOUR
    assert later.of("a") == pytest.approx(50.0)
    # held all hour, counted as it decays: HOUR * (1 - 1/2) / ln 2
    assert later.of("b") == pytest.approx(HOUR / 2 / 0.6931471805599453)
    # a short interval counts about its length
    assert used.advanced(1.0, half_life_s=HOUR).of("b") == pytest.approx(1.0, rel=1e-3)


def test_a_clock_that_goes_back_or_is_missing_adds_nothing() -> None:
    used = RecentUse(at=100.0, share_seconds={"a": 5.0}, holding={"a": 1.0})
    assert used.advanced(None, half_life_s=HOUR) is used
    assert used.advanced(50.0, half_life_s=HOUR).of("a") == 5.0


def test_a_queue_gone_quiet_is_forgotten_and_an_infinite_share_adds_nothing() -> None:
    used = RecentUse(at=0.0, share_seconds={"gone": 1.0}, holding={"zero": float("inf")})
    later = used.advanced(100 * HOUR, half_life_s=HOUR)
    assert dict(later.share_seconds) == {}


def whole_node_jobs(queue_name: str, count: int, first_sequence: int) -> list[job]:
    return [
        job(f"{queue_name}{i}").queue(queue_name).gpus(8).seq(first_sequence + i)
        for i in range(count)
    ]


def test_equal_shares_go_to_the_queue_that_used_less_not_the_first_name() -> None:
    nodes = [node("n1").gpus(8)]
    queues = [queue("a"), queue("b")]
    jobs = whole_node_jobs("a", 3, 0) + whole_node_jobs("b", 1, 10)
    fresh = state_of(nodes, [], queues, (), None, ())
    assert bound(schedule(fresh, backlog(jobs))) == ["a0"]  # no history: first submitted
    used = RecentUse(at=0.0, share_seconds={"a": 600.0})
    state = state_of(nodes, [], queues, (), 10.0, ())
    with_history = replace(state, recent_use=used)
    assert bound(schedule(with_history, backlog(jobs))) == ["b0"]


def test_between_queues_equal_in_share_and_use_the_first_submitted_goes_first() -> None:
    """Before, the name decided: queue ``a`` went before ``b`` whose job had waited longer."""
    nodes = [node("n1").gpus(8)]
    jobs = whole_node_jobs("a", 2, 10) + whole_node_jobs("b", 1, 5)
    state = state_of(nodes, [], [queue("a"), queue("b")], (), None, ())
    assert bound(schedule(state, backlog(jobs))) == ["b0"]


def test_a_cycle_hands_on_what_each_queue_holds_after_its_binds() -> None:
    nodes = [node("n1").gpus(8)]
    state = state_of(nodes, [], [queue("a"), queue("b")], (), 0.0, ())
    decisions = schedule(state, backlog(whole_node_jobs("a", 1, 0)))
    assert dict(decisions.recent_use.holding) == {"a": 1.0, "b": 0.0}
    carried = decisions.recent_use.advanced(60.0, SchedulerConfig().recent_use_half_life_s)
    assert carried.of("a") == pytest.approx(60.0, rel=1e-2)


def flood_and_one_more(run_s: float) -> dict[str, float | None]:
    """Queue ``a`` (first by name) has 20 jobs that each take the whole node; a job of
    ``b`` arrives a minute after them. When does each start?"""
    cluster = ClusterState(nodes=(NodeInfo("n1", 8_000, 2**36, gpus=8),), queues={})
    flood = [TraceJob(f"a{i}", 0.0, run_s, "a", 1, 8, 1_000, 2**30) for i in range(20)]
    late = TraceJob("b0", 60.0, run_s, "b", 1, 8, 1_000, 2**30)
    record = replay(cluster, [*flood, late], POLICIES["tidemill"])
    return {o.job.name: o.start_s for o in record.outcomes}


def test_a_backlog_of_whole_cluster_jobs_does_not_starve_another_queue() -> None:
    """Before, b's job started after all 20 (by name, a went first at every tie)."""
    starts = flood_and_one_more(600.0)
    assert starts["b0"] == 600.0
    assert starts["a0"] == 0.0 and starts["a1"] == 1200.0


def test_a_backlog_waiting_past_the_reservation_bound_does_not_keep_every_reservation() -> None:
    """After an hour a's jobs have all waited past the bound, and the four longest
    waiting held every reservation, one after another, until a's backlog ran out (b's
    job, late an hour after them, was always behind). Now queues take turns: b's job
    starts once it is late, after at most the jobs already holding room."""
    starts = flood_and_one_more(HOUR)
    assert starts["b0"] is not None and starts["b0"] <= 3 * HOUR
