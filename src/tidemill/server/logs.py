"""Streams replica log files over HTTP, following them while the job runs."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

POLL_S = 0.2


@dataclass
class LogSource:
    """One replica's log file; ``prefix`` is '[role-index] ' when several are merged."""

    path: str
    prefix: str
    offset: int = 0
    partial: str = ""


def tail_start(path: str, lines: int | None) -> int:
    """Offset from which the last ``lines`` lines of the file begin (0 = whole file)."""
    if lines is None or not os.path.exists(path):
        return 0
    with open(path, "rb") as handle:
        starts: deque[int] = deque(maxlen=lines)
        offset = 0
        for line in handle:
            starts.append(offset)
            offset += len(line)
    if lines == 0:
        return offset
    return starts[0] if starts else 0


def read_new(source: LogSource) -> list[str]:
    """Complete lines appended since the last read."""
    try:
        with open(source.path, "rb") as handle:
            handle.seek(source.offset)
            data = handle.read()
    except FileNotFoundError:
        return []
    source.offset += len(data)
    text = source.partial + data.decode("utf-8", errors="replace")
    *complete, source.partial = text.split("\n")
    return [f"{source.prefix}{line}\n" for line in complete]


def stream_logs(
    sources: list[LogSource],
    follow: bool,
    still_running: Callable[[], bool],
    refresh: Callable[[], list[LogSource]] | None = None,
) -> Iterator[str]:
    """Yield lines from every source; with ``follow`` keep going until the job ends."""
    while True:
        if refresh is not None:
            known = {s.path for s in sources}
            sources.extend(s for s in refresh() if s.path not in known)
        emitted = False
        for source in sources:
            for line in read_new(source):
                emitted = True
                yield line
        if not follow:
            break
        if not emitted:
            if not still_running():
                # The job ended: whatever it wrote last is read in one final pass.
                for source in sources:
                    yield from read_new(source)
                break
            time.sleep(POLL_S)
    for source in sources:
        if source.partial:
            yield f"{source.prefix}{source.partial}\n"
            source.partial = ""
