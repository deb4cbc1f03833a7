"""What one client or one job may take from the server: body size, open log streams,
event and metric rates, kept metric history. Each bound is a named default;
:class:`Limits` carries them into the app."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from tidemill.api.limits import MAX_DOCUMENT_BYTES, MAX_NESTING_DEPTH
from tidemill.api.metrics import METRIC_REPORTS_PER_JOB

INT32_MAX = 2**31 - 1
BODY_LIMIT_BYTES = MAX_DOCUMENT_BYTES
"""Largest request body (a job file, master state, an event); larger is a 413."""
FOLLOW_STREAMS_PER_CLIENT = 8
"""Concurrent ``logs?follow=true`` streams per client; one more is a 429."""
EVENT_RATE_PER_S = 20.0
EVENT_BURST = 100
"""Events a job's processes may POST: this many a second, with bursts up to EVENT_BURST."""
JSON_DEPTH_MAX = MAX_NESTING_DEPTH
"""JSON bodies nested deeper are refused (the deepest real one, master state, is ~6)."""
EVENTS_PAGE_MAX = 10_000
"""Most events one GET returns (``limit``)."""
METRIC_POST_RATE_PER_S = 5.0
METRIC_POST_BURST = 20
"""Metric batches a job's master may POST (it sends one every few seconds)."""


def client_address(request: Request) -> str:
    """The default client key: the peer's address."""
    return request.client.host if request.client else "unknown"


@dataclass(frozen=True)
class Limits:
    """The bounds one app enforces. ``client_key`` names the client a request comes
    from (its address by default; a token's identity where auth knows one)."""

    body_bytes: int = BODY_LIMIT_BYTES
    follow_streams_per_client: int = FOLLOW_STREAMS_PER_CLIENT
    event_rate_per_s: float = EVENT_RATE_PER_S
    event_burst: int = EVENT_BURST
    metric_post_rate_per_s: float = METRIC_POST_RATE_PER_S
    metric_post_burst: int = METRIC_POST_BURST
    metric_reports_per_job: int = METRIC_REPORTS_PER_JOB
    """Reports of training metrics kept per job; the oldest are dropped beyond it."""
    client_key: Callable[[Request], str] = client_address


class TokenBuckets:
    """A token bucket per key: ``rate_per_s`` tokens a second, at most ``burst`` saved.

    Only the ``max_keys`` most recently used keys are remembered; one unused for long
    has refilled anyway, so forgetting it changes nothing.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take a token: 0.0 when there was one, else the seconds until there is."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            wait_s = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait_s = (1 - tokens) / self.rate_per_s
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait_s


class StreamSlots:
    """At most ``per_key`` streams open at once per key."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str) -> Callable[[], None] | None:
        """A release function (safe to call twice), or None when the key has no slot left."""
        with self._lock:
            if self._open.get(key, 0) >= self.per_key:
                return None
            self._open[key] = self._open.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._open.get(key, 1) - 1
                if left > 0:
                    self._open[key] = left
                else:
                    self._open.pop(key, None)

        return release

    def open(self, key: str) -> int:
        with self._lock:
            return self._open.get(key, 0)


class SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its slot back however it ends: finished, failed,
    or cut short by the client going away (even before its first byte)."""

    def __init__(
        self,
        content: AsyncIterable[str],
        release: Callable[[], None] | None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._release is not None:
                self._release()
