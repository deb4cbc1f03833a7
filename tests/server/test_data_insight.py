"""Data insight saved by a job master, as GET /api/v1/jobs/{name} and /metrics show it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server.live import (
    INSIGHT,
    data_server,
    get_job,
    metric_samples,
    save_master_state,
)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with data_server(tmp_path_factory.mktemp("state")) as base:
        yield base


def labels(job: str, stage: str, source: str, **extra: str) -> tuple[tuple[str, str], ...]:
    chosen = {"namespace": "default", "job_name": job, "stage": stage, "source": source, **extra}
    return tuple(sorted(chosen.items()))


def test_get_returns_the_data_insight_the_master_saved(url: str) -> None:
    save_master_state(url, "ctr", {"epoch": 2, "data_insight": INSIGHT})

    view = get_job(url, "ctr")

    assert view["phase"] == "Pending"
    assert view["data"] == INSIGHT


def test_a_job_whose_master_saved_no_data_insight_has_data_null(url: str) -> None:
    save_master_state(url, "busy", {"epoch": 2, "step": 40})

    assert get_job(url, "busy")["data"] is None


@pytest.mark.parametrize(
    "malformed",
    [
        "not an object",
        {"stages": [{"name": "backfill"}]},
        {"stages": [{**INSIGHT["stages"][0], "sources": [{"name": "x", "records": "many"}]}]},
    ],
    ids=["a string", "a stage without index, state or epochs", "records that are not a number"],
)
def test_a_malformed_data_insight_leaves_data_null_and_the_rest_of_the_job_readable(
    url: str, malformed: object
) -> None:
    save_master_state(url, "ctr", {"data_insight": malformed})

    view = get_job(url, "ctr")

    assert view["data"] is None
    assert view["name"] == "ctr" and view["spec"]["spec"]["data"]["stages"][0]["name"] == "backfill"
    assert "tidemill_jobs" in httpx.get(f"{url}/metrics").text


def test_metrics_show_each_source_of_a_running_job_by_stage(url: str) -> None:
    save_master_state(url, "busy", {"data_insight": INSIGHT})

    samples = metric_samples(url, "tidemill_data_")

    backfill = labels("busy", "backfill", "ads.clicks")
    online = labels("busy", "online", "clicks")
    assert samples[("tidemill_data_records", backfill)] == 20000
    assert samples[("tidemill_data_records", online)] == 4100
    assert samples[("tidemill_data_bytes", backfill)] == 640000
    assert samples[("tidemill_data_records_per_second", backfill)] == 51234.5
    assert samples[("tidemill_data_records_per_second", online)] == 812.0
    assert samples[("tidemill_data_lag_records", online)] == 37
    assert samples[("tidemill_data_lag_seconds", online)] == 0.4
    assert ("tidemill_data_lag_records", backfill) not in samples
    assert ("tidemill_data_lag_seconds", backfill) not in samples
    shards = {
        (dict(key)["stage"], dict(key)["state"]): value
        for (name, key), value in samples.items()
        if name == "tidemill_data_shards"
    }
    assert shards == {
        ("backfill", "done"): 8,
        ("backfill", "in_flight"): 0,
        ("backfill", "pending"): 0,
        ("online", "done"): 0,
        ("online", "in_flight"): 2,
        ("online", "pending"): 0,
    }
    workers = {
        (dict(key)["stage"], dict(key)["worker"]): value
        for (name, key), value in samples.items()
        if name == "tidemill_data_worker_records"
    }
    assert workers == {
        ("backfill", "worker-0"): 10240,
        ("backfill", "worker-1"): 9760,
        ("online", "worker-0"): 2100,
        ("online", "worker-1"): 2000,
    }


def test_metrics_leave_out_jobs_not_running_and_jobs_without_data_insight(url: str) -> None:
    save_master_state(url, "ctr", {"data_insight": INSIGHT})
    save_master_state(url, "busy", {"epoch": 2})

    assert metric_samples(url, "tidemill_data_") == {}
    assert "tidemill_data_" not in httpx.get(f"{url}/metrics").text
