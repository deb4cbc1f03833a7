"""The worker's line to the master, against a hand-driven master on a real socket: each
line is parsed once into its typed message and routed to flags, the inbox or a request."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tidemill.runtime.elastic_client import MasterClient
from tidemill.wire import (
    Abort,
    Change,
    Epoch,
    Evicted,
    Lease,
    Leased,
    Register,
    Registered,
    WorkerMessage,
    decode,
    encode,
    parse_worker,
)

EPOCH = Epoch(3, 0, 1, ("worker-0",), "127.0.0.1", 29500, "epoch/3", 0, 40, 60.0)


class FakeMaster:
    """Accepts the client's connections one at a time; reads and writes lines by hand."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.sock: socket.socket | None = None
        self.buffer = b""

    def accept(self) -> Register:
        self.server.settimeout(10)
        self.sock, _ = self.server.accept()
        self.sock.settimeout(10)
        self.buffer = b""
        first = self.receive()
        assert isinstance(first, Register)
        return first

    def receive(self) -> WorkerMessage:
        assert self.sock is not None
        while b"\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        line, self.buffer = self.buffer.split(b"\n", 1)
        return parse_worker(decode(line))

    def send(self, *lines: bytes) -> None:
        assert self.sock is not None
        self.sock.sendall(b"".join(lines))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.server.close()


@pytest.fixture
def master() -> Iterator[FakeMaster]:
    fake = FakeMaster()
    yield fake
    fake.close()


def client_of(master: FakeMaster, aborted: list[int]) -> MasterClient:
    client = MasterClient(master.address, "worker-0", 7, on_abort=aborted.append)
    client.start()
    return client


def test_change_and_abort_raise_flags_and_the_rest_reaches_the_inbox_typed(
    master: FakeMaster,
) -> None:
    aborted: list[int] = []
    client = client_of(master, aborted)
    try:
        assert master.accept() == Register("worker-0", 7, "new")
        master.send(encode(Registered("worker-0")), encode(Change(2)), encode(Abort(3)))
        master.send(encode(EPOCH), encode(Evicted("worker-0 did not form the group")))

        assert client.next_message(5) == Registered("worker-0")
        assert client.next_message(5) == EPOCH
        assert client.next_message(5) == Evicted("worker-0 did not form the group")
        assert aborted == [3]
        assert client.change_requested(3) and client.aborted(3) and not client.aborted(4)
    finally:
        client.close()


def test_a_request_returns_the_lease_reply_with_its_own_id(master: FakeMaster) -> None:
    client = client_of(master, [])
    grant = {"shard": None, "cursor": None, "stale": True, "index": -1, "total": 0}

    def answer() -> None:
        master.accept()
        request = master.receive()
        assert isinstance(request, Lease)
        master.send(encode(Leased(request.id + 1, error="not yet")))  # someone else's
        master.send(encode(Leased(request.id, grant=grant)))

    fake = threading.Thread(target=answer)
    fake.start()
    try:
        deadline = time.monotonic() + 10
        reply = client.request(
            Lease(3, 0, 0, "clicks"), give_up=lambda: time.monotonic() > deadline
        )
        assert reply == Leased(1, grant=grant)
    finally:
        fake.join(timeout=10)
        client.close()


def test_a_malformed_master_line_drops_the_connection_and_the_client_registers_again(
    master: FakeMaster,
) -> None:
    client = client_of(master, [])
    try:
        master.accept()
        master.send(b'{"op": "epoch", "epoch": 4}\n')
        assert master.accept() == Register("worker-0", 7, "new")
        master.send(encode(Registered("worker-0")))
        assert client.next_message(5) == Registered("worker-0"), "nothing of the bad line"
    finally:
        client.close()
