"""Which user is at the other end of a loopback connection (Linux), so that what
tidemill serves without a credential serves its own user only.

Without auth (``tidemill run``, ``tidemill server`` on loopback) the server lets its
caller do anything, and a job's master and parameter servers take any replica; on a
machine shared by several people any of them could reach those ports, run commands as
the server's owner or join a job. The kernel knows which user owns each socket: one
``sock_diag`` request (what ``ss -e`` asks) finds the client's end of a connection by
its addresses and ports and answers with its uid, in microseconds and whatever else is
connected.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from typing import Any, Protocol

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


class Connected(Protocol):
    """A connected socket: ``socket.socket``, or asyncio's view of one."""

    @property
    def family(self) -> int: ...

    def getpeername(self) -> Any: ...

    def getsockname(self) -> Any: ...

    def getsockopt(self, level: int, option: int, length: int) -> bytes: ...


def other_user(connection: Connected) -> int | None:
    """The uid of another user of this machine at the other end of ``connection`` (a
    loopback TCP or a Unix connection); None for this process's user, a peer on another
    machine (or pod), or where the kernel cannot say."""
    owner = peer_uid(connection)
    return owner if owner is not None and owner != os.geteuid() else None


def peer_uid(connection: Connected) -> int | None:
    """The uid at the other end of ``connection`` (a loopback TCP or a Unix connection);
    None for a peer on another machine (or pod), or where the kernel cannot say."""
    try:
        if connection.family == socket.AF_UNIX:
            credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            owner: int | None = struct.unpack("3i", credentials)[1]
        elif connection.family in (socket.AF_INET, socket.AF_INET6):
            remote, local = connection.getpeername(), connection.getsockname()
            address = ipaddress.ip_address(remote[0])
            # On a dual-stack listener an IPv4 peer shows as ::ffff:127.0.0.1.
            if not (getattr(address, "ipv4_mapped", None) or address).is_loopback:
                return None
            owner = socket_owner((remote[0], remote[1]), (local[0], local[1]))
        else:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return owner


__all__ = ["Connected", "can_tell_users", "other_user", "peer_uid", "socket_owner"]
