"""A worker's line to its job master: one TCP connection, a listener thread, reconnects.

The listener thread reads the master's messages while the training thread computes,
parsing each once into its typed form (:func:`tidemill.wire.parse_master`):
``change``/``abort`` only raise flags (and ``abort`` breaks the current process group
through ``on_abort``), a ``leased`` reply goes to the request waiting for it, everything
else goes to an inbox the training thread reads between epochs. Heartbeats go out
from the same thread, so no step ever waits on the master. When the master dies
(kill -9, restart on the same port) the thread reconnects and registers again saying
where this worker stands (``member`` of epoch N, ``ready`` at step S, or ``new``), so
a restarted master can resume without stopping anyone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from tidemill.wire import (
    Abort,
    Change,
    Commit,
    Done,
    Epoch,
    Evicted,
    Finished,
    Formed,
    Heartbeat,
    Lease,
    Leased,
    Leave,
    MasterMessage,
    ProtocolError,
    Refused,
    Register,
    Registered,
    Sync,
    WorkerMessage,
    decode,
    encode,
    parse_master,
    split_address,
)

HEARTBEAT_S = 2.0
RECONNECT_S = 0.2
InboxMessage = Registered | Refused | Epoch | Evicted | Finished
"""What the training thread reads between epochs (the rest is handled on arrival)."""
REQUEST_RESEND_S = 5.0
"""A request unanswered this long is sent again (same id: the master answers it once)."""


class MasterClient:
    """Talks to the master at ``address`` as ``replica``; see the module docstring.

    ``on_abort(epoch)`` runs on the listener thread when the master aborts an epoch.
    """

    def __init__(
        self,
        address: str,
        replica: str,
        pid: int,
        on_abort: Callable[[int], None],
        heartbeat_s: float = HEARTBEAT_S,
        proof: str | None = None,
    ) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.replica = replica
        self.pid = pid
        self.on_abort = on_abort
        self.heartbeat_s = heartbeat_s
        self.proof = proof
        """Sent with every ``register``: the job's credential proven (``peer_proof``)."""
        self.inbox: queue.Queue[InboxMessage] = queue.Queue()
        self.status = "new"
        """What a re-registration claims: ``new``, ``member`` or ``ready``."""
        self.epoch: int | None = None
        self.step: int | None = None
        self.data: Any = None
        self._notice = 0
        """Highest epoch the master asked to change or abort."""
        self._aborted = 0
        self._pending_commit: Commit | None = None
        self._replies: queue.Queue[Leased] = queue.Queue()
        self._request_id = 0
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        self._closed = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._listen, name="tidemill-master", daemon=True)

    def start(self) -> None:
        self._down_since = time.monotonic()
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)

    # --- what the training thread asks ----------------------------------------------

    def change_requested(self, epoch: int) -> bool:
        return self._notice >= epoch

    def aborted(self, epoch: int) -> bool:
        return self._aborted >= epoch

    def unreachable_s(self) -> float:
        """How long the master has been out of reach (0 while connected)."""
        down = self._down_since
        return 0.0 if down is None else time.monotonic() - down

    def next_message(self, timeout_s: float) -> InboxMessage | None:
        try:
            return self.inbox.get(timeout=timeout_s)
        except queue.Empty:
            return None

    # --- what the training thread tells ---------------------------------------------

    def member_of(self, epoch: int) -> None:
        self.status, self.epoch, self.step, self.data = "member", epoch, None, None

    def formed(self, epoch: int) -> None:
        self._send(Formed(epoch))

    def sync(self, epoch: int, step: int | None, failed: bool, data: Any) -> None:
        self.status, self.epoch, self.step, self.data = "ready", epoch, step, data
        self._send(Sync(epoch, step, failed, data))

    def commit(self, epoch: int, step: int, data: Any, extras: Any) -> None:
        """Never blocks on the master: while it is away the latest commit waits for it."""
        message = Commit(epoch, step, data, extras)
        if not self._send(message):
            self._pending_commit = message

    def request(self, message: Lease, give_up: Callable[[], bool]) -> Leased | None:
        """Send ``message`` and wait for its reply (resending while the master is away);
        None once ``give_up()`` is true. Only the training thread asks."""
        self._request_id += 1
        message = dataclasses.replace(message, id=self._request_id)
        sent_at: float | None = None
        while not give_up():
            if sent_at is None or time.monotonic() - sent_at > REQUEST_RESEND_S:
                sent_at = time.monotonic() if self._send(message) else None
            try:
                reply = self._replies.get(timeout=0.05)
            except queue.Empty:
                continue
            if reply.id == self._request_id:
                return reply
        return None

    def notify(self, message: WorkerMessage) -> bool:
        """Fire and forget (insight reports): dropped while the master is away."""
        return self._send(message)

    def leave(self, grace_s: float = 5.0) -> None:
        """Say goodbye, waiting briefly for a master that is restarting."""
        self._final(Leave(), grace_s)

    def done(self, step: int, grace_s: float = 5.0) -> None:
        self._final(Done(step), grace_s)

    def _final(self, message: WorkerMessage, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        while not self._send(message) and time.monotonic() < deadline:
            time.sleep(RECONNECT_S)

    def _send(self, message: WorkerMessage) -> bool:
        with self._send_lock:
            sock = self._sock
            if sock is None:
                return False
            try:
                sock.sendall(encode(message))
            except OSError:
                return False
            return True

    # --- the listener thread ------------------------------------------------------------

    def _listen(self) -> None:
        while not self._closed.is_set():
            sock = self._connect()
            if sock is None:
                self._closed.wait(RECONNECT_S)
                continue
            try:
                self._read(sock)
            except (OSError, ProtocolError):
                pass
            finally:
                with self._send_lock:
                    self._sock = None
                if self._down_since is None:
                    self._down_since = time.monotonic()
                with contextlib.suppress(OSError):
                    sock.close()

    def _connect(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.heartbeat_s)
        except OSError:
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.heartbeat_s / 2)
        register = Register(
            self.replica, self.pid, self.status, self.epoch, self.step, self.data, self.proof
        )
        try:
            sock.sendall(encode(register))
        except OSError:
            sock.close()
            return None
        with self._send_lock:
            self._sock = sock
        self._down_since = None
        commit, self._pending_commit = self._pending_commit, None
        if commit is not None and self.status == "member" and commit.epoch == self.epoch:
            self._send(commit)
        return sock

    def _read(self, sock: socket.socket) -> None:
        buffer = b""
        beat = time.monotonic()
        while not self._closed.is_set():
            if time.monotonic() - beat >= self.heartbeat_s:
                beat = time.monotonic()
                self._send(Heartbeat())
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                self._dispatch(parse_master(decode(line)))

    def _dispatch(self, message: MasterMessage) -> None:
        match message:
            case Change(epoch=epoch):
                self._notice = max(self._notice, epoch)
            case Abort(epoch=epoch):
                self._notice = max(self._notice, epoch)
                self._aborted = max(self._aborted, epoch)
                self.on_abort(epoch)
            case Leased():
                self._replies.put(message)
            case Refused() | Evicted() | Finished():
                self.inbox.put(message)
                self._closed.set()
            case Registered() | Epoch():
                self.inbox.put(message)
