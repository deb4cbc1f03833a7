"""Which user is at the other end of a loopback connection (Linux), so that an open
server serves its own user only.

A server without ``--auth`` on loopback (``tidemill server``, ``tidemill run``) lets its
caller do anything, replicas running as the server's user included; on a machine shared
by several people any of them could reach 127.0.0.1:8500 and run commands as the
server's owner. The kernel knows which user owns each socket: one ``sock_diag`` request
(what ``ss -e`` asks) finds the client's end of a connection by its addresses and ports
and answers with its uid, in microseconds and whatever else is connected.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tidemill.server.middleware import error_body

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
ALL_TCP_STATES = 0xFFFFFFFF
_HEADER = struct.Struct("=IHHII")
"""nlmsghdr: length, type, flags, sequence, port id."""
_UID_OFFSET = _HEADER.size + 4 + 48 + 12
"""Where inet_diag_msg keeps idiag_uid: after family/state/timer/retrans, the 48-byte
socket id, and expires, rqueue, wqueue."""


def _address(family: int, host: str) -> bytes:
    return socket.inet_pton(family, host).ljust(16, b"\0")


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket whose own end is ``local`` and whose peer is
    ``remote``; None when there is no such socket (it closed). Raises OSError where the
    kernel does not answer ``sock_diag`` (not Linux, or a sandbox that forbids it)."""
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    socket_id = (
        struct.pack("!HH", local[1], remote[1])
        + _address(family, local[0])
        + _address(family, remote[0])
        + struct.pack("=III", 0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, ALL_TCP_STATES) + socket_id
    header = _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as diag:
        diag.settimeout(1.0)
        diag.send(header + request)
        answer = diag.recv(4096)
    kind = _HEADER.unpack_from(answer)[1]
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, _HEADER.size)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, os.strerror(code))
    if kind != SOCK_DIAG_BY_FAMILY or len(answer) < _UID_OFFSET + 4:
        raise OSError(errno.EPROTO, f"unexpected sock_diag answer of type {kind}")
    uid: int = struct.unpack_from("=I", answer, _UID_OFFSET)[0]
    return uid


def can_tell_users() -> bool:
    """Whether :func:`socket_owner` works here: asked of a connection made for the
    question, it must name this process's user."""
    try:
        with (
            socket.create_server(("127.0.0.1", 0)) as server,
            socket.create_connection(server.getsockname()) as client,
        ):
            server.accept()[0].close()
            return socket_owner(client.getsockname(), client.getpeername()) == os.geteuid()
    except (OSError, AttributeError):
        return False


class OwnUserOnly:
    """Refuse a call from another user of this machine, before anything is read."""

    def __init__(self, app: ASGIApp, uid: int | None) -> None:
        self.app = app
        self.uid = uid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client, server = scope.get("client"), scope.get("server")
        if self.uid is None or scope["type"] != "http" or not client or not server:
            await self.app(scope, receive, send)
            return
        try:
            owner = socket_owner((client[0], client[1]), (server[0], server[1]))
        except OSError:
            owner = None
        if owner == self.uid:
            await self.app(scope, receive, send)
            return
        who = f"uid {owner}" if owner is not None else "a user the kernel did not name"
        message = (
            f"this server runs open (no --auth) for its own user (uid {self.uid}) only, and "
            f"this call comes from {who}: to share it, its owner starts it with --auth and "
            "gives you a token (tidemill token create)"
        )
        response = JSONResponse(error_body("AnotherUser", message, []), 403)
        await response(scope, receive, send)


__all__ = ["OwnUserOnly", "can_tell_users", "socket_owner"]
