"""A job too big for what the cluster has free (10 cores where a 12-core job holds the
only node with that many) says why it waits, on its page and on the cluster
page; the cluster page charts use over time and shows queues and nodes."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import screenshot, sleeper
from tidemill.client import Client


def test_a_job_too_big_shows_why_it_is_pending(page: Any, start_server: Any) -> None:
    server = start_server()
    with Client(server.url) as client:
        client.submit(sleeper("trainer", namespace="ads", cpu=12, gpu=3, queue="ads"))
        client.submit(sleeper("notebook", namespace="research", cpu=1, queue="research"))
        client.submit(sleeper("huge", namespace="research", cpu=10, queue="research"))
        page.goto(f"{server.url}/#/jobs/research/huge")
        reason = page.wait_for_selector(".pending")
        text = reason.inner_text()
        assert "Why pending" in text and "10" in text, text
        screenshot(page, "pending")

        page.click("nav >> text=Cluster")
        page.wait_for_selector(".pending-list >> text=research/huge")
        assert "10" in page.inner_text("#pending")
        page.wait_for_function(
            "document.querySelector('#util-note').textContent.match(/^\\d\\d+ samples/)"
        )
        nodes = page.inner_text("#nodes")
        assert "gpu-1" in nodes and "A100" in nodes
        assert "ads" in page.inner_text("#queues")
        screenshot(page, "cluster")

        page.click("nav >> text=Jobs")
        page.wait_for_selector("#jobs >> text=huge")
        screenshot(page, "jobs")
        page.click("#jobs >> text=trainer")
        page.wait_for_selector(".job-head >> text=trainer")
        assert page.url.endswith("#/jobs/ads/trainer")
