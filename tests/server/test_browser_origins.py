"""The server refuses what only a hostile web page would send: a change requested from
another origin (cross-site request forgery) and, on loopback, a request addressed to a
name that is not this machine's (DNS rebinding). The CLI and the SDK send neither."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import script_job
from tidemill.server.origins import UnusableHostName, answered_names, host_name, same_origin
from tidemill.server.runner import ServerRunner

JOB = json.dumps(script_job("probe", "pass", cpu=0.1))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerRunner]:
    runner = ServerRunner(tmp_path, port=0, allow_hosts=["tidemill.example"])
    runner.start()
    yield runner
    with httpx.Client(base_url=runner.url) as http:
        for job in http.get("/api/v1/jobs").json()["items"]:
            http.delete(f"/api/v1/jobs/{job['name']}")
    runner.stop()


def names(runner: ServerRunner) -> list[str]:
    return [job["name"] for job in httpx.get(f"{runner.url}/api/v1/jobs").json()["items"]]


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8500", "127.0.0.1:8500", True),
        ("http://LOCALHOST:8500", "localhost:8500", True),
        ("https://tm.example", "tm.example:443", True),
        ("http://tm.example", "tm.example", True),
        ("http://[::1]:8500", "[::1]:8500", True),
        ("http://127.0.0.1:8501", "127.0.0.1:8500", False),
        ("https://tm.example", "tm.example:80", False),
        ("http://evil.example", "127.0.0.1:8500", False),
        ("null", "127.0.0.1:8500", False),
        ("file://", "127.0.0.1:8500", False),
    ],
)
def test_same_origin_compares_scheme_defaulted_authorities(
    origin: str, host: str, same: bool
) -> None:
    assert same_origin(origin, host) is same


def test_host_names_lose_their_port_and_brackets() -> None:
    assert host_name("LocalHost:8500") == "localhost"
    assert host_name("[::1]:8500") == "::1"
    assert host_name("tm.example") == "tm.example"
    assert host_name("localhost.:8500") == "localhost"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:1"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "{url}", "Sec-Fetch-Site": "cross-site"},
    ],
    ids=[
        "another site",
        "an opaque origin",
        "another port",
        "cross-site",
        "same-site",
        "cross-site, whatever the origin says",
    ],
)
def test_a_change_asked_from_another_origin_is_refused_before_it_is_read(
    server: ServerRunner, headers: dict[str, str]
) -> None:
    headers = {name: value.format(url=server.url) for name, value in headers.items()}
    with httpx.Client(base_url=server.url, headers=headers) as http:
        submitted = http.post("/api/v1/jobs", content=JOB, headers={"Content-Type": "text/plain"})
        huge = http.post("/api/v1/jobs", content=b"x" * (8 << 20))
        deleted = http.delete("/api/v1/jobs/anything")
        listed = http.get("/api/v1/jobs")

    for refused in (submitted, huge, deleted):
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "CrossSiteRequest"
        assert "another site may not change anything" in error["message"]
        assert "the tidemill CLI, the Python SDK" in error["message"]
    assert "POST of '/api/v1/jobs' from" in submitted.json()["error"]["message"]
    assert listed.status_code == 200, "reading is left to the browser's same-origin policy"
    assert names(server) == []


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_collecting_stacks_acts_on_a_job_so_another_sites_page_may_not_ask_for_it(
    server: ServerRunner, method: str
) -> None:
    with httpx.Client(base_url=server.url) as http:
        assert http.post("/api/v1/jobs", content=JOB).status_code == 201
        foreign = http.request(
            method, "/api/v1/jobs/probe/stacks", headers={"Sec-Fetch-Site": "cross-site"}
        )
        old_browser = http.request(
            method, "/api/v1/jobs/probe/stacks", headers={"Origin": "http://evil.example"}
        )
        own = http.request(
            method, "/api/v1/jobs/probe/stacks", headers={"Sec-Fetch-Site": "same-origin"}
        )
        logs = http.get("/api/v1/jobs/probe/logs", headers={"Sec-Fetch-Site": "cross-site"})

    for refused in (foreign, old_browser):
        assert refused.status_code == 403
        if method == "GET":
            error = refused.json()["error"]
            assert error["code"] == "CrossSiteRequest"
            assert "GET of '/api/v1/jobs/probe/stacks' from" in error["message"]
            assert "act on its jobs" in error["message"]
    assert own.status_code != 403, "the dashboard's own button collects stacks"
    assert logs.status_code != 403, "other reads change nothing"


def test_the_cli_the_sdk_and_the_servers_own_pages_may_change_jobs(server: ServerRunner) -> None:
    own = {"Origin": server.url, "Sec-Fetch-Site": "same-origin"}
    typed = {"Sec-Fetch-Site": "none"}
    old_browser = {"Origin": server.url}
    # A proxy that rewrote Host: the browser still says the page is this site's.
    proxied = {"Origin": "https://tidemill.corp.example", "Sec-Fetch-Site": "same-origin"}
    with httpx.Client(base_url=server.url) as http:
        for headers in ({}, own, typed, old_browser, proxied):
            submitted = http.post("/api/v1/jobs", content=JOB, headers=headers)
            assert submitted.status_code == 201, (headers, submitted.text)
            assert http.delete("/api/v1/jobs/probe", headers=headers).status_code == 200


def test_no_answer_may_be_framed_and_the_dashboard_runs_only_its_own_scripts(
    server: ServerRunner,
) -> None:
    with httpx.Client(base_url=server.url) as http:
        answers = [http.get("/"), http.get("/api/v1/jobs"), http.get("/docs"), http.get("/nope")]
        answers.append(http.post("/api/v1/jobs", headers={"Origin": "http://evil.example"}))

    for answer in answers:
        assert answer.headers["x-frame-options"] == "DENY", answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
    policy = answers[0].headers["content-security-policy"]
    assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy


@pytest.mark.parametrize(
    "host",
    ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "127.0.0.2", "tidemill.example:{port}"],
)
def test_loopback_names_and_allowed_ones_are_answered(server: ServerRunner, host: str) -> None:
    response = httpx.get(
        f"{server.url}/api/v1/jobs", headers={"Host": host.format(port=server.port)}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("host", "hint"),
    [
        ("rebound.example:{port}", "--allow-host rebound.example"),
        ("192.168.1.20:{port}", "--allow-host 192.168.1.20"),
        ("x" * 10_000, "--allow-host NAME"),
    ],
)
@pytest.mark.parametrize("path", ["/", "/api/v1/jobs", "/healthz"])
def test_a_name_rebound_to_this_machine_is_refused_with_a_short_message(
    server: ServerRunner, host: str, hint: str, path: str
) -> None:
    response = httpx.get(f"{server.url}{path}", headers={"Host": host.format(port=server.port)})

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "ForeignHost"
    assert "DNS rebinding" in error["message"] and error["message"].endswith(hint)
    assert len(error["message"]) < 500


def test_a_server_beyond_loopback_answers_every_name_yet_refuses_foreign_changes(
    tmp_path: Path,
) -> None:
    runner = ServerRunner(tmp_path, host="0.0.0.0", port=0, auth=True)
    url = f"http://127.0.0.1:{runner.port}"
    runner.start()
    try:
        by_name = httpx.get(f"{url}/healthz", headers={"Host": "tidemill.corp.example"})
        foreign = httpx.post(
            f"{url}/api/v1/jobs", content=JOB, headers={"Origin": "https://evil.example"}
        )
    finally:
        runner.stop()

    assert by_name.status_code == 200
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "CrossSiteRequest"


@pytest.mark.parametrize(
    ("host", "allowed", "problem"),
    [
        ("127.0.0.1", ["http://tm.example"], "'http://tm.example' is not a DNS name"),
        ("127.0.0.1", ["tm.example:8500"], "no port or scheme"),
        ("127.0.0.1", ["bad name"], "is not a DNS name"),
        ("0.0.0.0", ["tm.example"], "--allow-host is for a server on loopback"),
    ],
)
def test_an_allowed_name_that_cannot_work_is_refused_before_anything_starts(
    tmp_path: Path, host: str, allowed: list[str], problem: str
) -> None:
    with pytest.raises(UnusableHostName) as refused:
        ServerRunner(tmp_path / "state", host=host, port=0, auth=True, allow_hosts=allowed)
    assert problem in str(refused.value)
    assert not (tmp_path / "state").exists()
    assert answered_names("::1", []) == {"localhost", "::1"}


def test_the_name_replicas_are_told_to_use_is_answered_too() -> None:
    advertised = answered_names("127.0.0.1", ["a.example"], "http://Tunnel.example:9000/tm")
    assert advertised == {"localhost", "127.0.0.1", "a.example", "tunnel.example"}
    assert answered_names("0.0.0.0", [], "http://tidemill.svc:8500") is None
