"""The files of one checkpoint in memory, each byte read once and checksummed as it comes.

A file is cut into pieces where DCP stored its entries; the DCP load then parses
tensors out of those pieces without copying them (see ``_dcp.load``), so the pieces
become the committed copy that ``ElasticState`` rolls back to.

A local file of :data:`MAP_MIN_BYTES` or more is mapped (copy-on-write, never written)
instead of read: its pages are the page cache's own, so the committed copy costs no
fresh memory, and the kernel may drop its pages under pressure and read them again.
Fresh memory is the expensive part of reading: on the development VM, 1 GB read into
new buffers (with its CRC) took 1.4-2.3 s, mapped and checksummed 0.25-0.5 s. The
CRC-32 of each piece is taken on :data:`READERS` threads at once (ISA-L releases the
GIL). A mapped file must not be truncated while its state is in use (the process would
get SIGBUS on the next rollback); tidemill never rewrites a checkpoint's files, it
deletes whole checkpoints, which leaves mapped files readable until unmapped.

Smaller local files are read in pieces on the same threads (positional reads release
the GIL), other filesystems front to back on one handle (and systems without
``os.preadv`` likewise).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import torch

from tidemill.checkpoint._checksum import CHUNK_BYTES, crc32, crc32_combine
from tidemill.checkpoint._url import Location

READERS = min(4, os.cpu_count() or 1)
"""Threads reading (or checksumming) the pieces of one local file."""
MAP_MIN_BYTES = 4 << 20
"""Local files from this size on are mapped rather than read."""
PART_BYTES = 64 << 20
"""A mapped file is checksummed in parts of this size, spread over the threads."""


def read_pieces(
    where: Location, name: str, size: int, starts: set[int]
) -> tuple[dict[int, torch.UntypedStorage], str]:
    """The ``size`` bytes of file ``name`` under ``where``, cut at ``starts`` (and at 0),
    as ``{start: bytes up to the next start}``, with their CRC-32 as 8 hex digits.

    OSError when the file cannot be read or holds fewer bytes than ``size``.
    """
    spans = list(pairwise([*sorted({0, *(s for s in starts if 0 < s < size)}), size]))
    path = where.child(name).path
    if where.local and size >= max(MAP_MIN_BYTES, 1):
        mapped = _mapped(path, name, size, spans)
        if mapped is not None:
            return mapped
    if where.local and hasattr(os, "preadv") and len(spans) > 1:
        with open(path, "rb", buffering=0) as file, ThreadPoolExecutor(READERS) as pool:
            fd = file.fileno()

            def read_at(buffer: memoryview, offset: int) -> int:
                return os.preadv(fd, [buffer], offset)

            read = list(pool.map(lambda span: _read_piece(read_at, name, *span), spans))
    else:
        with _opened(where, path) as file:
            # Spans are read in order, each where the last ended: the offset is implied.
            read = [
                _read_piece(lambda buffer, _: int(file.readinto(buffer)), name, *span)
                for span in spans
            ]
    crc = 0
    for (start, end), (_, piece_crc) in zip(spans, read, strict=True):
        crc = crc32_combine(crc, piece_crc, end - start)
    pieces = {start: data for (start, _), (data, _) in zip(spans, read, strict=True)}
    return pieces, f"{crc:08x}"


def _mapped(
    path: str, name: str, size: int, spans: list[tuple[int, int]]
) -> tuple[dict[int, torch.UntypedStorage], str] | None:
    """:func:`read_pieces` for a file mapped rather than read; None when its file system
    does not map files (the caller reads it)."""
    with open(path, "rb") as file:
        found = os.fstat(file.fileno()).st_size
        if found < size:
            raise OSError(f"{name} has {found} bytes, not {size}")
        try:
            mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):
            return None
    mapped.madvise(mmap.MADV_WILLNEED)
    whole = memoryview(mapped)
    parts = [(offset, min(size, offset + PART_BYTES)) for offset in range(0, size, PART_BYTES)]

    def checksum(part: tuple[int, int]) -> int:
        start, end = part
        crc = 0
        for offset in range(start, end, CHUNK_BYTES):
            crc = crc32(whole[offset : min(end, offset + CHUNK_BYTES)], crc)
        return crc

    try:
        with ThreadPoolExecutor(READERS) as pool:
            crcs = list(pool.map(checksum, parts))
    finally:
        whole.release()
    crc = 0
    for (start, end), part_crc in zip(parts, crcs, strict=True):
        crc = crc32_combine(crc, part_crc, end - start)
    pieces = {
        start: torch.frombuffer(
            mapped, dtype=torch.uint8, count=end - start, offset=start
        ).untyped_storage()
        for start, end in spans
    }
    return pieces, f"{crc:08x}"


def _read_piece(
    read_at: Callable[[memoryview, int], int], name: str, start: int, end: int
) -> tuple[torch.UntypedStorage, int]:
    """Bytes ``start`` to ``end`` of the file in a new buffer, and their CRC-32;
    ``read_at(buffer, offset)`` fills ``buffer`` from ``offset`` on, as far as it can."""
    data = torch.empty(end - start, dtype=torch.uint8)
    view = data.numpy().data
    crc = 0
    done = 0
    while done < len(view):
        chunk = view[done : done + CHUNK_BYTES]
        count = read_at(chunk, start + done)
        if not count:
            raise OSError(f"{name} ended after {start + done} of {end} bytes")
        crc = crc32(chunk[:count], crc)
        done += count
    return data.untyped_storage(), crc


def _opened(where: Location, path: str) -> Any:
    """``path`` open for reading: unbuffered where local, so that ``readinto`` fills the
    buffer straight from the page cache."""
    return open(path, "rb", buffering=0) if where.local else where.fs.open(path, "rb")
