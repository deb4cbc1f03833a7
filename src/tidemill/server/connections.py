"""How many connections the server holds, and how long one may take to send a request.

uvicorn accepts every connection it is offered and waits for a request forever: a
client that opens connections and sends nothing, or half a request head, or a body a
byte at a time (slowloris), holds a file descriptor each. At the process's limit of
open files the controller cannot open ``/proc`` or a replica's log either, and running
jobs of every tenant failed (``ControllerError: Too many open files``) while asyncio
logged a traceback per refused accept. Two bounds, in uvicorn's own HTTP/1.1 protocol:

- at most ``max_connections`` open at once (half the open-file limit, at most 4,096,
  by default): one more is answered ``503`` with ``Retry-After`` and closed before any
  of it is read, so file descriptors stay for the controller and the replicas. The
  listening socket's backlog, which is also how many connections asyncio accepts in one
  go before any of them is answered, is an eighth of that (:attr:`ConnectionBounds.
  accept_batch`): accepting 2,048 at once could pass the limit before the refused ones
  closed, and Python 3.11's accept loop then logs a traceback for every one of the 2,048
  it tries, and keeps at it;
- a request (head and body) must arrive within ``request_read_s`` of the connection's
  start or of the previous response's end: else ``408`` and closed, as Go's
  ``ReadTimeout`` and nginx's ``client_header_timeout`` do. Answers are not timed: a
  log that follows a job streams for as long as the job runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from uvicorn.protocols.http.h11_impl import H11Protocol

from tidemill.log_sampling import worth_logging
from tidemill.server.middleware import error_body

log = logging.getLogger(__name__)

REQUEST_READ_S = 30.0
"""How long a request may take to arrive (a 1 MiB job file at 40 KiB/s)."""
MOST_CONNECTIONS = 4096


def default_max_connections() -> int:
    """Half the soft limit of open files, between 64 and :data:`MOST_CONNECTIONS`: the
    other half is the store's, the engine's (pipes, logs, ``/proc``) and the replicas'."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MOST_CONNECTIONS
    return max(64, min(MOST_CONNECTIONS, soft // 2))


@dataclass
class ConnectionBounds:
    """The bounds of one server's connections, and how often each was enforced."""

    max_connections: int = field(default_factory=default_max_connections)
    request_read_s: float = REQUEST_READ_S
    refused: dict[int, int] = field(default_factory=dict)
    """Connections answered and closed so far, by status (503 busy, 408 too slow)."""
    open_now: int = 0
    """Connections admitted and not yet closed."""

    @property
    def accept_batch(self) -> int:
        """The listening socket's backlog (uvicorn's ``backlog``): see the module."""
        return max(16, min(2048, self.max_connections // 8))

    def count(self, status: int, message: str) -> None:
        seen = self.refused[status] = self.refused.get(status, 0) + 1
        if worth_logging(seen):
            log.warning("%s (%d such connections so far)", message, seen)


def bounded_protocol(bounds: ConnectionBounds) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol held to ``bounds`` (``uvicorn.Config(http=...)``)."""

    class BoundedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _reading_since = 0.0
        _admitted = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._reading_since = self.loop.time()
            if len(self.connections) > bounds.max_connections:
                self._answer_and_close(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    "TooManyConnections",
                    f"this server holds at most {bounds.max_connections} connections at once "
                    "and all are open; try again in a moment (an operator can raise the "
                    "limit with tidemill server --max-connections)",
                )
                return
            self._admitted = True
            bounds.open_now += 1
            self._deadline = self.loop.call_later(bounds.request_read_s, self._check_reading)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._reading_since = self.loop.time()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            if self._admitted:
                self._admitted = False
                bounds.open_now -= 1
            super().connection_lost(exc)

        def _waiting_for_request(self) -> bool:
            """No request yet, the last one answered, or its body still coming."""
            cycle = self.cycle
            if cycle is None or cycle.response_complete:
                return True
            return cycle.more_body and not cycle.response_started

        def _check_reading(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return
            waiting = self._waiting_for_request()
            left_s = self._reading_since + bounds.request_read_s - self.loop.time()
            if waiting and left_s <= 0:
                self._answer_and_close(
                    HTTPStatus.REQUEST_TIMEOUT,
                    "RequestTimeout",
                    f"the request did not arrive whole within {bounds.request_read_s:g}s "
                    "of the connection's start (or of the previous answer); send it at once",
                )
                return
            delay_s = left_s if waiting else bounds.request_read_s
            self._deadline = self.loop.call_later(delay_s, self._check_reading)

        def _answer_and_close(self, status: HTTPStatus, code: str, message: str) -> None:
            """A whole answer written straight to the socket, then closed: nothing of
            the request is read, and no handler runs (or it sees a disconnect)."""
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            bounds.count(status.value, f"{status.value} to {peer}: {message}")
            body = json.dumps(error_body(code, message, [])).encode()
            retry = "retry-after: 1\r\n" if status is HTTPStatus.SERVICE_UNAVAILABLE else ""
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                "content-type: application/json\r\n"
                f"content-length: {len(body)}\r\n{retry}connection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
            self.transport.close()

    return BoundedH11Protocol


class ConnectionCollector(Collector):
    """``/metrics``: connections open now and those refused, so an operator sees a
    flood (and a limit too low) before users do."""

    def __init__(self, bounds: ConnectionBounds) -> None:
        self.bounds = bounds

    def collect(self) -> Iterator[Metric]:
        open_now = GaugeMetricFamily(
            "tidemill_http_connections", "HTTP connections open now (at most the limit)"
        )
        open_now.add_metric([], self.bounds.open_now)
        limit = GaugeMetricFamily(
            "tidemill_http_connections_limit", "HTTP connections the server holds at most"
        )
        limit.add_metric([], self.bounds.max_connections)
        refused = CounterMetricFamily(
            "tidemill_http_connections_refused",
            "HTTP connections answered and closed unread: 503 over the limit, 408 too slow",
            labels=["status"],
        )
        for status in (408, 503):
            refused.add_metric([str(status)], self.bounds.refused.get(status, 0))
        yield from (open_now, limit, refused)


__all__ = [
    "REQUEST_READ_S",
    "ConnectionBounds",
    "ConnectionCollector",
    "bounded_protocol",
    "default_max_connections",
]
