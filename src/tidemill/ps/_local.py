"""Same-host connections: a Unix socket beside each replica's TCP port.

On loopback TCP a megabyte of rows costs several times what it costs through a Unix
socket (the TCP stack runs per segment on both sides), and a worker often shares its
host with PS replicas. So a replica also listens on a Linux abstract Unix socket named
after the exact ``host:port`` its TCP listener bound, and a client given that same
address tries the name first. Abstract names live in the network namespace and vanish
with the process, so a name that answers is that replica, on this host, now; anywhere
else (another host or namespace, macOS, another spelling of the host) the connect fails
at once and the client uses TCP. Any process of the namespace can bind an abstract
name, so the client talks only to a listener running as its own user (``SO_PEERCRED``);
one that is not gets TCP, where the port is the replica's own.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

from tidemill.ps._psconfig import Address

SEND_BUFFER_BYTES = 4 << 20


def local_name(address: Address) -> str:
    """The abstract socket name of the replica whose TCP listener bound ``address``."""
    return f"\0tidemill-ps/{address[0]}:{address[1]}"


def listen_local(address: Address) -> socket.socket | None:
    """A listening Unix socket for ``address``, or None where there can be none."""
    if not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(local_name(address))
        sock.listen()
    except OSError:
        sock.close()
        return None
    return widen(sock)


def widen(sock: socket.socket) -> socket.socket:
    """Room for a whole batch of rows in the socket (the kernel caps it at
    ``net.core.wmem_max``): a worker's frames to every replica go out without waiting
    for the first replica to read, so the replicas work in parallel."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    return sock


def connect_local(address: Address, timeout_s: float) -> socket.socket | None:
    """A connection to the replica at ``address`` through its Unix socket, or None."""
    if not sys.platform.startswith("linux"):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(local_name(address))
        _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:
        sock.close()
        return None
    if uid != os.getuid():
        sock.close()
        return None
    return widen(sock)
