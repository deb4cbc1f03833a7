"""Clients that open connections and send nothing, half a request or a body a byte at a
time (slowloris) cannot take the server's file descriptors from the jobs it runs: a
request must arrive within a deadline, and connections beyond a bound are answered
503 and closed at once."""

from __future__ import annotations

import json
import logging
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import script_job, wait_for
from tidemill.server.connections import ConnectionBounds, default_max_connections
from tidemill.server.runner import ServerRunner

READ_S = 1.0


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ServerRunner]:
    server = ServerRunner(
        tmp_path, port=0, connections=ConnectionBounds(max_connections=16, request_read_s=READ_S)
    )
    server.start()
    yield server
    server.stop()


def connect(runner: ServerRunner, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", runner.port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def answer_then_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def error_of(answer: bytes) -> dict[str, str]:
    body = answer.partition(b"\r\n\r\n")[2]
    return dict(json.loads(body)["error"])


def test_a_request_that_does_not_arrive_in_time_is_answered_408_and_closed(
    runner: ServerRunner, caplog: pytest.LogCaptureFixture
) -> None:
    with ExitStack() as stack:
        silent = stack.enter_context(closing(connect(runner)))
        half_head = stack.enter_context(closing(connect(runner, b"GET /healthz HTTP/1.1\r\nHo")))
        trickled = stack.enter_context(
            closing(
                connect(
                    runner,
                    b"POST /api/v1/jobs HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
                )
            )
        )
        started = time.monotonic()
        assert httpx.get(f"{runner.url}/healthz").status_code == 200, "others are served"
        answers = [answer_then_close(s) for s in (silent, half_head, trickled)]
        waited_s = time.monotonic() - started

    assert READ_S * 0.9 <= waited_s < READ_S + 5
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:80]
        assert b"connection: close" in answer
        error = error_of(answer)
        assert error["code"] == "RequestTimeout"
        assert "did not arrive whole within 1s" in error["message"]
    assert runner.connections.refused[408] == 3
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "a body cut short is no incident (it logged a traceback each)"
    metrics = httpx.get(f"{runner.url}/metrics").text
    assert 'tidemill_http_connections_refused_total{status="408"} 3.0' in metrics
    assert httpx.get(f"{runner.url}/api/v1/jobs").json()["items"] == [], "nothing submitted"


def test_the_deadline_counts_from_each_answer_and_never_cuts_one_short(
    runner: ServerRunner,
) -> None:
    slow_log = (
        "import time\nfor i in range(12):\n    print('line', i, flush=True); time.sleep(0.25)"
    )
    with httpx.Client(base_url=runner.url) as http:
        for _ in range(4):  # one kept-alive connection, longer in all than the deadline
            assert http.get("/healthz").status_code == 200
            time.sleep(READ_S * 0.6)
        assert http.post("/api/v1/jobs", json=script_job("talker", slow_log)).status_code == 201
        wait_for(lambda: http.get("/api/v1/jobs/talker").json()["phase"] != "Pending", 30)
        with http.stream("GET", "/api/v1/jobs/talker/logs", params={"follow": "true"}) as stream:
            lines = [line for line in stream.iter_lines() if "] line " in line]
        http.delete("/api/v1/jobs/talker")

    # an answer that streams for 3s is not cut at the 1s deadline
    assert [line.split("] ", 1)[1] for line in lines] == [f"line {i}" for i in range(12)]
    assert runner.connections.refused.get(408, 0) == 0


def test_one_connection_more_than_the_bound_is_answered_503_at_once(runner: ServerRunner) -> None:
    with ExitStack() as stack:
        held = [stack.enter_context(closing(connect(runner))) for _ in range(16)]
        time.sleep(0.2)
        started = time.monotonic()
        refused = answer_then_close(connect(runner))
        refused_s = time.monotonic() - started
        assert len(held) == 16

    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), refused[:80]
    assert b"retry-after: 1" in refused
    error = error_of(refused)
    assert error["code"] == "TooManyConnections"
    assert "at most 16 connections" in error["message"]
    assert "--max-connections" in error["message"]
    assert refused_s < 0.5
    metrics = wait_for(
        lambda: (
            "tidemill_http_connections 1.0" in (text := httpx.get(f"{runner.url}/metrics").text)
            and text
        ),
        10,
        what="served again once the held ones closed, open: only the one asking",
    )
    assert 'tidemill_http_connections_refused_total{status="503"} 1.0' in str(metrics)
    assert "tidemill_http_connections_limit 16.0" in str(metrics)


def serving(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_the_default_bound_leaves_half_the_open_files_to_the_jobs() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections() == max(64, min(4096, soft // 2))


def test_a_flood_of_idle_connections_does_not_fail_another_tenants_running_job(
    tmp_path: Path,
) -> None:
    """A server process with 512 open files at most (the default on many machines is
    1,024) that holds 200 connections; a client opens 600 and sends nothing. Before the
    bounds, the controller ran out of files and failed the running job, and the server
    logged a traceback for every connection it could not accept, thousands a second."""
    job = script_job(
        "victim", "import time\nfor i in range(8):\n    print(i, flush=True); time.sleep(1)"
    )
    (tmp_path / "job.json").write_text(json.dumps(job))
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidemill",
            "server",
            "--state-dir",
            str(tmp_path / "state"),
            "--port",
            "0",
            "--max-connections",
            "200",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)),
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        url = first.split(" on ", 1)[1].split(" ", 1)[0]
        port = int(url.rsplit(":", 1)[1])
        wait_for(lambda: serving(url), 30, what="the server to listen")
        assert httpx.post(f"{url}/api/v1/jobs", json=job).status_code == 201
        wait_for(lambda: httpx.get(f"{url}/api/v1/jobs/victim").json()["phase"] == "Running", 30)
        flood = []
        for _ in range(600):
            try:
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError:
                break
        time.sleep(1)
        busy = httpx.get(f"{url}/healthz")
        for sock in flood:
            sock.close()
        final = wait_for(
            lambda: (
                (v := httpx.get(f"{url}/api/v1/jobs/victim").json())["phase"]
                in ("Succeeded", "Failed")
                and v
            ),
            60,
            what="the job to end",
        )
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)

    assert busy.status_code == 503 and busy.json()["error"]["code"] == "TooManyConnections"
    assert "at most 200 connections" in busy.json()["error"]["message"]
    assert final["phase"] == "Succeeded", final  # type: ignore[index]
    assert "Too many open files" not in output
    assert len(output.splitlines()) < 20, "refusals are logged, not once each"
