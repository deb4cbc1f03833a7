"""``tidemill debug stacks`` and ``tidemill exec`` against a real server and real
replica processes: where a hung job's ranks stand, and commands run beside them."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from typer.testing import CliRunner, Result

from tests.cli.conftest import SLEEP, Live, live_server
from tests.e2e.harness import script_job, wait_for
from tidemill.cli.main import app

runner = CliRunner()

HUNG = """\
import os
import time

import tidemill.runtime  # noqa: F401  (what training code imports; it registers the dump)


def wait_for_peers():
    while True:
        time.sleep(0.1)


def read_batch():
    while True:
        time.sleep(0.1)


if os.environ["TIDEMILL_INDEX"] == "2":
    read_batch()
else:
    wait_for_peers()
"""
"""Workers 0 and 1 wait for peers; worker 2 is stuck reading its batch."""


def hung_job(workdir: Path) -> dict[str, Any]:
    """Three workers running :data:`HUNG` from ``workdir``, and a ps that is no Python
    process at all (``sleep``)."""
    (workdir / "train.py").write_text(HUNG)
    job = script_job("hung", SLEEP, workers=3, mode="ps", ps_script=SLEEP)
    roles = job["spec"]["roles"]
    roles["worker"].update(command=[sys.executable, "train.py"], workingDir=str(workdir))
    roles["ps"]["command"] = ["sleep", "600"]
    return job


@pytest.fixture(scope="module")
def hung(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("work")
    with live_server(tmp_path_factory.mktemp("state")) as live:
        live.client.submit(hung_job(workdir))
        live.running("hung")
        live.submit("done", "print('bye')")
        live.finished("done")
        yield live


def cli(live: Live, *args: str) -> Result:
    return runner.invoke(app, list(args), env={"TIDEMILL_SERVER": live.url})


def stacks_until_in_place(live: Live) -> Result:
    """``debug stacks`` once every worker has reached its function (they start at once,
    but a stack read during the import is a different place)."""
    for _ in range(50):
        result = cli(live, "debug", "stacks", "hung")
        if "in wait_for_peers()" in result.stdout and "in read_batch()" in result.stdout:
            return result
    return result


def test_stacks_group_the_ranks_by_the_function_they_are_stuck_in(hung: Live) -> None:
    result = stacks_until_in_place(hung)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "job default/hung: 4 running replicas in 3 groups"
    assert "worker 0-1 (ranks 0-1): in wait_for_peers() at train.py:" in result.stdout
    assert "worker 2 (rank 2): in read_batch() at train.py:" in result.stdout
    (ps,) = [line for line in lines if line.startswith("ps 0:")]
    assert "no stacks" in ps and "not a Python process" in ps


def test_stacks_in_full_show_every_replicas_frames(hung: Live) -> None:
    stacks_until_in_place(hung)
    result = cli(hung, "debug", "stacks", "hung", "--full")

    assert result.exit_code == 0, result.output
    assert "===== worker-2 (pid " in result.stdout
    assert "faulthandler" in result.stdout or "py-spy" in result.stdout
    assert "in read_batch" in result.stdout and 'train.py", line' in result.stdout


def test_stacks_as_json_carry_raw_stacks_and_groups(hung: Live) -> None:
    stacks_until_in_place(hung)
    result = cli(hung, "debug", "stacks", "hung", "--json")

    report = json.loads(result.stdout)
    by_name = {r["replica"]: r for r in report["replicas"]}
    assert set(by_name) == {"worker-0", "worker-1", "worker-2", "ps-0"}
    main = next(t for t in by_name["worker-2"]["threads"] if t["main"])
    assert main["frames"][0]["function"] == "read_batch"
    assert main["frames"][-1]["function"] == "<module>"
    assert [g["replicas"] for g in report["groups"]][:1] == [["worker-0", "worker-1"]]


def test_exec_runs_in_the_replicas_environment_and_folder(hung: Live, tmp_path: Path) -> None:
    script = "import os; print(os.environ['TIDEMILL_INDEX'], os.environ['RANK'], os.getcwd())"
    result = cli(
        hung, "exec", "hung", "--role", "worker", "--index", "2", "--", sys.executable, "-c", script
    )

    assert result.exit_code == 0, result.output
    index, rank, cwd = result.stdout.split()
    assert (index, rank) == ("2", "2")
    view = hung.client.get("hung")
    assert view.phase == "Running"
    pid = next(r.pid for r in view.replicas if (r.role, r.index) == ("worker", 2))
    assert cwd == os.readlink(f"/proc/{pid}/cwd")


def test_exec_passes_the_commands_exit_code_through(hung: Live) -> None:
    result = cli(
        hung,
        "exec",
        "hung",
        "--role",
        "ps",
        "--index",
        "0",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    )

    assert result.exit_code == 7
    assert result.stdout == "out\nerr\n"


def test_exec_of_a_missing_program_says_so(hung: Live) -> None:
    result = cli(hung, "exec", "hung", "--role", "worker", "--", "no-such-program-here")

    assert result.exit_code == 1
    assert "no-such-program-here" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["debug", "stacks", "nosuch"], "job 'nosuch' not found"),
        (["exec", "nosuch", "--role", "worker", "--", "true"], "job 'nosuch' not found"),
        (["exec", "hung", "--role", "chief", "--", "true"], "no running replica chief-0"),
        (
            ["exec", "hung", "--role", "worker", "--index", "9", "--", "true"],
            "no running replica worker-9",
        ),
        (["debug", "stacks", "done"], "has no running replicas"),
        (["exec", "done", "--role", "worker", "--", "true"], "has no running replicas"),
    ],
)
def test_bad_input_is_a_clear_error(hung: Live, args: list[str], message: str) -> None:
    result = cli(hung, *args)

    assert result.exit_code == 1, result.output
    assert message in result.stderr


def test_exec_kills_a_command_that_outlives_its_timeout(hung: Live) -> None:
    result = cli(hung, "exec", "hung", "--role", "ps", "--timeout", "0.5", "--", "sleep", "30")

    assert result.exit_code == 124
    assert "killed after timeout_s=0.5" in result.stdout


def test_an_exec_request_without_a_usable_command_is_refused_naming_the_field(hung: Live) -> None:
    for command in ([], [""], ["echo", "x" * 20_000], ["echo", "a\x00b"]):
        body = {"role": "worker", "index": 0, "command": command}
        response = httpx.post(f"{hung.url}/api/v1/jobs/hung/exec", json=body, timeout=30)

        assert response.status_code == 422, response.text
        assert "command" in response.text


def test_long_commands_are_bounded_per_client_and_never_stall_the_server(hung: Live) -> None:
    """45 commands that run for long, at once: before, each held a thread of the server's
    shared pool and the server answered nobody (``/healthz`` timed out) until they
    ended. Now a client runs at most 4; the 5th and later are a 429."""
    body = {"role": "ps", "index": 0, "command": ["sleep", "30"], "timeout_s": 30}
    url = f"{hung.url}/api/v1/jobs/hung/exec"
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(timeout=30))
        answers = []
        for _ in range(45):
            answer = stack.enter_context(http.stream("POST", url, json=body))
            answers.append(answer.status_code)
            if answer.status_code == 429:
                answer.read()
                refusal = answer.json()["error"]["message"]
        started = time.monotonic()
        health = httpx.get(f"{hung.url}/healthz", timeout=10)
        listed = httpx.get(f"{hung.url}/api/v1/jobs", timeout=10)
        stacks = httpx.get(f"{hung.url}/api/v1/jobs/hung/stacks", timeout=30)
        served_s = time.monotonic() - started

    assert answers.count(200) == 4 and answers.count(429) == 41, answers
    assert "at most 4 per client at once" in refusal
    assert health.status_code == listed.status_code == stacks.status_code == 200
    assert served_s < 10
    sleeping = lambda: [  # noqa: E731
        p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "30"]
    ]
    wait_for(lambda: not sleeping(), 15, what="the commands killed once their callers left")
    again = cli(hung, "exec", "hung", "--role", "ps", "--", "true")
    assert again.exit_code == 0, "the slots came back"
