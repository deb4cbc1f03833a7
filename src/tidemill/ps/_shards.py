"""A worker's two connections to each PS replica, and one exchange of frames over them.

A call sends its frames to every shard first and only then reads the answers, so the
shards work in parallel. A socket or framing failure breaks the client for good (the
elastic runtime restarts the step with a new one); an error a replica answers is raised
as the error of its code, after every answer of the exchange is read.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tidemill.ps._errors import (
    PSBadIds,
    PSCutMissing,
    PSError,
    PSProtocolError,
    PSServerError,
    PSTimeout,
    PSUnavailable,
    PSUnknownTable,
)
from tidemill.ps._local import connect_local
from tidemill.ps._psconfig import Address
from tidemill.ps._pulls import Frame
from tidemill.ps._wire import ErrorCode, Header, Op, recv_header, recv_text, send_frames

Answer = Callable[[Header, socket.socket], Any]
"""Reads the payload of an answer from the socket and returns what the caller keeps."""

ERRORS: dict[int, type[PSServerError]] = {
    ErrorCode.UNKNOWN_TABLE: PSUnknownTable,
    ErrorCode.TIMEOUT: PSTimeout,
    ErrorCode.CUT_MISSING: PSCutMissing,
}


class Shard:
    def __init__(
        self, index: int, address: Address, timeout_s: float, same_host_socket: bool
    ) -> None:
        self.index = index
        self.address = address
        self.label = f"PS shard {index} at {address[0]}:{address[1]}"
        self.table_ids: dict[str, int] = {}
        self.pull_sock = self._connect(timeout_s, same_host_socket)
        self.push_sock = self._connect(timeout_s, same_host_socket)

    @property
    def transport(self) -> str:
        """``"unix"`` when both connections go through the replica's Unix socket."""
        families = {sock.family for sock in (self.pull_sock, self.push_sock)}
        return "unix" if families == {socket.AF_UNIX} else "tcp"

    def _connect(self, timeout_s: float, same_host_socket: bool) -> socket.socket:
        local = connect_local(self.address, timeout_s) if same_host_socket else None
        if local is not None:
            return local
        try:
            sock = socket.create_connection(self.address, timeout=timeout_s)
        except OSError as exc:
            raise PSUnavailable(
                f"{self.label} is unreachable: {exc}; is the ps role running?",
                shard=self.index,
                address=f"{self.address[0]}:{self.address[1]}",
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def sock(self, channel: str) -> socket.socket:
        """The connection of ``channel``: ``"pull"``, or ``"push"`` (pushes and control)."""
        return self.pull_sock if channel == "pull" else self.push_sock

    def shutdown(self) -> None:
        for sock in (self.pull_sock, self.push_sock):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.pull_sock.close()
        self.push_sock.close()


class Shards:
    """Every shard's connections; :attr:`broken` once one of them failed."""

    def __init__(self) -> None:
        self.all: list[Shard] = []
        self.broken: PSUnavailable | None = None

    def __iter__(self) -> Iterator[Shard]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def exchange(
        self,
        channel: str,
        frames: dict[int, list[Frame]],
        answer: Answer,
        behind: Sequence[dict[int, list[Frame]]] = (),
    ) -> dict[int, list[Any]]:
        """Send every shard its frames (then those of ``behind``, whose answers are read
        later), then read every answer to ``frames``; raise the first error after."""
        if self.broken is not None:
            raise self.broken
        outgoing = {
            shard.index: [
                *frames.get(shard.index, []),
                *(frame for more in behind for frame in more[shard.index]),
            ]
            for shard in self.all
        }
        for shard in self.all:
            if outgoing[shard.index]:
                self.guarded(shard, send_frames, shard.sock(channel), outgoing[shard.index])
        return self.read_answers(channel, frames, answer)

    def read_answers(
        self, channel: str, frames: dict[int, list[Frame]], answer: Answer
    ) -> dict[int, list[Any]]:
        answers: dict[int, list[Any]] = {}
        first_error: PSError | None = None
        shards = [self.all[index] for index, batch in frames.items() if batch]
        for shard in shards:
            sock = shard.sock(channel)
            results = answers.setdefault(shard.index, [])
            for request, _ in frames[shard.index]:
                header = self.guarded(shard, recv_header, sock, 1 << 40)
                if header is None:
                    raise self.fail(shard, "closed the connection")
                if header.request_id != request.request_id:
                    raise self.fail(
                        shard,
                        f"answered request {header.request_id}, expected {request.request_id}",
                    )
                if header.op == Op.ERROR:
                    message = self.guarded(shard, recv_text, sock, header)
                    first_error = first_error or _server_error(shard, request, header, message)
                    results.append(None)
                    continue
                results.append(self.guarded(shard, answer, header, sock))
        if first_error is not None:
            raise first_error
        return answers

    def guarded(self, shard: Shard, action: Callable[..., Any], *args: Any) -> Any:
        """``action(*args)``; a socket or framing failure marks the client broken."""
        try:
            return action(*args)
        except (OSError, PSProtocolError) as exc:
            raise self.fail(shard, str(exc)) from exc

    def fail(self, shard: Shard, why: str) -> PSUnavailable:
        self.broken = PSUnavailable(
            f"{shard.label} is unavailable: {why}; this client cannot continue (the"
            " elastic runtime restarts the step with a new client)",
            shard=shard.index,
            address=f"{shard.address[0]}:{shard.address[1]}",
        )
        return self.broken


def _server_error(shard: Shard, request: Header, header: Header, message: str) -> PSError:
    text = f"{shard.label} refused {Op(request.op).name}: {message}"
    if header.flags == ErrorCode.BAD_IDS:
        return PSBadIds(text)
    return ERRORS.get(header.flags, PSServerError)(text, code=header.flags, shard=shard.index)
