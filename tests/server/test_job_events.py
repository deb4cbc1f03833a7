"""Events a job's processes post are bounded per job, and go with their job."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from tests.e2e.harness import wait_for
from tests.server.conftest import chatty_job
from tidemill.client import Client
from tidemill.server.limits import EVENT_BURST
from tidemill.server.runner import ServerRunner

EVENTS = "/api/v1/jobs/{}/events"


def post_until_refused(http: httpx.Client, name: str, most: int) -> tuple[int, httpx.Response]:
    """POST events as fast as possible; how many were taken, and the first refusal."""
    for accepted in range(most):
        response = http.post(EVENTS.format(name), json={"reason": "Tick", "message": str(accepted)})
        if response.status_code != 201:
            return accepted, response
    raise AssertionError(f"all {most} events were accepted")


def test_a_job_posting_events_too_fast_is_told_when_to_retry_and_others_are_not_slowed(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(chatty_job("noisy"))
        client.submit(chatty_job("calm"))

    with httpx.Client(base_url=runner.url) as http:
        accepted, refused = post_until_refused(http, "noisy", 10 * EVENT_BURST)
        calm = http.post(EVENTS.format("calm"), json={"reason": "Tick", "message": "one"})
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        time.sleep(retry_after)
        again = http.post(EVENTS.format("noisy"), json={"reason": "Tick", "message": "later"})

    assert accepted >= EVENT_BURST
    error = refused.json()["error"]
    assert error["code"] == "TooManyRequests"
    assert "job default/noisy posts events faster than 20/s (bursts of 100)" in error["message"]
    assert retry_after >= 1
    assert calm.status_code == 201
    assert again.status_code == 201


def test_a_page_polling_a_jobs_events_gets_only_those_after_the_last_it_saw(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(chatty_job("ctr"))
        wait_for(lambda: client.get("ctr").phase == "Running", 30, "ctr running")

    with httpx.Client(base_url=runner.url) as http:
        seen = http.get(EVENTS.format("ctr")).json()["items"]
        last = seen[-1]["id"]
        http.post(
            EVENTS.format("ctr"), json={"reason": "Checkpoint", "message": "step 500"}
        ).raise_for_status()
        fresh = http.get(EVENTS.format("ctr"), params={"since": last}).json()["items"]
        first = http.get(EVENTS.format("ctr"), params={"limit": 1}).json()["items"]

    assert [e["reason"] for e in seen][:1] == ["Submitted"]
    assert ("Checkpoint", "step 500") in [(e["reason"], e["message"]) for e in fresh]
    assert all(e["id"] > last for e in fresh), fresh
    assert first == seen[:1]


def test_a_deleted_job_takes_its_events_and_a_new_one_of_that_name_starts_clean(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        first = client.submit(chatty_job("ctr"))
        httpx.post(
            f"{runner.url}{EVENTS.format('ctr')}", json={"reason": "Checkpoint", "message": "old"}
        ).raise_for_status()
        wait_for(lambda: client.get("ctr").phase == "Running", 30, "ctr running")
        client.delete("ctr")

        second = client.submit(chatty_job("ctr"))
        events = client.job_events("ctr")
        everything = client.events(job="default/ctr")

    assert second.uid != first.uid
    for seen in (events, everything):
        reasons = [e.reason for e in seen]
        assert reasons[0] == "Submitted", reasons
        assert "Checkpoint" not in reasons and "Deleted" not in reasons, reasons


def test_a_job_removed_after_its_ttl_leaves_no_events_but_a_cluster_notice_of_removal(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    job = chatty_job("brief")
    job["spec"]["ttlSecondsAfterFinished"] = 0
    job["spec"]["roles"]["worker"]["command"] = ["true"]
    with Client(runner.url) as client:
        client.submit(job)
        wait_for(lambda: not client.jobs(), 30, "brief removed after it finished")
        left = client.events(job="default/brief")
        notices = [e.message for e in client.events() if e.reason == "Deleted"]

    assert left == []
    assert notices == ["job default/brief removed 0s after it finished (ttlSecondsAfterFinished)"]


def test_newest_gives_the_last_events_oldest_first_and_since_still_applies(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(chatty_job("ctr"))
    with httpx.Client(base_url=runner.url) as http:
        for n in range(30):
            posted = http.post(EVENTS.format("ctr"), json={"reason": "Tick", "message": str(n)})
            assert posted.status_code == 201
        query = {"job": "default/ctr", "limit": 5}
        first = http.get("/api/v1/events", params=query).json()["items"]
        last = http.get("/api/v1/events", params={**query, "newest": "true"}).json()["items"]
        ticks = [e for e in last if e["reason"] == "Tick"]
        after = http.get(
            "/api/v1/events", params={**query, "newest": "true", "since": last[-1]["id"]}
        ).json()["items"]

    assert first[0]["reason"] == "Submitted"
    assert [e["message"] for e in ticks][-3:] == ["27", "28", "29"]
    assert [e["id"] for e in last] == sorted(e["id"] for e in last) and len(last) == 5
    # Only what came after the last one seen: no tick (the job's own lifecycle events
    # may still arrive while the test reads).
    assert all(e["id"] > last[-1]["id"] and e["reason"] != "Tick" for e in after)
