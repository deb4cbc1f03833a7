"""Job files larger than a few KiB are parsed in worker processes, not in the server.

PyYAML's compiled loader holds the GIL for long stretches: a 256 KiB flow list takes
about half a second, during which no other request of any tenant is answered even from
another thread. Small bodies (every real job file) parse in a thread at once; larger
ones go to a small pool of processes, so the worst a tenant can do with big bodies is
queue its own submissions behind them. A parse that overruns ``PARSE_TIMEOUT_S`` is
refused and its worker replaced.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from starlette.concurrency import run_in_threadpool

from tidemill.api.errors import FieldError, SpecError
from tidemill.api.loader import parse_document

IN_THREAD_MAX_BYTES = 16 * 1024
"""Bodies up to this size parse in a server thread: a few milliseconds at worst."""
PARSE_WORKERS = 2
PARSE_TIMEOUT_S = 10.0


class ParsePool:
    """Parses job-file text into a mapping, large texts in worker processes."""

    def __init__(self, workers: int = PARSE_WORKERS, timeout_s: float = PARSE_TIMEOUT_S) -> None:
        self.workers = workers
        self.timeout_s = timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    async def parse(self, text: str, source: str) -> dict[str, Any]:
        """Like :func:`parse_document`; raises SpecError for bad or overlong input."""
        if len(text) <= IN_THREAD_MAX_BYTES:
            return await run_in_threadpool(parse_document, text, source)
        future = self._pool().submit(_parse_in_worker, text, source)
        try:
            kind, value = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            self.close()  # the stuck worker goes; the next large body starts a new pool
            raise SpecError.single(
                source,
                f"took longer than {self.timeout_s:g}s to parse; a job file is a few KiB of "
                "YAML or JSON",
            ) from None
        except BrokenProcessPool:
            self.close()
            raise SpecError.single(
                source, "the parser ran out of resources on this document; send a smaller one"
            ) from None
        if kind == "errors":
            raise SpecError([FieldError(path, message) for path, message in value])
        return dict(value)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            _stop(executor)

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
            return self._executor


def _stop(executor: ProcessPoolExecutor) -> None:
    """Kill the workers too: one may be stuck in a parse that never yields."""
    workers = list(getattr(executor, "_processes", {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for worker in workers:
        worker.kill()


def _parse_in_worker(text: str, source: str) -> tuple[str, Any]:
    """Runs in a worker: errors come back as plain pairs (SpecError does not pickle)."""
    try:
        return "document", parse_document(text, source)
    except SpecError as exc:
        return "errors", [(error.path, error.message) for error in exc.errors]


__all__ = ["IN_THREAD_MAX_BYTES", "PARSE_TIMEOUT_S", "ParsePool"]
