"""The binary frame format: round trips, and bad frames refused without hurting other clients."""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tidemill.ps import (
    OptimizerConfig,
    PSClient,
    PSConfig,
    PSProtocolError,
    PSServer,
    PSUnavailable,
    TableConfig,
)
from tidemill.ps._local import connect_local, local_name
from tidemill.ps._wire import (
    HEADER,
    MAGIC,
    VERSION,
    ErrorCode,
    Header,
    Op,
    buffers_of,
    parse_header,
    recv_array,
    recv_header,
    recv_text,
    send_frames,
)

CONFIG = PSConfig((TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0)),), max_frame_bytes=1 << 16)


@pytest.fixture
def server() -> Iterator[PSServer]:
    with PSServer(CONFIG, index=0) as running:
        yield running


def test_a_push_frame_round_trips_through_a_socket_pair_byte_for_byte() -> None:
    ids = np.array([5, 1, 9], dtype=np.int64)
    grads = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = Header(
        Op.PUSH, request_id=7, table=0, epoch=2, step=-1, rank=1, world=3, rows=3, dim=4
    )
    header = header._replace(payload_bytes=ids.nbytes + grads.nbytes)
    left, right = socket.socketpair()
    with left, right:
        send_frames(left, [(header, buffers_of(ids, grads))])
        got = recv_header(right, 1 << 20)
        assert got == header
        assert np.array_equal(recv_array(right, (3,), np.int64), ids)
        assert np.array_equal(recv_array(right, (3, 4), np.float32), grads)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"magic": b"HTTP"}, "bad magic"),
        ({"version": VERSION + 1}, "protocol version"),
        ({"op": 200}, "unknown op 200"),
        ({"op": Op.PULL, "rows": 10, "payload": 79}, "imply 80"),
        ({"op": Op.PUSH, "rows": 1 << 40, "dim": 64, "payload": 1 << 62}, "over the limit"),
        ({"op": Op.STATS, "payload": (1 << 20) + 1}, "is over"),
    ],
)
def test_a_bad_header_is_refused_before_anything_is_allocated(
    fields: dict[str, int], message: str
) -> None:
    raw = HEADER.pack(
        fields.get("magic", MAGIC),
        fields.get("version", VERSION),
        fields.get("op", Op.PULL),
        0, 1, 0, 0, 0, 0, 1,
        fields.get("rows", 0),
        fields.get("dim", 0),
        fields.get("payload", 0),
    )  # fmt: skip
    with pytest.raises(PSProtocolError, match=message):
        parse_header(raw, max_frame_bytes=1 << 30)


def _raw_connection(server: PSServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=10)
    return sock


def _error_then_closed(sock: socket.socket) -> str:
    header = recv_header(sock, 1 << 20)
    assert header is not None and header.op == Op.ERROR
    assert header.flags == ErrorCode.PROTOCOL
    message = recv_text(sock, header)
    assert sock.recv(1) == b"", "the server should close the connection after a bad frame"
    return message


def test_bad_frames_get_an_error_and_a_close_while_a_good_client_keeps_working(
    server: PSServer,
) -> None:
    with PSClient(CONFIG, [server.address]) as good:
        good.pull("t", [1, 2])
        with _raw_connection(server) as wrong_magic:
            wrong_magic.sendall(b"GET / HTTP/1.1\r\n" + b"x" * 60)
            assert "bad magic" in _error_then_closed(wrong_magic)
        with _raw_connection(server) as too_big:
            header = Header(Op.PULL, table=0, rows=1 << 20, payload_bytes=8 << 20)
            too_big.sendall(header.pack())
            assert "over the limit of 65536" in _error_then_closed(too_big)
        with _raw_connection(server) as truncated:
            header = Header(Op.PULL, table=0, rows=100, payload_bytes=800)
            truncated.sendall(header.pack() + b"\0" * 100)
            truncated.shutdown(socket.SHUT_WR)
            assert "truncated frame" in _error_then_closed(truncated)
        with _raw_connection(server) as half_header:
            half_header.sendall(struct.pack("<4sH", MAGIC, VERSION))
        assert good.pull("t", [[1, 2], [3, 4]]).shape == (2, 2, 4)


def test_an_unknown_table_id_is_an_error_frame_and_the_connection_stays_usable(
    server: PSServer,
) -> None:
    with _raw_connection(server) as sock:
        ids = np.array([1], dtype=np.int64)
        send_frames(
            sock,
            [(Header(Op.PULL, request_id=1, table=5, rows=1, payload_bytes=8), buffers_of(ids))],
        )
        answer = recv_header(sock, 1 << 20)
        assert answer is not None and answer.flags == ErrorCode.UNKNOWN_TABLE
        message = recv_text(sock, answer)
        assert "table id 5 is not held" in message and "tables: ['t']" in message
        send_frames(
            sock,
            [(Header(Op.PULL, request_id=2, table=0, rows=1, payload_bytes=8), buffers_of(ids))],
        )
        rows = recv_header(sock, 1 << 20)
        assert rows is not None and (rows.op, rows.request_id, rows.rows, rows.dim) == (
            Op.ROWS,
            2,
            1,
            4,
        )


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract Unix sockets are Linux's"
)
def test_a_client_on_the_replicas_host_uses_its_unix_socket_and_agrees_with_one_over_tcp(
    server: PSServer,
) -> None:
    host, port = server.address
    with (
        PSClient(CONFIG, [(host, port)], rank=0, world=2) as local,
        PSClient(CONFIG, [(host, port)], rank=1, world=2, same_host_socket=False) as remote,
    ):
        assert (local.transports, remote.transports) == (["unix"], ["tcp"])
        start = local.pull("t", [3, 4])
        assert np.array_equal(remote.pull("t", [3, 4]), start)
        local.push("t", [3], np.ones((1, 4), np.float32))
        remote.push("t", [3, 4], np.full((2, 4), 2.0, np.float32))
        local.advance()
        remote.advance()
        assert np.array_equal(local.pull("t", [3, 4]), remote.pull("t", [3, 4]))
        assert np.allclose(local.pull("t", [3, 4]) - start, [[-3.0] * 4, [-2.0] * 4])
    server.stop()
    with pytest.raises(PSUnavailable):
        PSClient(CONFIG, [(host, port)])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="needs Linux abstract sockets and root, to listen as another user",
)
def test_a_unix_socket_squatted_by_another_user_is_not_used() -> None:
    address = ("127.0.0.1", 1)
    ready_read, ready_write = os.pipe()
    squatter = os.fork()
    if squatter == 0:  # the child: bind the replica's name as user nobody, then wait
        os.setuid(65534)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(local_name(address))
        sock.listen()
        os.write(ready_write, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready_read, 1) == b"x"
        assert connect_local(address, timeout_s=1.0) is None
    finally:
        os.kill(squatter, signal.SIGKILL)
        os.waitpid(squatter, 0)
        os.close(ready_read)
        os.close(ready_write)
