"""Asks every PS replica for its STATS, on the master's event loop, without waiting on one.

Each shard gets one persistent connection (a PS replica serves a thread per connection,
so reconnecting every poll would cost it a thread each time). A poll asks every shard
at once and bounds each answer by ``timeout_s``: a replica that is down, slow or
answers garbage is marked failed in the :class:`~tidemill.master.ps_insight.PSInsightBook`
and its connection dropped (after a missed answer the stream position is unknown); the
next poll connects again. Frames are the PS wire format (:mod:`tidemill.ps._wire`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from typing import Any

from tidemill.api.status import PSInsightView
from tidemill.master.ps_insight import PSInsightBook
from tidemill.ps._errors import PSProtocolError
from tidemill.ps._wire import HEADER, MAX_TEXT_BYTES, Header, Op, parse_header

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

    def __init__(self, addresses: Sequence[Address], timeout_s: float = 2.0) -> None:
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self.book = PSInsightBook([f"{host}:{port}" for host, port in self.addresses])
        self._streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = [
            None for _ in self.addresses
        ]
        self._request_ids = 0

    async def poll_once(self) -> PSInsightView:
        """One STATS round over every shard at once; returns the book's view after it."""
        await asyncio.gather(*(self._poll(index) for index in range(len(self.addresses))))
        return self.book.view(time.time())

    async def close(self) -> None:
        for index in range(len(self._streams)):
            await self._drop(index)

    async def _poll(self, index: int) -> None:
        try:
            answer = await asyncio.wait_for(self._ask(index), self.timeout_s)
            self.book.answered(index, answer, time.time())
            return
        except TimeoutError:
            self.book.failed(index, f"no STATS answer within {self.timeout_s:g} s")
        except (OSError, EOFError, ValueError, KeyError, TypeError, PSProtocolError) as exc:
            self.book.failed(index, _reason(exc))
        await self._drop(index)

    async def _ask(self, index: int) -> dict[str, Any]:
        streams = self._streams[index]
        if streams is None:
            host, port = self.addresses[index]
            streams = await asyncio.open_connection(host, port)
            self._streams[index] = streams
        reader, writer = streams
        self._request_ids += 1
        request = Header(Op.STATS, request_id=self._request_ids)
        writer.write(request.pack())
        await writer.drain()
        header = parse_header(await reader.readexactly(HEADER.size), MAX_TEXT_BYTES)
        body = (await reader.readexactly(header.payload_bytes)).decode("utf-8", "replace")
        if header.request_id != request.request_id:
            raise PSProtocolError(f"answered request {header.request_id}, not {request.request_id}")
        if header.op == Op.ERROR:
            raise PSProtocolError(f"refused STATS: {body}")
        if header.op != Op.OK:
            raise PSProtocolError(f"answered STATS with {Op(header.op).name}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    async def _drop(self, index: int) -> None:
        streams, self._streams[index] = self._streams[index], None
        if streams is not None:
            streams[1].close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(streams[1].wait_closed(), self.timeout_s)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed the connection mid-answer"
    return str(exc) or type(exc).__name__
