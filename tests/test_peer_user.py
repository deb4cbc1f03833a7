"""Without a credential to prove (auth off), a job's master and PS replicas take
connections from their own user only: another user of the machine (a real process
running as nobody) is refused over TCP and over the PS's Unix socket, while this user's
replicas join as before."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.master.processes import MasterProcess, Replica
from tests.nobody import needs_nobody, nobody_uid, run_as_nobody, start_as_nobody
from tidemill.peer_user import other_user, socket_owner
from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, TableConfig
from tidemill.ps._local import local_name

CONFIG = PSConfig((TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0), 0.0, 1),))
MASTER_KNOCK = """
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
with socket.create_connection((host, int(port)), timeout=10) as sock:
    hello = {"op": "register", "replica": "worker-0", "pid": 1, "status": "new"}
    sock.sendall(json.dumps(hello).encode() + b"\\n")
    print(sock.makefile().readline().strip())
"""
PS_KNOCK = """
import socket, sys
kind, where = sys.argv[1], sys.argv[2]
if kind == "tcp":
    host, port = where.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
else:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(where.replace("@", "\\0", 1))
sock.settimeout(3)
try:
    print("answered" if sock.recv(1) else "closed")
except ConnectionResetError:
    print("closed")
except TimeoutError:
    print("open, waiting for a request")
"""


def test_this_users_own_connections_are_no_other_users() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        accepted, _ = listener.accept()
        with accepted:
            assert other_user(accepted) is None
            assert socket_owner(client.getsockname(), client.getpeername()) == os.geteuid()
            assert socket_owner(("127.0.0.1", 1), ("127.0.0.1", 2)) is None
    mine, theirs = socket.socketpair()
    with mine, theirs:
        assert other_user(mine) is None


HOLD = """
import socket, sys, time
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10):
    time.sleep(10)
"""


@needs_nobody
@pytest.mark.parametrize("dual_stack", [False, True], ids=["IPv4 listener", "dual-stack"])
def test_a_loopback_connection_from_another_user_is_named(dual_stack: bool) -> None:
    listener = (
        socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
        if dual_stack
        else socket.create_server(("127.0.0.1", 0))
    )
    with listener:
        holder = start_as_nobody(HOLD, str(listener.getsockname()[1]))
        try:
            accepted, peer = listener.accept()
            with accepted:
                named = other_user(accepted)
        finally:
            holder.kill()
            holder.wait()

    assert peer[0] == ("::ffff:127.0.0.1" if dual_stack else "127.0.0.1")
    assert named == nobody_uid()


@needs_nobody
def test_the_master_refuses_another_users_registration_and_takes_its_own(
    tmp_path: Path,
) -> None:
    master = MasterProcess(
        tmp_path, {"TIDEMILL_ELASTIC_MIN": "1", "TIDEMILL_ELASTIC_SETTLE_S": "0.2"}
    )
    master.start()
    try:
        refused = json.loads(run_as_nobody(MASTER_KNOCK, master.address))
        member = Replica(master.address).register("worker-0")
        member.expect("registered")
        member.close()
    finally:
        master.kill()

    assert refused["op"] == "refused"
    assert refused["message"] == (
        f"the job master of tests/elastic takes connections only from its own user (uid "
        f"{os.geteuid()}) while the job has no credential (auth off): this one comes from "
        f"uid {nobody_uid()}"
    )


@pytest.fixture
def open_ps() -> Iterator[PSServer]:
    with PSServer(CONFIG, index=0) as running:
        yield running


@needs_nobody
def test_a_ps_replica_closes_another_users_connections_and_serves_its_own(
    open_ps: PSServer,
) -> None:
    host, port = open_ps.address
    over_tcp = run_as_nobody(PS_KNOCK, "tcp", f"{host}:{port}").strip()
    over_unix = run_as_nobody(PS_KNOCK, "unix", local_name(open_ps.address).replace("\0", "@"))

    assert over_tcp == "closed" and over_unix.strip() == "closed"
    with PSClient(CONFIG, [open_ps.address]) as member:
        assert member.pull("t", [7])[0].tolist() == [0.0] * 4
