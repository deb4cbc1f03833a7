"""Bad requests get a 4xx that names the problem, never a 500, and the connection they
came on keeps working. Only a bug is a 500, with an incident id the log repeats."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.server.conftest import chatty_job
from tidemill.api.limits import INT64_MAX
from tidemill.server.limits import BODY_LIMIT_BYTES, JSON_DEPTH_MAX
from tidemill.server.runner import ServerRunner

API = "/api/v1"


def errors_of(response: httpx.Response) -> list[dict[str, str]]:
    body = response.json()
    assert set(body) == {"error"}, body
    return list(body["error"]["errors"])


def raw_request(url: str, head: bytes, body_chunks: list[bytes]) -> bytes:
    """Send a hand-made request (stopping when the server closes), return what came back."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port or 80), timeout=10) as sock:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed without reading the rest: as it should
        received = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            received += data
    return received


@pytest.fixture
def runner(start_runner: Callable[..., ServerRunner]) -> ServerRunner:
    runner = start_runner()
    httpx.post(f"{runner.url}{API}/jobs", json=chatty_job("ctr")).raise_for_status()
    return runner


def test_a_declared_oversized_body_is_refused_before_any_of_it_is_read(
    runner: ServerRunner,
) -> None:
    head = (
        f"POST {API}/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\n"
        f"Content-Length: {1 << 30}\r\n\r\n"
    ).encode()

    answer = raw_request(runner.url, head, [b"x" * 65536])

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in answer.lower()
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "TooLarge"
    assert f"{BODY_LIMIT_BYTES} bytes (1 MiB)" in body["error"]["message"]


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(runner: ServerRunner) -> None:
    head = (
        f"POST {API}/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"# " + b"x" * 65534
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"

    # 64 MiB offered; the server stops reading after 1 MiB and closes.
    answer = raw_request(runner.url, head, [chunk] * 1024)

    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"1 MiB" in answer
    assert httpx.get(f"{runner.url}/healthz").json() == {"status": "ok"}


def test_a_content_length_that_lies_low_reads_no_more_than_it_says(runner: ServerRunner) -> None:
    head = (
        f"POST {API}/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\n"
        "Content-Length: 10\r\n\r\n"
    ).encode()

    answer = raw_request(runner.url, head, [b"kind: Job\n" + b"y" * (2 * BODY_LIMIT_BYTES)])

    assert answer.startswith(b"HTTP/1.1 422 ")  # the 10 bytes, judged as a job file
    assert httpx.get(f"{runner.url}/healthz").json() == {"status": "ok"}


def test_bad_requests_then_good_ones_on_one_kept_alive_connection(runner: ServerRunner) -> None:
    ports = []

    def local_port(response: httpx.Response) -> None:
        ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])

    with httpx.Client(base_url=runner.url, event_hooks={"response": [local_port]}) as client:
        bad = [
            client.post(
                f"{API}/jobs",
                content="kind: [unclosed",
                headers={"Content-Type": "application/yaml"},
            ),
            client.post(
                f"{API}/jobs", content=b"\xff\xfe", headers={"Content-Type": "application/yaml"}
            ),
            client.post(
                f"{API}/jobs/ctr/events",
                content="{not json",
                headers={"Content-Type": "application/json"},
            ),
            client.post(f"{API}/jobs/ctr/scale", json={"role": "worker", "replicas": -1}),
            client.get(f"{API}/events", params={"since": -1}),
            client.get(f"{API}/jobs/ctr/logs", params={"tailLines": 2**63}),
        ]
        good = [
            client.get("/healthz"),
            client.post(f"{API}/jobs", json=chatty_job("after")),
            client.get(f"{API}/jobs/after"),
        ]

    assert [r.status_code for r in bad] == [422] * 6
    for response in bad:
        assert all(e["path"] and e["message"] for e in errors_of(response)), response.text
    assert errors_of(bad[1]) == [
        {
            "path": "<body>",
            "message": "not UTF-8 at byte 0 (invalid start byte); send the file as UTF-8",
        }
    ]
    assert [r.status_code for r in good] == [200, 201, 200]
    assert len(set(ports)) == 1, "every request went over the same connection"


@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        (f"{API}/events", "since", -1),
        (f"{API}/events", "since", 2**63),
        (f"{API}/events", "since", -(2**63)),
        (f"{API}/events", "limit", 0),
        (f"{API}/events", "limit", INT64_MAX),
        (f"{API}/events", "limit", -(2**63)),
        (f"{API}/jobs/ctr/logs", "index", -1),
        (f"{API}/jobs/ctr/logs", "index", INT64_MAX),
        (f"{API}/jobs/ctr/logs", "tailLines", -1),
        (f"{API}/jobs/ctr/logs", "tailLines", 2**63),
        (f"{API}/jobs/ctr/logs", "limitBytes", 0),
        (f"{API}/jobs/ctr/logs", "limitBytes", 2**64),
    ],
)
def test_query_parameters_out_of_range_are_a_422_naming_the_parameter(
    runner: ServerRunner, path: str, param: str, value: int
) -> None:
    response = httpx.get(f"{runner.url}{path}", params={param: value})

    assert response.status_code == 422, response.text
    [error] = errors_of(response)
    assert error["path"] == param
    assert error["message"].endswith("(a query parameter)")


@pytest.mark.parametrize(
    ("method", "route"),
    [("GET", ""), ("DELETE", ""), ("POST", "/suspend"), ("GET", "/logs"), ("GET", "/events")],
)
def test_a_huge_or_binary_job_name_is_a_short_404(
    runner: ServerRunner, method: str, route: str
) -> None:
    cases = [
        ("n" * 10_000, None, "job 'nnnn"),
        ("nap", "\x00" * 5_000, "job 'nap' not found in namespace '\\x00"),
        ("a\x00b", None, "job 'a\\x00b' not found"),
    ]
    for name, namespace, start in cases:
        params = {} if namespace is None else {"namespace": namespace}
        url = f"{runner.url}{API}/jobs/{quote(name, safe='')}{route}"
        response = httpx.request(method, url, params=params)

        assert response.status_code == 404, response.text
        message = response.json()["error"]["message"]
        assert len(message) < 200 and "\x00" not in message, message
        assert message.startswith(start), message


def test_the_largest_int64_is_a_valid_event_id(runner: ServerRunner) -> None:
    response = httpx.get(f"{runner.url}{API}/events", params={"since": INT64_MAX})
    assert response.status_code == 200 and response.json() == {"items": []}


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [JSON_DEPTH_MAX + 1, 10_000])
@pytest.mark.parametrize(
    ("method", "path", "wrap"),
    [
        ("POST", "events", '{{"reason": "R", "message": "m", "replica": {}}}'),
        ("POST", "scale", '{{"role": {}, "replicas": 1}}'),
        ("PUT", "master-state", '{{"state": {}}}'),
    ],
)
def test_deep_json_bodies_are_a_422(
    runner: ServerRunner, depth: int, method: str, path: str, wrap: str
) -> None:
    body = wrap.format(nested(depth))
    response = httpx.request(
        method,
        f"{runner.url}{API}/jobs/ctr/{path}",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    assert errors_of(response) == [
        {"path": "<body>", "message": f"not valid JSON: nested deeper than {JSON_DEPTH_MAX} levels"}
    ]


def test_a_deeply_nested_job_file_is_a_422(runner: ServerRunner) -> None:
    body = '{"apiVersion": "tidemill/v1", "kind": "TrainingJob", "x": ' + nested(10_000) + "}"
    response = httpx.post(
        f"{runner.url}{API}/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422, response.text
    [error] = errors_of(response)
    assert error["path"] == "<body>"


@pytest.mark.parametrize(
    ("state", "problem"),
    [
        ('{"step": NaN}', "NaN is not a number JSON allows"),
        ('{"loss": 1e400}', "1e400 is out of range"),
        ('{"note": "\\ud800"}', "lone surrogate"),
        ('{"n": ' + "9" * 5000 + "}", "digits"),
    ],
)
def test_master_state_that_could_not_be_stored_or_read_back_is_a_422(
    runner: ServerRunner, state: str, problem: str
) -> None:
    response = httpx.put(
        f"{runner.url}{API}/jobs/ctr/master-state",
        content='{"state": ' + state + "}",
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text
    [error] = errors_of(response)
    assert problem in error["message"]
    assert httpx.get(f"{runner.url}{API}/jobs/ctr/master-state").json() == {"state": None}


def test_master_state_over_the_body_limit_is_a_413(runner: ServerRunner) -> None:
    state = {"state": {"blob": "s" * BODY_LIMIT_BYTES}}
    response = httpx.put(f"{runner.url}{API}/jobs/ctr/master-state", json=state)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "TooLarge"


def test_a_good_master_state_with_a_surrogate_pair_round_trips(runner: ServerRunner) -> None:
    url = f"{runner.url}{API}/jobs/ctr/master-state"
    sent = '{"state": {"note": "\\ud83d\\ude00", "step": 5}}'
    put = httpx.put(url, content=sent, headers={"Content-Type": "application/json"})
    assert put.status_code == 200, put.text
    assert httpx.get(url).json() == {"state": {"note": "😀", "step": 5}}


@pytest.mark.parametrize(
    ("field", "value"),
    [("message", "m" * 4097), ("replica", "w" * 65), ("reason", "R" * 65), ("reason", "")],
)
def test_over_long_event_fields_are_refused(runner: ServerRunner, field: str, value: str) -> None:
    event: dict[str, Any] = {"reason": "Checkpoint", "message": "saved"}
    event[field] = value

    response = httpx.post(f"{runner.url}{API}/jobs/ctr/events", json=event)

    assert response.status_code == 422, response.text
    assert [e["path"] for e in errors_of(response)] == [field]


def test_an_unexpected_error_is_a_500_with_an_incident_id_the_log_repeats(
    runner: ServerRunner, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> None:
        raise RuntimeError("a bug")

    runner.app.add_api_route("/broken", broken)
    with (
        caplog.at_level(logging.ERROR, "tidemill.server"),
        httpx.Client(base_url=runner.url) as client,
    ):
        response = client.get("/broken")
        after = client.get("/healthz")

    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "Internal"
    incident = error["message"].split("incident ")[1].split(")")[0]
    assert len(incident) == 8
    [record] = [r for r in caplog.records if incident in r.getMessage()]
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
    assert after.status_code == 200


def test_a_slow_job_file_parse_does_not_hold_up_other_requests(runner: ServerRunner) -> None:
    rows = "".join(
        f"    - {{a{i}: [1, 2, 3, 4, 5, 6, 7, 8], b: ccccccccccccc}}\n" for i in range(5000)
    )
    body = "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: big}\nspec:\n  x:\n" + rows
    answers: list[httpx.Response] = []
    submit = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{runner.url}{API}/jobs",
                content=body,
                headers={"Content-Type": "application/yaml"},
                timeout=60,
            )
        )
    )
    started = time.monotonic()
    submit.start()
    latencies = []
    while submit.is_alive():
        began = time.monotonic()
        assert httpx.get(f"{runner.url}/healthz", timeout=5).status_code == 200
        latencies.append(time.monotonic() - began)
        time.sleep(0.05)
    submit.join()
    parse_s = time.monotonic() - started

    assert answers[0].status_code == 422
    assert len(latencies) >= 3, f"the parse took only {parse_s:.2f}s"
    assert max(latencies) < max(0.5, parse_s / 3), (latencies, parse_s)
