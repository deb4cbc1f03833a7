"""Connections that never register cannot take the job master's files: each may stay
silent for a while only, and another user's may not wait in great numbers, while the
master's own workers always get in."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nobody import needs_nobody, start_as_nobody
from tidemill.master.server import LOGGED_REFUSALS, unregistered_limit

from .processes import MasterProcess, Replica

SILENT_S = 0.5
LIMIT = unregistered_limit(max_workers=1)
FLOOD = LIMIT + 40
# As another user: open FLOOD connections, say how many the master closed at once
# (within 0.3 s, before the silent deadline), then hold the rest until told to stop.
HOLD_SILENT = """
import json, socket, sys, time
host, port = sys.argv[1].split(":")
socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(int(sys.argv[2]))]
time.sleep(0.3)
closed = 0
for sock in socks:
    sock.setblocking(False)
    try:
        closed += sock.recv(1) == b""
    except BlockingIOError:
        pass
print(json.dumps({"opened": len(socks), "closed_at_once": closed}), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def master(tmp_path: Path) -> Iterator[MasterProcess]:
    process = MasterProcess(
        tmp_path,
        {
            "TIDEMILL_ELASTIC_MIN": "1",
            "TIDEMILL_ELASTIC_SETTLE_S": "0.2",
            "TIDEMILL_ELASTIC_SILENT_TIMEOUT_S": str(SILENT_S),
        },
    )
    process.start()
    yield process
    process.kill()


def test_a_connection_that_never_registers_is_closed_after_the_silent_deadline(
    master: MasterProcess,
) -> None:
    host, port = master.address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b"", "closed by the master"
        waited_s = time.monotonic() - started
    assert SILENT_S * 0.8 <= waited_s < SILENT_S + 5

    member = Replica(master.address).register("worker-0")
    member.expect("registered")
    time.sleep(SILENT_S * 2)
    assert member.expect("epoch")["members"] == ["worker-0"], "a registered one stays"
    member.close()


@needs_nobody
def test_another_users_flood_of_silent_connections_is_bounded_and_workers_still_join(
    master: MasterProcess,
) -> None:
    master.kill()  # long enough a deadline that the flood waits while the worker joins
    master.env["TIDEMILL_ELASTIC_SILENT_TIMEOUT_S"] = "30"
    master.start()
    flood = start_as_nobody(HOLD_SILENT, master.address, str(FLOOD))
    try:
        assert flood.stdout is not None
        seen = json.loads(flood.stdout.readline())
        member = Replica(master.address).register("worker-0")
        member.expect("registered")
        assert member.expect("epoch")["members"] == ["worker-0"]
        member.close()
    finally:
        flood.kill()
        flood.wait()

    assert seen == {"opened": FLOOD, "closed_at_once": FLOOD - LIMIT}
    log = (master.folder / f"master.{master.starts}.log").read_text()
    refusals = [line for line in log.splitlines() if "are yet to register" in line]
    assert len(refusals) == min(LOGGED_REFUSALS, FLOOD - LIMIT)
