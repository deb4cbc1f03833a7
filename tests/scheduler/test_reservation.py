"""A job that waited past its bound gets room held for it; only jobs that end before the
room is due may use it meanwhile, and the gang binds once it frees."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tidemill.scheduler import Decisions, Reservation

from .builders import bound, decide, job, node, placements, queue, running

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()
"""When the big gang was submitted."""
NOW = T0 + 10_000
"""2h 46m later: past the default one-hour bound."""
HOUR = 3600.0

NODES = [node("n1").gpus(8), node("n2").gpus(8), node("n3").gpus(8)]
BUSY = [
    running("r1").seq(1).on("n1", gpu_ids=range(8)).ends(T0 + 12_000),
    running("r3").seq(3).on("n2", gpu_ids=range(4, 8)).ends(T0 + 13_000),
    running("r4").seq(4).on("n3", gpu_ids=range(8)).ends(T0 + 20_000),
]
"""n1 frees at +12000, n2 (half free now) at +13000, n3 at +20000: a 16-gpu gang of two
8-gpu pods fits on n1 and n2 from +13000 on."""
BIG = job("big").pods(2).gpus(8).seq(0).waiting_since(T0)
DUE = T0 + 13_000


def reserved_nodes(decisions: Decisions) -> dict[str, list[str]]:
    return {r.job: sorted({p.node for p in r.placements}) for r in decisions.reservations}


def test_a_big_gang_that_waited_past_the_bound_gets_a_reservation_and_an_expected_start() -> None:
    decisions = decide(nodes=NODES, jobs=[BIG], running_jobs=BUSY, now=NOW)
    assert reserved_nodes(decisions) == {"big": ["n1", "n2"]}
    assert decisions.reservations[0].due == DUE
    reason = decisions.pending["big"]
    assert reason.code == "Reserved"
    assert reason.message.startswith(
        "waited 2h 46m, past the 1h bound: 2 cpu, 16 gpu, 2Gi memory held for it on n1, n2"
    )
    assert "expected to start at 2026-12-04 15:36:40 UTC" in reason.message


NO_RESERVATION_CASES = [
    pytest.param(
        BIG.waiting_since(NOW - 600),
        [],
        3600.0,
        id="a gang that has waited less than the bound gets no reservation",
    ),
    pytest.param(
        BIG.queue("batch"),
        [queue("batch").reserve_after(4 * HOUR)],
        3600.0,
        id="a queue's own bound replaces the scheduler's",
    ),
    pytest.param(BIG, [], None, id="no reservation is made when the bound is switched off"),
    pytest.param(
        BIG.waiting_since(T0).pods(4),
        [],
        3600.0,
        id="a gang larger than the whole cluster gets no reservation",
    ),
]


@pytest.mark.parametrize(("waiting", "queues", "bound_s"), NO_RESERVATION_CASES)
def test_jobs_that_get_no_reservation(
    waiting: job, queues: list[queue], bound_s: float | None
) -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[waiting],
        running_jobs=BUSY,
        queues=queues or [queue("default")],
        now=NOW,
        reserve_after_s=bound_s,
    )
    assert decisions.reservations == []
    assert decisions.pending["big"].code in {"InsufficientGPU", "GangDoesNotFit"}


def test_a_queues_shorter_bound_reserves_sooner() -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[BIG.waiting_since(NOW - 600).queue("urgent")],
        running_jobs=BUSY,
        queues=[queue("urgent").reserve_after(300)],
        now=NOW,
    )
    assert reserved_nodes(decisions) == {"big": ["n1", "n2"]}
    assert "waited 10m, past the 5m bound" in decisions.pending["big"].message


SMALL = job("small").gpus(4).seq(5).waiting_since(NOW)

BACKFILL_CASES = [
    pytest.param(
        SMALL.runtime(2_000),
        [],
        True,
        id="a job whose deadline ends before the reservation is due backfills into its room",
    ),
    pytest.param(
        SMALL.runtime(3_000),
        [],
        True,
        id="a job that ends exactly when the reservation is due backfills",
    ),
    pytest.param(
        SMALL.runtime(5_000),
        [],
        False,
        id="a job that would still run when the reservation is due does not backfill",
    ),
    pytest.param(
        SMALL.queue("short"),
        [queue("short").runtime_estimate(1_800)],
        True,
        id="a job without a deadline backfills on its queue's runtime estimate",
    ),
    pytest.param(
        SMALL.queue("long"),
        [queue("long").runtime_estimate(8 * HOUR)],
        False,
        id="a job whose queue's runtime estimate is too long does not backfill",
    ),
    pytest.param(
        SMALL,
        [],
        False,
        id="a job with no deadline and no queue estimate never backfills",
    ),
]


@pytest.mark.parametrize(("small", "queues", "backfills"), BACKFILL_CASES)
def test_only_jobs_that_end_before_the_reservation_is_due_backfill(
    small: job, queues: list[queue], backfills: bool
) -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[BIG, small],
        running_jobs=BUSY,
        queues=[queue("default"), *queues],
        now=NOW,
    )
    assert reserved_nodes(decisions) == {"big": ["n1", "n2"]}
    if backfills:
        assert bound(decisions) == ["small"]
        (pod,) = placements(decisions, "small")
        assert (pod.node, pod.gpu_ids) == ("n2", (0, 1, 2, 3))
    else:
        assert bound(decisions) == []
        reason = decisions.pending["small"]
        assert reason.code == "InsufficientGPU"
        assert reason.message.endswith(
            "room reserved for big is left out "
            "(a job that ends by 2026-12-04 15:36:40 UTC may use it)"
        )


def test_without_a_reservation_a_small_job_takes_the_room_as_it_frees_and_the_gang_waits_on() -> (
    None
):
    """The starvation the reservation prevents."""
    without_r1 = [r for r in BUSY if r.key != "r1"]
    first = decide(
        nodes=NODES,
        jobs=[BIG, SMALL],
        running_jobs=without_r1,
        now=T0 + 12_500,
        reserve_after_s=None,
    )
    assert bound(first) == ["small"]
    (pod,) = placements(first, "small")
    small_running = running("small").on(pod.node, gpu_ids=pod.gpu_ids)
    only_r4 = [r for r in BUSY if r.key == "r4"]
    second = decide(
        nodes=NODES,
        jobs=[BIG],
        running_jobs=[*only_r4, small_running],
        now=T0 + 13_100,
        reserve_after_s=None,
    )
    assert bound(second) == []


def test_the_reservation_is_kept_across_cycles_and_the_gang_binds_once_the_room_frees() -> None:
    first = decide(nodes=NODES, jobs=[BIG], running_jobs=BUSY, now=NOW)

    # r1 ended: n1 is free, n2 still half busy. A newcomer with no deadline must not
    # take n1, and the reservation stays where it was.
    without_r1 = [r for r in BUSY if r.key != "r1"]
    second = decide(
        nodes=NODES,
        jobs=[BIG, SMALL],
        running_jobs=without_r1,
        now=T0 + 12_500,
        reservations=first.reservations,
    )
    assert bound(second) == []
    assert second.reservations == first.reservations
    assert second.pending["big"].code == "Reserved"

    # r3 ended too: the gang binds on the room held for it, before the newcomer.
    only_r4 = [r for r in BUSY if r.key == "r4"]
    third = decide(
        nodes=NODES,
        jobs=[BIG, SMALL],
        running_jobs=only_r4,
        now=T0 + 13_100,
        reservations=second.reservations,
    )
    assert bound(third) == ["big"]
    assert sorted(p.node for p in placements(third, "big")) == ["n1", "n2"]
    assert third.reservations == []
    assert third.pending["small"].code == "InsufficientGPU"


def test_a_reservation_on_a_node_that_was_cordoned_moves_to_usable_nodes() -> None:
    first = decide(nodes=NODES, jobs=[BIG], running_jobs=BUSY, now=NOW)
    cordoned = [NODES[0].cordoned(), NODES[1], NODES[2]]
    second = decide(
        nodes=cordoned,
        jobs=[BIG],
        running_jobs=BUSY,
        now=NOW + 60,
        reservations=first.reservations,
    )
    assert reserved_nodes(second) == {"big": ["n2", "n3"]}
    assert second.reservations[0].due == T0 + 20_000


def test_a_job_in_the_way_with_no_expected_end_makes_the_start_unknown_and_stops_backfill() -> None:
    endless = [
        running("r1").on("n1", gpu_ids=range(8)),
        running("r3").on("n2", gpu_ids=range(4, 8)).ends(T0 + 13_000),
        running("r4").on("n3", gpu_ids=range(8)),
    ]
    decisions = decide(nodes=NODES, jobs=[BIG, SMALL.runtime(60)], running_jobs=endless, now=NOW)
    (reservation,) = decisions.reservations
    assert reservation.due is None
    assert "its start is unknown" in decisions.pending["big"].message
    assert bound(decisions) == []


def test_the_longest_waiting_jobs_get_the_reservations_up_to_the_limit() -> None:
    nodes = [node(f"n{i}").gpus(8) for i in range(1, 7)]
    busy = [running(f"r{i}").on(f"n{i}", gpu_ids=range(8)).ends(NOW + i * 100) for i in range(1, 7)]
    gangs = [
        job(f"g{i}").pods(1).gpus(8).seq(i).waiting_since(T0 + i * 60) for i in range(6, 0, -1)
    ]
    decisions = decide(nodes=nodes, jobs=gangs, running_jobs=busy, now=NOW)
    assert [r.job for r in decisions.reservations] == ["g1", "g2", "g3", "g4"]
    held = [sorted({p.node for p in r.placements}) for r in decisions.reservations]
    assert held == [["n1"], ["n2"], ["n3"], ["n4"]]
    assert decisions.pending["g5"].code == "InsufficientGPU"


def test_a_kept_reservation_for_a_job_that_changed_size_is_made_again() -> None:
    stale = Reservation("big", placements=(), due=NOW)
    decisions = decide(nodes=NODES, jobs=[BIG], running_jobs=BUSY, now=NOW, reservations=[stale])
    assert reserved_nodes(decisions) == {"big": ["n1", "n2"]}


def test_under_strict_fifo_a_job_past_its_bound_is_its_queues_head_and_blocks_the_rest() -> None:
    decisions = decide(
        nodes=NODES,
        jobs=[BIG, SMALL.runtime(60).priority(10)],
        running_jobs=BUSY,
        now=NOW,
        strict_fifo=True,
    )
    assert bound(decisions) == []
    blocked = decisions.pending["small"]
    assert blocked.code == "BlockedByQueueHead"
    assert blocked.message.endswith("its head big is pending (Reserved)")
