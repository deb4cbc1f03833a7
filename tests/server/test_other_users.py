"""An open server on loopback serves its own user only: another user of the machine (a
real process running as ``nobody``) is refused before anything is read, while with
``--auth`` the token rules decide as everywhere else."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import script_job
from tests.nobody import needs_nobody, nobody_uid, run_as_nobody
from tidemill.server.runner import ServerRunner

JOB = json.dumps(script_job("intruder", "print('ran as the server owner')", cpu=0.1))
CALLS = """
import json, sys, urllib.request, urllib.error
url, job = sys.argv[1], sys.argv[2]
answers = []
for method, path, body in [("POST", "/api/v1/jobs", job), ("GET", "/api/v1/jobs", None),
                           ("GET", "/healthz", None)]:
    request = urllib.request.Request(url + path, data=body and body.encode(), method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answers.append([response.status, response.read().decode()])
    except urllib.error.HTTPError as error:
        answers.append([error.code, error.read().decode()])
print(json.dumps(answers))
"""


pytestmark = needs_nobody


def calls_as_nobody(url: str) -> list[tuple[int, str]]:
    return [(status, body) for status, body in json.loads(run_as_nobody(CALLS, url, JOB))]


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[ServerRunner]:
    runner = ServerRunner(tmp_path, port=0)
    runner.start()
    yield runner
    runner.stop()


def test_another_user_is_refused_by_an_open_server_and_its_owner_is_served(
    open_server: ServerRunner,
) -> None:
    answers = calls_as_nobody(open_server.url)

    nobody = nobody_uid()
    assert open_server.own_user == os.geteuid()
    for status, body in answers:
        assert status == 403, body
        error = json.loads(body)["error"]
        assert error["code"] == "AnotherUser"
        assert f"for its own user (uid {os.geteuid()}) only" in error["message"]
        assert f"this call comes from uid {nobody}" in error["message"]
        assert "--auth" in error["message"]
    with httpx.Client(base_url=open_server.url) as http:
        assert http.get("/api/v1/jobs").json()["items"] == [], "the intruder's job was taken"
        assert http.get("/healthz").status_code == 200


def test_with_auth_another_user_meets_the_token_rules_instead(tmp_path: Path) -> None:
    runner = ServerRunner(tmp_path, port=0, auth=True)
    runner.start()
    try:
        answers = calls_as_nobody(runner.url)
    finally:
        runner.stop()

    assert runner.own_user is None and runner.warnings == []
    assert [status for status, _ in answers] == [401, 401, 200]
