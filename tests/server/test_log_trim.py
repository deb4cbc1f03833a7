"""A replica that prints without end cannot fill the disk: the local engine trims its
log past a size (the end kept in ``<log>.1``), and log streams read on through the trim."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import script_job, wait_for
from tidemill.engines.log_trim import older_log, trim_log
from tidemill.server.logs import LogSource, stream_logs
from tidemill.server.runner import ServerRunner

MAX_BYTES, KEPT_BYTES = 1 << 20, 64 << 10
LINES = 300_000
# Prints 3.6 MB at once, waits for the engine to trim, then says it is still there.
PRINTER = (
    "import sys, time\n"
    f"sys.stdout.write(''.join(f'line {{i:07d}}\\n' for i in range({LINES})))\n"
    "sys.stdout.flush()\n"
    "time.sleep(4)\n"
    "print('after the trim', flush=True)\n"
)
NOTE = re.compile(
    r"\[tidemill: this log passed 1048576 bytes; its last 655[0-3][0-9] bytes are in "
)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[ServerRunner]:
    server = ServerRunner(
        tmp_path,
        port=0,
        engine_options={"log_max_bytes": MAX_BYTES, "log_kept_bytes": KEPT_BYTES},
    )
    server.start()
    yield server
    server.stop()


def test_a_running_replicas_log_is_trimmed_and_a_follower_reads_on(runner: ServerRunner) -> None:
    with httpx.Client(base_url=runner.url, timeout=60) as http:
        assert http.post("/api/v1/jobs", json=script_job("printer", PRINTER)).status_code == 201
        wait_for(lambda: http.get("/api/v1/jobs/printer").json()["phase"] == "Running", 30)
        with http.stream("GET", "/api/v1/jobs/printer/logs", params={"follow": "true"}) as stream:
            followed = list(stream.iter_lines())
        final = http.get("/api/v1/jobs/printer").json()
        after = http.get("/api/v1/jobs/printer/logs").text.splitlines()

    assert final["phase"] == "Succeeded"
    notes = [line for line in followed if NOTE.search(line)]
    assert len(notes) == 1, followed[-5:]
    assert followed[-1] == "[worker-0] after the trim" or followed[-1].endswith("after the trim")
    assert all("\0" not in line for line in followed)
    assert NOTE.search(after[0]) and after[-1].endswith("after the trim")
    log = next(runner.state_dir.glob("logs/default/printer/*/worker-0.log"))
    assert log.stat().st_size < 4096, "the log holds what came after the trim"
    kept = older_log(log).read_bytes()
    assert KEPT_BYTES - 100 < len(kept) <= KEPT_BYTES
    assert kept.endswith(f"line {LINES - 1:07d}\n".encode())
    assert kept.startswith(b"line "), "the kept end starts at a whole line"


def test_a_follower_reads_a_trimmed_file_again_from_its_start(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("first\n" + "x" * 200 + "\nunfinish")
    steps = iter(["trim", "ed\nlast\n"])

    def running() -> bool:
        step = next(steps, None)
        if step == "trim":
            assert trim_log(log, max_bytes=100, kept_bytes=50) > 0
        elif step is not None:
            with log.open("a") as handle:
                handle.write(step)
        return step is not None

    async def follow() -> list[str]:
        return [
            t async for t in stream_logs([LogSource(str(log), "")], True, running, None, 1 << 20)
        ]

    got = "".join(asyncio.run(follow())).splitlines()

    assert got[:2] == ["first", "x" * 200]
    assert got[2] == "unfinish", "a line cut short by the trim ends there"
    assert got[3].startswith(
        "[tidemill: this log passed 100 bytes; its last 8 bytes are in w.log.1, the 207 "
    )
    assert got[4:] == ["ed", "last"]
    assert older_log(log).read_text() == "unfinish", "whole lines of the last 50 bytes"
