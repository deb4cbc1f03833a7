"""A PS replica's connections: listeners, a thread per connection, the job's proof.

Each connection is read a frame at a time and answered by the replica (``answer``);
a refusal goes back as an error frame and the connection stays, a protocol error or
an unproven peer closes it. When the job has a credential, a connection must prove it
in its first frame (a HELLO) within :data:`PROVE_WITHIN_S`, and at most
:data:`MAX_UNPROVEN` wait to do so at once: a flood of strangers gets no thread each.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from tidemill.log_sampling import worth_logging
from tidemill.peer_user import other_user
from tidemill.ps._errors import PSProtocolError
from tidemill.ps._local import widen
from tidemill.ps._progress import Refused
from tidemill.ps._wire import ErrorCode, Header, Op, error_frame, recv_header, send_frames

log = logging.getLogger(__name__)
Frame = tuple[Header, list[Any]]

ACCEPT_POLL_S = 0.2
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
"""Errors of ``accept`` that pass once files or memory are freed."""
DRAIN_S = 1.0
DRAIN_BYTES = 1 << 24
PROVE_WITHIN_S = 10.0
"""A connection to a replica that asks for the job's proof must send its HELLO within
this long, so strangers that connect and stay silent do not each hold a thread."""
MAX_UNPROVEN = 64
"""At most this many connections wait to prove the job at once; more are closed at once.
A job's own clients prove themselves in their first frame, so only a flood of strangers
meets it, and the replica keeps its threads and memory while it lasts."""


@dataclass
class Peer:
    """One connection's standing: whether its HELLO proved the job's credential."""

    sock: socket.socket
    proven: bool


class Unproven(Exception):
    """A connection that has not proven the job's credential: refused, then closed."""


Answer = Callable[[socket.socket, Header, Peer], list[Frame]]
"""Reads the payload of a request (always, to stay in step) and returns the answer."""


class Connections:
    """Accept on ``listeners`` and serve each connection on a thread of its own.

    ``proof_required``: connections start unproven (see :meth:`proven`). A SHUTDOWN
    request is answered, then ``on_shutdown`` runs on a thread of its own.
    """

    def __init__(
        self,
        listeners: list[socket.socket],
        answer: Answer,
        *,
        replica: int,
        proof_required: bool,
        max_frame_bytes: int,
        on_shutdown: Callable[[], None],
    ) -> None:
        self._listeners = listeners
        self._answer = answer
        self._replica = replica
        self._proof_required = proof_required
        self._max_frame_bytes = max_frame_bytes
        self._on_shutdown = on_shutdown
        for listener in listeners:
            listener.settimeout(ACCEPT_POLL_S)
        self._stopping = threading.Event()
        self._threads: dict[socket.socket, threading.Thread] = {}
        self._guard = threading.Lock()
        self._unproven = 0
        """Connections that have not proven the job's credential yet (guarded)."""
        self._turned_away = 0
        self._starved = 0
        self._acceptors: list[threading.Thread] = []

    def start(self) -> None:
        self._acceptors = [
            threading.Thread(
                target=self._accept_loop, args=(listener,), name="ps-accept", daemon=True
            )
            for listener in self._listeners
        ]
        for acceptor in self._acceptors:
            acceptor.start()

    @property
    def open(self) -> int:
        """Client connections open now."""
        with self._guard:
            return len(self._threads)

    def stop(self) -> None:
        """Stop accepting, close every connection, join the threads (but the caller's)."""
        self._stopping.set()
        for acceptor in self._acceptors:
            if acceptor is not threading.current_thread():
                acceptor.join()
        with self._guard:
            threads = dict(self._threads)
        for sock in threads:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads.values():
            if thread is not threading.current_thread():
                thread.join()
        for listener in self._listeners:
            listener.close()

    def proven(self, peer: Peer) -> None:
        """``peer`` proved the job's credential: no deadline, no longer counted as waiting."""
        peer.proven = True
        peer.sock.settimeout(None)
        with self._guard:
            self._unproven -= 1

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    return  # the listener was closed: stopping
                self._out_of_files(exc)
                continue
            if not self._admit_unproven(sock):
                continue
            sock.settimeout(PROVE_WITHIN_S if self._proof_required else None)
            if sock.family == socket.AF_UNIX:
                widen(sock)
            else:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(sock,), name="ps-conn", daemon=True)
            with self._guard:
                self._threads[sock] = thread
            thread.start()

    def _out_of_files(self, exc: OSError) -> None:
        """Wait for files to be freed and accept again: the connections waiting stay in
        the listener's backlog (before, the accept thread ended, and the replica never
        took another connection)."""
        with self._guard:
            self._starved += 1
            starved = self._starved
        if worth_logging(starved):
            log.warning(
                "PS replica %d cannot accept a connection now (%s); trying again every "
                "%gs (%d times so far)",
                self._replica,
                exc.strerror,
                ACCEPT_POLL_S,
                starved,
            )
        self._stopping.wait(ACCEPT_POLL_S)

    def _admit_own_user(self, sock: socket.socket) -> bool:
        """With no credential to prove (auth off), take connections from this machine's
        user of the job only (see :mod:`tidemill.peer_user`); close another's at once."""
        uid = other_user(sock)
        if uid is None:
            return True
        self._turn_away(
            sock,
            f"takes connections only from its own user (uid {os.geteuid()}) while the job "
            f"has no credential (auth off): closed one from uid {uid}",
        )
        return False

    def _admit_unproven(self, sock: socket.socket) -> bool:
        """Count a new connection among those yet to prove the job, or close it when
        :data:`MAX_UNPROVEN` wait already."""
        if not self._proof_required:
            return self._admit_own_user(sock)
        with self._guard:
            if self._unproven < MAX_UNPROVEN:
                self._unproven += 1
                return True
        self._turn_away(
            sock,
            f"{MAX_UNPROVEN} connections are yet to prove the job's credential; closed a "
            "new one at once",
        )
        return False

    def _turn_away(self, sock: socket.socket, why: str) -> None:
        """Close ``sock`` unanswered; the log says why for the first and every 1,000th,
        so knocking cannot fill it."""
        with self._guard:
            self._turned_away += 1
            turned_away = self._turned_away
        if worth_logging(turned_away):
            log.warning("PS replica %d %s (%d turned away so far)", self._replica, why, turned_away)
        sock.close()

    def _serve(self, sock: socket.socket) -> None:
        peer = Peer(sock, proven=not self._proof_required)
        try:
            while not self._stopping.is_set():
                try:
                    header = recv_header(sock, self._max_frame_bytes)
                except PSProtocolError as exc:
                    refuse_and_close(sock, error_frame(None, ErrorCode.PROTOCOL, str(exc)))
                    return
                if header is None:
                    return
                try:
                    frames = self._answer(sock, header, peer)
                except Unproven as exc:
                    refuse_and_close(sock, error_frame(header, ErrorCode.UNPROVEN, str(exc)))
                    return
                except Refused as exc:
                    frames = [error_frame(header, exc.code, str(exc))]
                except PSProtocolError as exc:
                    refuse_and_close(sock, error_frame(header, ErrorCode.PROTOCOL, str(exc)))
                    return
                except OSError:
                    raise
                except Exception as exc:
                    op = Op(header.op).name
                    log.exception("PS replica %d failed on %s", self._replica, op)
                    message = f"{op} failed on PS replica {self._replica}: {exc!r}"
                    frames = [error_frame(header, ErrorCode.INTERNAL, message)]
                send_frames(sock, frames)
                if header.op == Op.SHUTDOWN:
                    threading.Thread(target=self._on_shutdown, name="ps-stop", daemon=True).start()
                    return
        except OSError:
            return
        finally:
            with self._guard:
                self._threads.pop(sock, None)
                if not peer.proven:
                    self._unproven -= 1
            sock.close()


def refuse_and_close(sock: socket.socket, frame: Frame) -> None:
    """Send the error, then close without a reset: the peer reads the error, then EOF.

    Unread bytes at close make the kernel send RST, which can destroy the error frame
    before the peer reads it; so shut the write side and drain (bounded) first.
    """
    send_frames(sock, [frame])
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(DRAIN_S)
    drained = 0
    try:
        while drained < DRAIN_BYTES and (chunk := sock.recv(1 << 16)):
            drained += len(chunk)
    except OSError:
        pass
