"""The PS data path on the wire: a fixed binary header, then raw array bytes.

Every frame is one :data:`HEADER` (little-endian ``struct``) followed by
``payload_bytes`` of payload. Array payloads are the arrays' own bytes: a sender hands
memoryviews of its numpy buffers to one ``socket.sendmsg`` (gather, no concatenation
copy) and a receiver ``recv_into``s straight into freshly allocated numpy arrays, after
checking the header's sizes agree with each other and with ``max_frame_bytes``.

Ops (requests carry ``table`` = the id the shard gave that table in its HELLO answer):

========  ===============================================  ==========================
op        request payload                                  answer
========  ===============================================  ==========================
HELLO     JSON ``{"tables": [name, ...], "proof": p}``     OK JSON ``{name: {id, dim}}``
PULL      ``int64[rows]`` ids (``dim`` 0)                  ROWS ``float32[rows, dim]``
PUSH      ``int64[rows]`` ids, ``float32[rows, dim]``      OK (``rows`` = rows applied)
STATS     none                                             OK JSON per-table counters
BEGIN     none (``step`` = version)                        OK
ROLLBACK  none                                             OK
EXPORT    JSON ``{"folder", "since_version"}``             OK JSON ``{table: file}``
LOAD      JSON ``{"folder", "replace"}``                   OK
SHUTDOWN  none                                             OK, then the server stops
========  ===============================================  ==========================

A replica started with the job's proof (:mod:`tidemill.peer_proof`) answers only a
connection whose first frame is a HELLO carrying it; anything else gets an ERROR
(``UNPROVEN``) and the connection is closed.

Any request may instead be answered by ERROR: ``flags`` is an error code, the payload a
UTF-8 message. A frame with a wrong magic, version, op or sizes gets an ERROR and the
connection is closed: after a bad header the stream position cannot be trusted.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Sequence
from enum import IntEnum
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from tidemill.ps._errors import PSProtocolError

MAGIC = b"TMPS"
VERSION = 1
HEADER = struct.Struct("<4sHHIQIQqIIQIQ")
"""magic, version, op, flags, request id, table, epoch, step, rank, world, rows, dim,
payload bytes."""
MAX_TEXT_BYTES = 1 << 20
"""JSON and error payloads are small; anything bigger is a broken or hostile peer."""
NO_TABLE = 0xFFFFFFFF


class Op(IntEnum):
    HELLO = 1
    PULL = 2
    PUSH = 3
    STATS = 4
    BEGIN = 5
    ROLLBACK = 6
    EXPORT = 7
    LOAD = 8
    SHUTDOWN = 9
    OK = 64
    ROWS = 65
    ERROR = 127


class ErrorCode(IntEnum):
    PROTOCOL = 1
    BAD_REQUEST = 2
    UNKNOWN_TABLE = 3
    BAD_IDS = 4
    TIMEOUT = 5
    STALE_EPOCH = 6
    INTERNAL = 7
    CUT_MISSING = 8
    UNPROVEN = 9
    """The connection did not prove the job's credential (see :mod:`tidemill.peer_proof`)."""


_OPS = frozenset(int(op) for op in Op)


class Header(NamedTuple):
    op: int
    request_id: int = 0
    table: int = NO_TABLE
    epoch: int = 0
    step: int = 0
    rank: int = 0
    world: int = 1
    rows: int = 0
    dim: int = 0
    payload_bytes: int = 0
    flags: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC,
            VERSION,
            self.op,
            self.flags,
            self.request_id,
            self.table,
            self.epoch,
            self.step,
            self.rank,
            self.world,
            self.rows,
            self.dim,
            self.payload_bytes,
        )


def expected_payload(header: Header) -> int | None:
    """The exact payload size an array op implies, or None for a text op (bounded apart)."""
    if header.op == Op.PULL:
        return header.rows * 8
    if header.op == Op.PUSH:
        return header.rows * 8 + header.rows * header.dim * 4
    if header.op == Op.ROWS:
        return header.rows * header.dim * 4
    return None


def parse_header(raw: bytes | bytearray | memoryview, max_frame_bytes: int) -> Header:
    """Unpack and check a header before anything is allocated for its payload."""
    (magic, version, op, flags, request_id, table, epoch, step, rank, world, rows, dim, payload) = (
        HEADER.unpack(raw)
    )
    if magic != MAGIC:
        raise PSProtocolError(f"bad magic {bytes(magic)!r}; expected {MAGIC!r}")
    if version != VERSION:
        raise PSProtocolError(f"protocol version {version} is not supported; this is {VERSION}")
    if op not in _OPS:
        raise PSProtocolError(f"unknown op {op}; known: {sorted(_OPS)}")
    header = Header(op, request_id, table, epoch, step, rank, world, rows, dim, payload, flags)
    if header.payload_bytes > max_frame_bytes:
        raise PSProtocolError(
            f"{Op(op).name} frame of {header.payload_bytes} bytes is over the limit of"
            f" {max_frame_bytes} (PSConfig.max_frame_bytes); send smaller batches"
        )
    expected = expected_payload(header)
    if expected is None and header.payload_bytes > MAX_TEXT_BYTES:
        raise PSProtocolError(
            f"{Op(op).name} payload of {header.payload_bytes} bytes is over {MAX_TEXT_BYTES}"
        )
    if expected is not None and header.payload_bytes != expected:
        raise PSProtocolError(
            f"{Op(op).name} payload is {header.payload_bytes} bytes but rows={header.rows},"
            f" dim={header.dim} imply {expected}"
        )
    return header


def buffers_of(*arrays: npt.NDArray[Any]) -> list[memoryview]:
    """Byte views of C-contiguous arrays, for :func:`send_frames` (no copy)."""
    return [np.ascontiguousarray(array).reshape(-1).view(np.uint8).data for array in arrays]


def send_frames(sock: socket.socket, frames: Sequence[tuple[Header, Sequence[Any]]]) -> None:
    """Send headers and payload buffers with gathering ``sendmsg`` calls until all are out."""
    views: list[memoryview] = []
    for header, payload in frames:
        views.append(memoryview(header.pack()))
        views.extend(memoryview(part).cast("B") for part in payload if len(part))
    while views:
        sent = sock.sendmsg(views[:512])
        done = 0
        while sent and sent >= len(views[done]):
            sent -= len(views[done])
            done += 1
        del views[:done]
        if sent:
            views[0] = views[0][sent:]


def recv_exact(sock: socket.socket, view: memoryview, what: str) -> None:
    """Fill ``view`` from the socket; a close midway is a truncated frame."""
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if count == 0:
            raise PSProtocolError(f"truncated frame: {what} ended after {got} of {len(view)} bytes")
        got += count


def recv_header(sock: socket.socket, max_frame_bytes: int) -> Header | None:
    """The next header, or None when the peer closed cleanly between frames."""
    raw = bytearray(HEADER.size)
    view = memoryview(raw)
    first = sock.recv_into(view)
    if first == 0:
        return None
    recv_exact(sock, view[first:], "header")
    return parse_header(raw, max_frame_bytes)


def recv_array(sock: socket.socket, shape: tuple[int, ...], dtype: type[Any]) -> npt.NDArray[Any]:
    array = np.empty(shape, dtype=dtype)
    if array.size:
        recv_exact(sock, array.data.cast("B"), f"{dtype.__name__} payload")
    return array


def recv_text(sock: socket.socket, header: Header) -> str:
    raw = bytearray(header.payload_bytes)
    recv_exact(sock, memoryview(raw), "text payload")
    return raw.decode("utf-8", errors="replace")


def text_frame(header: Header, text: str) -> tuple[Header, list[bytes]]:
    body = text.encode("utf-8")[:MAX_TEXT_BYTES]
    return header._replace(payload_bytes=len(body)), [body]


def json_frame(header: Header, value: Any) -> tuple[Header, list[bytes]]:
    return text_frame(header, json.dumps(value, sort_keys=True))


def error_frame(
    request: Header | None, code: ErrorCode, message: str
) -> tuple[Header, list[bytes]]:
    base = Header(Op.ERROR) if request is None else request._replace(op=Op.ERROR)
    return text_frame(base._replace(rows=0, dim=0, flags=int(code)), message)
