"""Streams replica log files over HTTP, following them while the job runs.

Bounded whatever the files hold: files are read CHUNK_BYTES at a time off the event
loop, an unfinished line is held up to LINE_LIMIT_CHARS (then passed on in pieces), a
response stops after ``limit_bytes`` with a last line that says so, and ``tailLines``
finds its start reading backwards from the end. A follower is an async loop that
sleeps between polls, so idle followers hold no thread.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from anyio import to_thread

POLL_S = 0.2
"""How often a follower looks for new lines."""
REFRESH_S = 1.0
"""How often a follower looks for new replicas and asks whether the job has ended."""
CHUNK_BYTES = 64 * 1024
BATCH_BYTES = 256 * 1024
"""Most bytes read (over all replicas) per trip to a worker thread."""
LINE_LIMIT_CHARS = 64 * 1024
"""Most of an unfinished line held back; a longer one is passed on in pieces."""
LOG_LIMIT_BYTES = 64 << 20
"""Default ``limitBytes``: the most log bytes one response carries."""


def _decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


@dataclass
class LogSource:
    """One replica's log file; ``prefix`` is '[role-index] ' when several are merged."""

    path: str
    prefix: str
    offset: int = 0
    partial: str = ""
    decoder: codecs.IncrementalDecoder = field(default_factory=_decoder)


def tail_start(path: str, lines: int | None, within_bytes: int = LOG_LIMIT_BYTES) -> int:
    """Offset where the last ``lines`` lines of the file begin (0: the whole file).

    Reads backwards from the end, a chunk at a time, and no further back than
    ``within_bytes``: a file with fewer newlines than asked for there starts at the
    first line that begins inside that window.
    """
    if lines is None:
        return 0
    try:
        size = os.path.getsize(path)
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError:
        return 0
    with handle:
        if lines == 0 or size == 0:
            return size
        floor = max(0, size - within_bytes)
        handle.seek(size - 1)
        end = size - 1 if handle.read(1) == b"\n" else size  # the last newline ends a line
        wanted = lines
        while end > floor:
            start = max(floor, end - CHUNK_BYTES)
            handle.seek(start)
            block = handle.read(end - start)
            at = len(block)
            while (at := block.rfind(b"\n", 0, at)) >= 0:
                wanted -= 1
                if wanted == 0:
                    return start + at + 1
            end = start
        if floor == 0:
            return 0
        handle.seek(floor)
        newline = handle.read(CHUNK_BYTES).find(b"\n")
        return floor + newline + 1 if newline >= 0 else floor


def read_more(source: LogSource, max_bytes: int) -> tuple[str, int]:
    """Complete lines appended since the last read (at most ``max_bytes`` of file),
    each with the source's prefix, and how many bytes were read."""
    carried = ""
    try:
        with open(source.path, "rb") as handle:
            if handle.seek(0, os.SEEK_END) < source.offset:
                # Emptied by a trim (engines/log_trim.py): read it from its start, whose
                # first line says what went where; a line cut short ends here.
                carried = source.partial + source.decoder.decode(b"", final=True)
                carried += "\n" if carried else ""
                source.offset, source.partial, source.decoder = 0, "", _decoder()
            handle.seek(source.offset)
            data = handle.read(max_bytes)
    except FileNotFoundError:
        return "", 0
    source.offset += len(data)
    text = carried + source.partial + source.decoder.decode(data)
    cut = text.rfind("\n") + 1
    complete, source.partial = text[:cut], text[cut:]
    pieces = [complete]
    if source.prefix and complete:
        pieces = [f"{source.prefix}{line}\n" for line in complete[:-1].split("\n")]
    while len(source.partial) > LINE_LIMIT_CHARS:
        pieces.append(f"{source.prefix}{source.partial[:LINE_LIMIT_CHARS]}\n")
        source.partial = source.partial[LINE_LIMIT_CHARS:]
    return "".join(pieces), len(data)


def read_batch(sources: list[LogSource], max_bytes: int) -> tuple[str, int]:
    """One read of each source in turn, ``max_bytes`` in all."""
    texts, used = [], 0
    for source in sources:
        if used >= max_bytes:
            break
        text, count = read_more(source, min(CHUNK_BYTES, max_bytes - used))
        texts.append(text)
        used += count
    return "".join(texts), used


def flush(sources: list[LogSource]) -> str:
    """What is left of unfinished last lines, each ended with a newline."""
    lines = []
    for source in sources:
        source.partial += source.decoder.decode(b"", final=True)
        if source.partial:
            lines.append(f"{source.prefix}{source.partial}\n")
            source.partial = ""
    return "".join(lines)


def unread(sources: list[LogSource]) -> bool:
    for source in sources:
        try:
            if os.path.getsize(source.path) != source.offset:  # grown, or emptied by a trim
                return True
        except OSError:
            continue
    return False


def cut_note(limit_bytes: int) -> str:
    return (
        f"[tidemill: log cut after {limit_bytes} bytes (limitBytes); ask for more with "
        "limitBytes=N, or for the end with tailLines=N]\n"
    )


async def stream_logs(
    sources: list[LogSource],
    follow: bool,
    still_running: Callable[[], bool],
    refresh: Callable[[], list[LogSource]] | None = None,
    limit_bytes: int = LOG_LIMIT_BYTES,
) -> AsyncIterator[str]:
    """Lines from every source; with ``follow`` keep going until the job ends.

    ``still_running`` and ``refresh`` (new replicas to add, by path) may block: they
    run in a worker thread, at most every REFRESH_S.
    """
    left = limit_bytes
    ended = not follow
    next_check = 0.0
    while True:
        text, used = await to_thread.run_sync(read_batch, sources, min(left, BATCH_BYTES))
        left -= used
        if text:
            yield text
        if left <= 0:
            if await to_thread.run_sync(unread, sources):
                yield flush(sources) + cut_note(limit_bytes)
                return
            break
        if used:
            continue
        if ended:
            break
        if time.monotonic() >= next_check:
            next_check = time.monotonic() + REFRESH_S
            if refresh is not None:
                known = {s.path for s in sources}
                found = await to_thread.run_sync(refresh)
                sources.extend(s for s in found if s.path not in known)
            # The job ended: whatever it wrote last is read in one final pass.
            ended = not await to_thread.run_sync(still_running)
            if ended:
                continue
        await asyncio.sleep(POLL_S)
    rest = flush(sources)
    if rest:
        yield rest
