"""Every response says how long the server spent on it (``Server-Timing``), so the
dashboard and a browser's developer tools tell server time from network time."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

from tidemill.server.runner import ServerRunner

TIMING = re.compile(r"^app;dur=(\d+\.\d{2})$")


def test_answers_and_refusals_carry_the_servers_own_time_within_the_clients(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with httpx.Client(base_url=runner.url) as http:
        for path, status in (("/api/v1/jobs", 200), ("/api/v1/jobs/nope", 404), ("/", 200)):
            started = time.perf_counter()
            answer = http.get(path)
            client_ms = (time.perf_counter() - started) * 1000

            assert answer.status_code == status, path
            timing = TIMING.match(answer.headers["Server-Timing"])
            assert timing is not None, answer.headers["Server-Timing"]
            assert 0 < float(timing.group(1)) <= client_ms, path
