"""A job's page suspends, resumes and deletes the job with the tab's token, as the CLI
would; a token that may not shows the server's refusal and changes nothing."""

from __future__ import annotations

from typing import Any

from tests.dashboard.conftest import screenshot, sleeper
from tests.e2e.harness import wait_for
from tidemill.client import Client


def phase_of(client: Client, name: str) -> str | None:
    found = [job.phase for job in client.jobs(namespace="ads") if job.name == name]
    return found[0] if found else None


def open_running_job(page: Any, client: Client, url: str, job: str, role: str) -> None:
    """Submit ``ads/job``, wait for it to run and open its page signed in with a new
    token of ``role`` named after it."""
    client.submit(sleeper(job, namespace="ads", queue="ads"))
    token = client.create_token("ads", role=role, name=f"{job}-{role}").token
    wait_for(lambda: phase_of(client, job) == "Running", 30, f"{job} to run")
    page.goto(f"{url}/#token={token}")
    page.goto(f"{url}/#/jobs/ads/{job}")
    page.wait_for_selector(".job-head .badge.phase-Running")


def test_an_editor_suspends_resumes_and_deletes_a_job_from_its_page(
    page: Any, start_server: Any
) -> None:
    server = start_server(auth=True)
    admin = server.admin_token_file.read_text().strip()
    with Client(server.url, token=admin) as client:
        open_running_job(page, client, server.url, "mine", "editor")
        assert page.is_disabled("button:has-text('Resume')")
        page.click("button:has-text('Suspend')")
        page.wait_for_selector(".job-head .badge.phase-Suspended", timeout=60_000)
        assert phase_of(client, "mine") == "Suspended"
        assert not client.get("mine", "ads").replicas
        assert page.is_disabled("button:has-text('Suspend')")
        screenshot(page, "suspended")

        page.click("button:has-text('Resume')")
        page.wait_for_selector(".job-head .badge.phase-Running", timeout=60_000)
        assert phase_of(client, "mine") == "Running"
        resumed = [e.message for e in client.job_events("mine", "ads") if e.reason == "Resumed"]
        assert resumed and "token 'mine-editor'" in resumed[-1], resumed

        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click("button:has-text('Delete')")
        assert phase_of(client, "mine") == "Running", "a dismissed confirmation deletes nothing"
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Delete')")
        page.wait_for_url("**/#/")
        wait_for(lambda: phase_of(client, "mine") is None, 30, "mine to be deleted")


def test_a_viewer_is_shown_the_refusal_and_the_job_runs_on(page: Any, start_server: Any) -> None:
    server = start_server(auth=True)
    admin = server.admin_token_file.read_text().strip()
    with Client(server.url, token=admin) as client:
        open_running_job(page, client, server.url, "theirs", "viewer")
        page.click("button:has-text('Suspend')")
        refusal = page.wait_for_selector(".action-state.warn").inner_text()

        assert refusal.startswith("cannot suspend: ") and "theirs-viewer" in refusal, refusal
        assert "viewer" in refusal and "suspend jobs" in refusal, refusal
        assert phase_of(client, "theirs") == "Running"
        assert "Suspending" not in [e.reason for e in client.job_events("theirs", "ads")]
