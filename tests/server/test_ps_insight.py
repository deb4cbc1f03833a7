"""PS insight saved by a job master, as GET /api/v1/jobs/{name} and /metrics show it."""

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
from tests.server.ps_sample import PS_INSIGHT


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with data_server(tmp_path_factory.mktemp("state")) as base:
        yield base


def labels(job: str, **chosen: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"namespace": "default", "job_name": job, **chosen}.items()))


def test_get_returns_the_ps_insight_the_master_saved_next_to_the_data_insight(url: str) -> None:
    save_master_state(url, "busy", {"data_insight": INSIGHT, "ps_insight": PS_INSIGHT})

    view = get_job(url, "busy")

    assert view["ps"] == PS_INSIGHT
    assert view["data"] == INSIGHT


def test_a_job_whose_master_saved_no_ps_insight_has_ps_null(url: str) -> None:
    save_master_state(url, "busy", {"data_insight": INSIGHT})

    assert get_job(url, "busy")["ps"] is None


def test_a_malformed_ps_insight_leaves_ps_null_and_the_rest_of_the_job_readable(url: str) -> None:
    broken = {**PS_INSIGHT, "tables": [{"name": "item", "rows": "many"}]}
    save_master_state(url, "busy", {"data_insight": INSIGHT, "ps_insight": broken})

    view = get_job(url, "busy")

    assert view["ps"] is None and view["data"] == INSIGHT
    assert metric_samples(url, "tidemill_ps_") == {}


def test_metrics_show_each_table_of_a_running_job_and_its_shards_by_reachability(
    url: str,
) -> None:
    save_master_state(url, "busy", {"ps_insight": PS_INSIGHT})

    samples = metric_samples(url, "tidemill_ps_")

    item, user = labels("busy", table="item"), labels("busy", table="user")
    assert samples[("tidemill_ps_rows", item)] == 3000
    assert samples[("tidemill_ps_rows", user)] == 40
    assert samples[("tidemill_ps_memory_bytes", item)] == 1572864
    assert samples[("tidemill_ps_admitted_rows", item)] == 3500
    assert samples[("tidemill_ps_evicted_rows", item)] == 500
    assert samples[("tidemill_ps_pull_rows_per_second", item)] == 1234.5
    assert samples[("tidemill_ps_push_rows_per_second", item)] == 812.0
    assert samples[("tidemill_ps_staleness_max_steps", item)] == 3
    assert samples[("tidemill_ps_staleness_mean_steps", item)] == 0.42
    assert samples[("tidemill_ps_shard_rows_skew", item)] == pytest.approx(2000 / 1500)
    assert samples[("tidemill_ps_shard_rows_skew", user)] == 1.0
    assert samples[("tidemill_ps_shards", labels("busy", state="reachable"))] == 2
    assert samples[("tidemill_ps_shards", labels("busy", state="unreachable"))] == 1


def test_metrics_leave_out_jobs_that_are_not_running(url: str) -> None:
    save_master_state(url, "busy", {"epoch": 1})
    save_master_state(url, "ctr", {"ps_insight": PS_INSIGHT})

    assert metric_samples(url, "tidemill_ps_") == {}
    assert "tidemill_ps_" not in httpx.get(f"{url}/metrics").text
