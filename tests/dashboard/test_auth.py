"""With tokens on: the dashboard asks for a token, keeps it for the tab, and a job the
token may not read shows the server's 403 message, not an empty page."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import screenshot, sleeper
from tidemill.client import Client


def test_token_login_and_a_job_of_another_tenant(page: Any, start_server: Any) -> None:
    server = start_server(auth=True)
    admin = server.admin_token_file.read_text().strip()
    with Client(server.url, token=admin) as client:
        client.submit(sleeper("mine", namespace="ads", queue="ads"))
        client.submit(sleeper("theirs", namespace="research", queue="research"))
        viewer = client.create_token("ads", role="viewer", name="alice").token

    page.goto(f"{server.url}/#/jobs/ads/mine")
    page.wait_for_selector("form.login")
    page.fill("input[name=token]", "tm_not-a-token")
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("form.login .error:not(:empty)")
    screenshot(page, "login")

    page.fill("input[name=token]", viewer)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector(".job-head >> text=mine")
    assert page.url.endswith("#/jobs/ads/mine")
    assert page.evaluate("sessionStorage.getItem('tidemill-token')") == viewer

    page.click("nav >> text=Jobs")
    page.wait_for_selector("#jobs >> text=mine")
    assert "theirs" not in page.inner_text("#jobs")

    page.goto(f"{server.url}/#/jobs/research/theirs")
    notice = page.wait_for_selector(".notice")
    text = notice.inner_text()
    assert "Not allowed" in text and "research" in text, text
    screenshot(page, "forbidden")
