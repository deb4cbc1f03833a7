"""Asks every PS replica for its STATS, on the master's event loop, without waiting on one.

A poll asks every shard at once, each over a connection of its own that closes with
the answer: a SIGTERM'd replica serves on while clients stay connected, and the
master's polls must not hold it up. Each answer is bounded by ``timeout_s``; a replica
that is down, slow or answers garbage is marked failed in the
:class:`~tidemill.master.ps_insight.PSInsightBook`. Frames are the PS wire format
(:mod:`tidemill.ps._wire`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from tidemill.api.status import PSInsightView
from tidemill.master.ps_insight import PSInsightBook
from tidemill.ps._errors import PSProtocolError
from tidemill.ps._wire import HEADER, MAX_TEXT_BYTES, Header, Op, json_frame, parse_header

Address = tuple[str, int]


class PSStatsPoller:
    """Polls the PS replicas at ``addresses`` (index order) into :attr:`book`.

    >>> import asyncio
    >>> from tidemill.ps import OptimizerConfig, PSConfig, PSServer, TableConfig
    >>> config = PSConfig((TableConfig("user", 4, OptimizerConfig("sgd", lr=0.1)),))
    >>> with PSServer(config, index=0) as server:
    ...     poller = PSStatsPoller([server.address], timeout_s=2.0)
    ...     view = asyncio.run(poller.poll_once())
    >>> view.tables[0].name, view.shards[0].reachable
    ('user', True)
    """

    def __init__(
        self, addresses: Sequence[Address], timeout_s: float = 2.0, proof: str | None = None
    ) -> None:
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.proof = proof
        """Sent in the HELLO before each STATS (the job's credential proven)."""
        self.book = PSInsightBook([f"{host}:{port}" for host, port in self.addresses])

    async def poll_once(self) -> PSInsightView:
        """One STATS round over every shard at once; returns the book's view after it."""
        await asyncio.gather(*(self._poll(index) for index in range(len(self.addresses))))
        return self.book.view(time.time())

    async def _poll(self, index: int) -> None:
        try:
            answer = await asyncio.wait_for(
                _ask(*self.addresses[index], self.proof), self.timeout_s
            )
            self.book.answered(index, answer, time.time())
        except TimeoutError:
            self.book.failed(index, f"no STATS answer within {self.timeout_s:g} s")
        except (OSError, EOFError, ValueError, KeyError, TypeError, PSProtocolError) as exc:
            self.book.failed(index, _reason(exc))


async def _ask(host: str, port: int, proof: str | None) -> dict[str, Any]:
    """A HELLO (no tables: it only proves the job's credential), then one STATS, on a
    connection of its own."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        hello, payload = json_frame(Header(Op.HELLO, request_id=1), {"tables": [], "proof": proof})
        writer.write(hello.pack() + b"".join(payload) + Header(Op.STATS, request_id=2).pack())
        await writer.drain()
        await _answer(reader, "HELLO", 1)
        answer: dict[str, Any] = json.loads(await _answer(reader, "STATS", 2))
    finally:
        writer.close()
    return answer


async def _answer(reader: asyncio.StreamReader, op: str, request_id: int) -> str:
    """The body of the OK answer to request ``request_id``, or :class:`PSProtocolError`."""
    header = parse_header(await reader.readexactly(HEADER.size), MAX_TEXT_BYTES)
    body = (await reader.readexactly(header.payload_bytes)).decode("utf-8", "replace")
    if header.op == Op.ERROR:
        raise PSProtocolError(f"refused {op}: {body}")
    if header.op != Op.OK or header.request_id != request_id:
        raise PSProtocolError(f"answered {op} with {Op(header.op).name} #{header.request_id}")
    return body


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed the connection mid-answer"
    return str(exc) or type(exc).__name__
