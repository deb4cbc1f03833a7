"""PS insight as the job master keeps it: each shard's STATS summed per table, rates from
counter deltas, and shards that are down or silent shown as unreachable (real PS servers
and real sockets for the poller)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import tidemill.master.ps_insight
from tests.e2e.harness import wait_for
from tidemill.api.status import PSInsightView
from tidemill.master.config import MasterConfig, MasterConfigError
from tidemill.master.ps_insight import PSInsightBook
from tidemill.master.ps_poller import PSStatsPoller
from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig

ADDRESSES = ["10.0.0.1:7000", "10.0.0.2:7000"]


def stats(
    rows: int = 0, pulled: int = 0, pushed: int = 0, step: int = 0, **more: Any
) -> dict[str, Any]:
    return {
        "rows": rows,
        "memory_bytes": rows * 64,
        "admitted": rows,
        "evicted": 0,
        "pulled_rows": pulled,
        "pushed_rows": pushed,
        "epoch": 0,
        "applied_step": step,
        "pulls": 0,
        "staleness_max_steps": 0,
        "staleness_mean_steps": 0.0,
        **more,
    }


def answer(index: int, **tables: dict[str, Any]) -> dict[str, Any]:
    return {"index": index, "tables": tables}


def test_rates_are_each_shards_counter_deltas_over_the_time_between_its_answers() -> None:
    book = PSInsightBook(ADDRESSES)
    book.answered(0, answer(0, user=stats(rows=100, pulled=500, pushed=400, step=7)), now=10.0)
    book.answered(1, answer(1, user=stats(rows=60, pulled=300, pushed=200, step=7)), now=10.5)
    book.answered(0, answer(0, user=stats(rows=120, pulled=900, pushed=600, step=9)), now=12.0)
    book.answered(1, answer(1, user=stats(rows=70, pulled=400, pushed=250, step=8)), now=13.0)

    [user] = book.view(now=13.0).tables

    assert (user.rows, user.memory_bytes, user.admitted) == (190, 190 * 64, 190)
    assert (user.pulled_rows, user.pushed_rows) == (1300, 850)
    assert user.pull_rows_per_s == 200.0 + 40.0  # 400 rows in 2 s, 100 rows in 2.5 s
    assert user.push_rows_per_s == 100.0 + 20.0
    assert user.shard_rows == [120, 70]
    assert user.applied_step == 8


def test_rows_evicted_under_memory_pressure_become_one_warning_per_shard_and_poll() -> None:
    book = PSInsightBook(ADDRESSES)
    book.answered(0, answer(0, user=stats(rows=90, row_budget=100, memory_evicted=0)), now=1.0)
    assert book.take_warnings() == []
    book.answered(0, answer(0, user=stats(rows=100, row_budget=100, memory_evicted=40)), now=3.0)
    book.answered(1, answer(1, user=stats(rows=10, row_budget=100, memory_evicted=0)), now=3.0)
    [(shard, message)] = book.take_warnings()
    assert shard == 0
    assert message.startswith(
        "PS replica 0: table 'user' reached the 100 rows its share of the replica's memory "
        "holds; evicted 40 least-used rows"
    )
    assert "resources.memory" in message
    assert book.take_warnings() == []


def test_the_first_answer_gives_totals_but_no_rate_yet() -> None:
    book = PSInsightBook(ADDRESSES[:1])
    book.answered(0, answer(0, user=stats(rows=5, pulled=50, pushed=50)), now=10.0)

    [user] = book.view(now=10.0).tables

    assert (user.rows, user.pull_rows_per_s, user.push_rows_per_s) == (5, 0.0, 0.0)


def test_a_shard_whose_counters_went_back_restarted_and_counts_in_rates_again_after() -> None:
    book = PSInsightBook(ADDRESSES[:1])
    book.answered(0, answer(0, user=stats(rows=50, pushed=1000)), now=10.0)
    book.answered(0, answer(0, user=stats(rows=2, pushed=30)), now=12.0)  # a new process

    restarted = book.view(now=12.0).tables[0]
    book.answered(0, answer(0, user=stats(rows=4, pushed=70)), now=14.0)
    later = book.view(now=14.0).tables[0]

    assert (restarted.rows, restarted.push_rows_per_s) == (2, 0.0)
    assert (later.rows, later.push_rows_per_s) == (4, 20.0)


def test_an_unreachable_shard_is_named_with_its_reason_and_left_out_of_the_totals() -> None:
    book = PSInsightBook(ADDRESSES)
    book.answered(0, answer(0, user=stats(rows=10, pushed=0)), now=10.0)
    book.answered(1, answer(1, user=stats(rows=90, pushed=0)), now=10.0)
    book.answered(0, answer(0, user=stats(rows=12, pushed=40)), now=12.0)
    book.failed(1, "no STATS answer within 2 s")

    view = book.view(now=12.0)

    assert [(s.index, s.address, s.reachable, s.error) for s in view.shards] == [
        (0, "10.0.0.1:7000", True, ""),
        (1, "10.0.0.2:7000", False, "no STATS answer within 2 s"),
    ]
    assert [s.index for s in view.unreachable] == [1]
    [user] = view.tables
    assert (user.rows, user.push_rows_per_s, user.shard_rows) == (12, 20.0, [12, None])


def test_staleness_is_the_worst_pull_and_the_mean_over_every_shards_pulls() -> None:
    book = PSInsightBook(ADDRESSES)
    book.answered(
        0, answer(0, t=stats(pulls=30, staleness_max_steps=2, staleness_mean_steps=1.0)), 1
    )
    book.answered(
        1, answer(1, t=stats(pulls=10, staleness_max_steps=5, staleness_mean_steps=3.0)), 1
    )

    [table] = book.view(now=1.0).tables

    assert (table.staleness_max_steps, table.staleness_mean_steps) == (5, 1.5)


def test_tables_are_listed_by_name_even_when_shards_answer_in_another_order() -> None:
    book = PSInsightBook(ADDRESSES[:1])
    book.answered(0, answer(0, user=stats(rows=1), item=stats(rows=2), ad=stats(rows=3)), 1.0)

    assert [t.name for t in book.view(now=1.0).tables] == ["ad", "item", "user"]


def test_no_shard_polled_yet_shows_every_shard_unreachable_and_no_tables() -> None:
    view = PSInsightBook(ADDRESSES).view(now=1.0)

    assert [s.reachable for s in view.shards] == [False, False] and view.tables == []


# --- the poller against real servers ----------------------------------------------------

CONFIG = PSConfig((TableConfig("user", 4, OptimizerConfig("sgd", lr=0.1), 0.01, 1),))


@pytest.fixture
def live() -> Iterator[PSServer]:
    with PSServer(CONFIG, index=0) as server:
        yield server


@pytest.fixture
def silent() -> Iterator[tuple[str, int]]:
    """A port that accepts connections and never answers (a hung replica)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[:2]


@pytest.fixture
def closed() -> tuple[str, int]:
    """A port nothing listens on (a replica that is down)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return listener.getsockname()[:2]


def train(client: PSClient, steps: int, ids: list[int]) -> None:
    for _ in range(steps):
        client.pull("user", ids)
        client.push("user", ids, np.ones((len(ids), 4), np.float32))
        client.advance()


async def poll_while_counting_ticks(poller: PSStatsPoller) -> tuple[PSInsightView, float, int]:
    """One poll; how long it took and how often a 10 ms timer fired meanwhile."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    view = await poller.poll_once()
    took = time.monotonic() - started
    ticker.cancel()
    return view, took, ticks


def test_the_poller_reads_a_live_shard_and_a_dead_or_silent_one_neither_stalls_the_loop(
    live: PSServer, silent: tuple[str, int], closed: tuple[str, int]
) -> None:
    poller = PSStatsPoller([live.address, closed, silent], timeout_s=0.5)

    async def scenario() -> tuple[PSInsightView, float, int, PSInsightView]:
        with PSClient(CONFIG, [live.address]) as client:
            train(client, 3, [1, 2, 3, 4])
            first, took, ticks = await poll_while_counting_ticks(poller)
            train(client, 5, [1, 2, 3, 4, 5, 6])
            await asyncio.sleep(0.2)
            second = await poller.poll_once()
        return first, took, ticks, second

    first, took, ticks, second = asyncio.run(scenario())

    assert [s.reachable for s in first.shards] == [True, False, False]
    assert "within 0.5 s" in first.shards[2].error
    assert first.shards[1].error  # connection refused, in the OS's words
    assert took < 1.5, f"one poll took {took:.2f} s with a 0.5 s timeout"
    assert ticks >= 10, f"the event loop ran its timer only {ticks} times in {took:.2f} s"
    [user] = first.tables
    assert (user.rows, user.pushed_rows, user.shard_rows) == (4, 12, [4, None, None])
    [user] = second.tables
    assert (user.rows, user.pushed_rows) == (6, 42)
    assert user.push_rows_per_s > 0 and user.pull_rows_per_s > 0


def test_a_poll_leaves_no_connection_open_so_a_sigtermed_replica_can_drain(live: PSServer) -> None:
    poller = PSStatsPoller([live.address], timeout_s=2.0)

    for _ in range(3):
        view = asyncio.run(poller.poll_once())

    assert view.shards[0].reachable
    wait_for(lambda: live.connections == 0, timeout_s=5, what="the poll connections to close")


def test_a_shard_that_comes_back_is_reachable_on_the_next_poll(closed: tuple[str, int]) -> None:
    async def scenario() -> tuple[PSInsightView, PSInsightView]:
        host, port = closed
        poller = PSStatsPoller([(host, port)], timeout_s=0.5)
        down = await poller.poll_once()
        with PSServer(CONFIG, index=0, host=host, port=port):
            back = await poller.poll_once()
        return down, back

    down, back = asyncio.run(scenario())

    assert [s.reachable for s in down.shards] == [False]
    assert [s.reachable for s in back.shards] == [True] and back.tables[0].name == "user"


def test_the_master_reads_the_ps_replicas_from_its_environment() -> None:
    base = {"TIDEMILL_JOB": "ads/ctr", "TIDEMILL_MASTER_PORT": "29400"}

    config = MasterConfig.from_env(
        {
            **base,
            "TIDEMILL_PS_ADDRS": "10.0.0.1:7000,[::1]:7001",
            "TIDEMILL_PS_STATS_INTERVAL_S": "5",
        }
    )

    assert config.ps_addresses == (("10.0.0.1", 7000), ("::1", 7001))
    assert config.ps_stats_interval_s == 5.0
    assert MasterConfig.from_env(base).ps_addresses == ()
    with pytest.raises(MasterConfigError, match=r"TIDEMILL_PS_ADDRS: 'ps-0' is not host:port"):
        MasterConfig.from_env({**base, "TIDEMILL_PS_ADDRS": "10.0.0.1:7000,ps-0"})


def test_the_docstring_example_runs() -> None:
    import doctest

    result = doctest.testmod(tidemill.master.ps_insight)
    assert result.attempted > 0 and result.failed == 0
