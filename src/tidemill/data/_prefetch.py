"""Reading ahead on a thread, so decoding overlaps training.

Parquet decoding runs in C++ without the GIL, so a thread that decodes the next batches
of a shard while the training thread turns the current ones into tensors uses the
second core instead of waiting for it. The queue is short: read-ahead costs memory.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, cast

T = TypeVar("T")
_END = object()


class Prefetched(Iterator[T], Generic[T]):
    """``items`` read ``depth`` ahead on a daemon thread; errors surface in ``next()``.

    Example::

        >>> ahead = Prefetched(iter([1, 2]), close=lambda: None)
        >>> list(ahead)
        [1, 2]
    """

    def __init__(self, items: Iterator[T], close: Callable[[], None], depth: int = 2) -> None:
        self._items = items
        self._close = close
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._read, name="tidemill-read-ahead", daemon=True)
        self._thread.start()

    @property
    def done(self) -> bool:
        """Everything was read (what is left waits in the queue)."""
        return not self._thread.is_alive()

    def __next__(self) -> T:
        if self._ended:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return cast(T, item)

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
        self._close()

    def _read(self) -> None:
        try:
            for item in self._items:
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as exc:  # handed to the reading thread, which raises it
            self._put(exc)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
