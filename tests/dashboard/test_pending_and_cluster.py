"""A job too big for what the cluster has free (10 cores where a 12-core job holds the
only node with that many) says why it waits, on its page and on the cluster
page; the cluster page charts use over time and shows queues and nodes; the jobs page
counts a suspended job in its own tile, and every job where it shows the newest."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.dashboard.conftest import screenshot, sleeper
from tests.server.live import DATA, INSIGHT
from tidemill.client import Client


def test_a_job_too_big_shows_why_it_is_pending(page: Any, start_server: Any) -> None:
    server = start_server()
    with Client(server.url) as client:
        client.submit(sleeper("trainer", namespace="ads", cpu=12, gpu=3, queue="ads"))
        client.submit(sleeper("notebook", namespace="research", cpu=1, queue="research"))
        client.submit(sleeper("huge", namespace="research", cpu=10, queue="research"))
        client.submit(sleeper("sweep", namespace="research", queue="research", suspend=True))
        page.goto(f"{server.url}/#/jobs/research/huge")
        reason = page.wait_for_selector(".pending")
        text = reason.inner_text()
        assert "Why pending" in text and "10" in text, text
        screenshot(page, "pending")

        page.click("nav >> text=Cluster")
        page.wait_for_selector(".pending-list >> text=research/huge")
        assert "10" in page.inner_text("#pending")
        page.wait_for_function(
            "() => document.querySelector('#util-note').textContent.match(/^\\d\\d+ samples/)"
        )
        nodes = page.inner_text("#nodes")
        assert "gpu-1" in nodes and "A100" in nodes
        assert "ads" in page.inner_text("#queues")
        # research runs notebook, waits with huge and has sweep suspended
        research = page.inner_text("#queues tr:has-text('research')").split("\t")
        assert research[3].strip() == "1" and research[4].split() == ["1", "1", "suspended"]
        screenshot(page, "cluster")

        page.click("nav >> text=Jobs")
        page.wait_for_selector("#jobs >> text=huge")
        assert page.inner_text(".tile.phase-Suspended").split() == ["1", "suspended"]
        screenshot(page, "jobs")
        page.click(".tile.phase-Suspended")
        page.wait_for_function("() => document.querySelectorAll('#jobs tr').length === 1")
        shown = page.inner_text("#jobs")
        assert "research/sweep" in shown and "Suspended" in shown, shown
        page.click(".tile.phase-Suspended")
        page.click("#jobs >> text=trainer")
        page.wait_for_selector(".job-head >> text=trainer")
        assert page.url.endswith("#/jobs/ads/trainer")


def test_data_progress_per_stage_and_source(page: Any, start_server: Any) -> None:
    """What a job master saves about its data, through the REST call it makes (as
    tests/server/live.py does): each stage's sources with records/s, lag and shards."""
    server = start_server()
    with Client(server.url) as client:
        client.submit(sleeper("trainer", namespace="ads", cpu=12, queue="ads"))
        client.submit(sleeper("ctr", namespace="ads", cpu=10, queue="ads", data=DATA))
    saved = httpx.put(
        f"{server.url}/api/v1/jobs/ctr/master-state?namespace=ads",
        json={"state": {"data_insight": INSIGHT}},
    )
    assert saved.status_code == 200, saved.text

    page.goto(f"{server.url}/#/jobs/ads/ctr")
    page.wait_for_selector("#data .stage >> nth=1")
    text = page.inner_text("#data")
    assert "backfill" in text and "online" in text and "running" in text, text
    assert "ads.clicks" in text and "51.2k" in text and "812" in text, text
    assert "37 rec · 0.4s" in text and "8/8" in text, text


def test_the_jobs_page_shows_the_newest_500_and_counts_every_job(
    page: Any, start_server: Any
) -> None:
    """A server holding more jobs than the page shows: the tiles count all of them, the
    table holds the newest 500 (newest first), and a note says so."""
    server = start_server()

    def submit(first: int) -> None:
        with Client(server.url) as client:
            for i in range(first, 502, 4):
                client.submit(sleeper(f"held-{i:03}", suspend=True))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(submit, range(4)))
    with Client(server.url) as client:
        client.submit(sleeper("newest", suspend=True))

    page.goto(f"{server.url}/#/jobs")
    page.wait_for_selector("#jobs >> text=newest")
    assert page.inner_text(".tile >> nth=0").split() == ["503", "jobs"]
    assert page.inner_text(".tile.phase-Suspended").split() == ["503", "suspended"]
    rows = page.query_selector_all("#jobs tr")
    assert len(rows) == 500 and "default/newest" in rows[0].inner_text()
    note = "the newest 500 of 503 jobs (tidemill jobs lists them all)"
    assert page.inner_text("#jobs-note") == note
    page.click(".tile.phase-Suspended")
    page.wait_for_selector("#jobs-note >> text=of 503 suspended jobs")
    page.click(".tile.phase-Running")
    page.wait_for_selector("#jobs >> text=no job matches the filter")
    assert page.inner_text("#jobs-note") == ""
