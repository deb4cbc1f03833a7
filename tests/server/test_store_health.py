"""A store that cannot write (here: SQLite's own "database or disk is full") turns the
API's writes into 503s with the cause, keeps reads working, shows in /healthz, and
recovers by itself once space returns."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.e2e.harness import wait_for
from tests.server.conftest import chatty_job
from tests.store.full_disk import disk_full, fill
from tidemill.server.runner import ServerRunner
from tidemill.store.store import PROBE_INTERVAL_S

API = "/api/v1"
FULL = "database or disk is full"


def test_a_full_store_is_a_503_for_writes_degraded_health_and_recovers_by_itself(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    http = httpx.Client(base_url=runner.url)
    http.post(f"{API}/jobs", json=chatty_job("ctr")).raise_for_status()
    big_job = chatty_job("big")
    big_job["spec"]["roles"]["worker"]["command"][-1] += " # " + "n" * 6000  # needs new pages

    with disk_full(runner.store):
        fill(runner.store)
        writes = [
            http.post(f"{API}/jobs", json=big_job),
            http.post(f"{API}/jobs/ctr/events", json={"reason": "Big", "message": "m" * 4000}),
            http.put(f"{API}/jobs/ctr/master-state", json={"state": {"blob": "s" * 8000}}),
        ]
        health = http.get("/healthz")
        reads = [http.get(f"{API}/jobs"), http.get(f"{API}/jobs/ctr"), http.get(f"{API}/events")]

        for response in writes:
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"] == "5"
            error = response.json()["error"]
            assert error == {
                "code": "StoreUnavailable",
                "message": f"the store cannot write: {FULL}",
                "errors": [],
            }
        assert health.status_code == 503
        assert health.json() == {"status": "degraded", "store": FULL}
        assert [r.status_code for r in reads] == [200, 200, 200]
        assert [j["name"] for j in reads[0].json()["items"]] == ["ctr"]

    wait_for(
        lambda: http.get("/healthz").status_code == 200,
        PROBE_INTERVAL_S + 5,
        "healthz ok once space returned",
    )
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.post(f"{API}/jobs", json=big_job).status_code == 201
    http.close()
