"""Data insight as the master keeps it: workers' counters summed per stage and source."""

from __future__ import annotations

from typing import Any

from tests.data.test_dispatch import dispatcher
from tidemill.data._progress import DataProgress
from tidemill.master.data_insight import FRESH_S, InsightBook


def counters(records: int, rate: float = 0.0, lag: int | None = None) -> dict[str, Any]:
    return {
        "records": records,
        "bytes": records * 10,
        "records_per_s": rate,
        "lag_records": lag,
        "lag_s": None if lag is None else lag / 100,
    }


def test_workers_add_up_and_a_replacement_process_keeps_what_its_replica_read() -> None:
    d = dispatcher()
    d.lease("worker-0", 1, 0, 0, "t", DataProgress().to_json(), now=100.0)
    book = InsightBook()
    book.report("worker-0", 0, {"t": counters(400, rate=50.0, lag=7)}, now=101.0)
    book.report("worker-1", 0, {"t": counters(300, rate=40.0, lag=3)}, now=101.0)
    book.report("worker-1", 0, {"t": counters(20, rate=10.0, lag=1)}, now=102.0)  # restarted

    source = book.view(d, now=102.0).stages[0].sources[0]

    assert source.records == 720 and source.bytes == 7200
    assert source.workers == {"worker-0": 400, "worker-1": 320}
    assert source.records_per_s == 60.0
    assert (source.lag_records, source.lag_s) == (8, 0.07)
    assert (source.shards_done, source.shards_in_flight, source.shards_pending) == (0, 1, 3)


def test_a_worker_that_stopped_reporting_no_longer_counts_in_rates_and_lag() -> None:
    d = dispatcher()
    d.lease("worker-0", 1, 0, 0, "t", DataProgress().to_json(), now=100.0)
    book = InsightBook()
    book.report("worker-0", 0, {"t": counters(400, rate=50.0, lag=7)}, now=100.0)
    source = book.view(d, now=100.0 + FRESH_S + 1).stages[0].sources[0]
    assert source.records == 400
    assert source.records_per_s == 0.0 and source.lag_records is None


def test_a_finished_stage_shows_its_mean_rate_and_no_lag() -> None:
    d = dispatcher()
    d.lease("worker-0", 1, 0, 0, "t", DataProgress().to_json(), now=100.0)
    d.lease("worker-0", 1, 1, 0, "u", None, now=104.0)
    book = InsightBook()
    book.report("worker-0", 0, {"t": counters(400, rate=50.0, lag=7)}, now=103.0)

    view = book.view(d, now=105.0)

    assert view.stage == "more"
    done, running = view.stages
    assert (done.state, running.state) == ("done", "running")
    assert done.sources[0].records_per_s == 100.0  # 400 records over the stage's 4 s
    assert done.sources[0].lag_records is None
    assert done.sources[0].shards_done == 4
