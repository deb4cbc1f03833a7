"""Log streams cannot take the server from others: followers hold no thread, each
client has a few at most, and a download stops at its byte limit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from tests.e2e.harness import wait_for
from tests.server.conftest import chatty_job, wait_for_log
from tidemill.client import Client
from tidemill.server.limits import FOLLOW_STREAMS_PER_CLIENT, Limits
from tidemill.server.logs import cut_note
from tidemill.server.runner import ServerRunner

LOGS = "/api/v1/jobs/{}/logs"
WORKER = {"role": "worker", "index": "0"}
"""One replica's log: lines come unprefixed, after the launcher's '===== tidemill' header."""


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("===== tidemill")]


@contextmanager
def follow(http: httpx.Client, name: str) -> Iterator[httpx.Response]:
    """A follow stream, open (its headers in) until the block ends."""
    request = http.build_request("GET", LOGS.format(name), params={**WORKER, "follow": "true"})
    response = http.send(request, stream=True)
    try:
        yield response
    finally:
        response.close()


def streams_client(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        timeout=httpx.Timeout(10, read=None),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=0),
    )


def test_forty_followers_leave_healthz_and_the_api_as_quick_as_ever(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner(Limits(follow_streams_per_client=64))
    client = Client(runner.url)
    client.submit(chatty_job("ctr"))
    wait_for_log(client, "ctr")

    with ExitStack() as stack:
        http = stack.enter_context(streams_client(runner.url))
        streams = [stack.enter_context(follow(http, "ctr")) for _ in range(40)]
        assert {s.status_code for s in streams} == {200}
        first = streams[0].iter_lines()
        assert [next(first) for _ in range(4)][1:] == ["1", "2", "3"]
        time.sleep(1)  # every follower has caught up and now polls

        latencies = []
        for _ in range(5):
            began = time.monotonic()
            assert httpx.get(f"{runner.url}/healthz", timeout=5).status_code == 200
            assert httpx.get(f"{runner.url}/api/v1/jobs", timeout=5).status_code == 200
            latencies.append(time.monotonic() - began)
    client.close()

    assert max(latencies) < 1.0, latencies


def test_a_client_may_follow_a_few_streams_at_once_and_more_when_one_closes(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    client = Client(runner.url)
    client.submit(chatty_job("ctr"))
    wait_for_log(client, "ctr")

    with ExitStack() as stack:
        http = stack.enter_context(streams_client(runner.url))
        streams = [
            stack.enter_context(follow(http, "ctr")) for _ in range(FOLLOW_STREAMS_PER_CLIENT)
        ]
        assert {s.status_code for s in streams} == {200}

        refused = http.get(LOGS.format("ctr"), params={"follow": "true"})
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "TooManyRequests"
        assert (
            f"at most {FOLLOW_STREAMS_PER_CLIENT} with follow=true per client" in error["message"]
        )
        # Reading without follow is not capped.
        assert lines_of(http.get(LOGS.format("ctr"), params=WORKER).text) == ["1", "2", "3"]

        streams[0].close()

        def one_more() -> bool:
            with follow(http, "ctr") as response:
                return response.status_code == 200

        wait_for(one_more, 10, "a follow stream once one was closed")
    client.close()


def test_a_finished_job_ends_its_followers_and_gives_their_slots_back(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner(Limits(follow_streams_per_client=1))
    client = Client(runner.url)
    job = chatty_job("short")
    job["spec"]["roles"]["worker"]["command"] = ["sh", "-c", "seq 1 3; sleep 2; echo done"]
    client.submit(job)
    wait_for_log(client, "short")

    with streams_client(runner.url) as http:
        with follow(http, "short") as stream:
            assert lines_of("\n".join(stream.iter_lines())) == ["1", "2", "3", "done"]
        with follow(http, "short") as again:
            assert again.status_code == 200
    client.close()


def test_a_download_stops_at_limit_bytes_and_its_last_line_says_so(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    client = Client(runner.url)
    client.submit(chatty_job("ctr", lines=1000))
    wait_for_log(client, "ctr")
    wait_for(lambda: "1000" in client.logs("ctr", "worker", 0), 30, "all 1000 lines")

    url = f"{runner.url}{LOGS.format('ctr')}"
    header = httpx.get(url, params=WORKER).text.splitlines()[0]
    cut = httpx.get(url, params={**WORKER, "limitBytes": len(header) + 1 + 10})
    tail = httpx.get(url, params={**WORKER, "tailLines": 2})

    assert header.startswith("===== tidemill")
    assert cut.text == f"{header}\n1\n2\n3\n4\n5\n" + cut_note(len(header) + 11)
    assert tail.text == "999\n1000\n"
    client.close()


@pytest.mark.parametrize("follow_param", ["false", "true"])
def test_logs_of_a_job_that_does_not_exist_are_a_404_and_hold_no_slot(
    start_runner: Callable[..., ServerRunner], follow_param: str
) -> None:
    runner = start_runner(Limits(follow_streams_per_client=1))
    for _ in range(3):
        response = httpx.get(f"{runner.url}{LOGS.format('ghost')}", params={"follow": follow_param})
        assert response.status_code == 404
