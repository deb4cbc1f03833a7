"""Length-prefixed messages with file descriptors over a Unix socket pair (writer and process)."""

from __future__ import annotations

import socket
import struct

_HEADER = struct.Struct("!Q")
MAX_FDS = 4


def send(sock: socket.socket, payload: bytes, fds: list[int] | None = None) -> None:
    """Send ``payload`` whole; ``fds`` travel with its header (``SCM_RIGHTS``)."""
    header = _HEADER.pack(len(payload))
    if fds:
        sent = socket.send_fds(sock, [header], fds)
        if sent < len(header):
            sock.sendall(header[sent:])
    else:
        sock.sendall(header)
    sock.sendall(payload)


def receive(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """The next message and the descriptors sent with it; None when the peer has closed."""
    header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS)
    if not header:
        return None
    rest = _exactly(sock, _HEADER.size - len(header))
    if rest is None:
        return None
    (length,) = _HEADER.unpack(header + rest)
    payload = _exactly(sock, length)
    return None if payload is None else (payload, fds)


def _exactly(sock: socket.socket, length: int) -> bytes | None:
    chunks: list[bytes] = []
    left = length
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
