"""The files of one checkpoint in memory, each byte read once and checksummed as it comes.

Restore used to read every byte twice (DCP's load, and the checksum beside it); now
each file is read once and each chunk's CRC-32 is taken while it is still in the
cache. A file is cut into pieces where DCP stored its entries, each piece in its own
buffer: torch aligns a tensor's bytes within the piece ``torch.save`` wrote, so a
tensor parsed in place out of a buffer that starts its piece is aligned too (entries
follow each other at any byte offset). The DCP load then parses tensors out of these
buffers without copying them (see ``_dcp.load``), so the buffers become the committed
copy that ``ElasticState`` rolls back to.

Local pieces are read by :data:`READERS` threads at once (positional reads release
the GIL): most of a restore's time goes to the kernel filling fresh pages, which
other cores can share. Other filesystems (and systems without ``os.preadv``) are
read front to back on one handle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Any

import torch

from tidemill.checkpoint._checksum import CHUNK_BYTES, crc32, crc32_combine
from tidemill.checkpoint._url import Location

READERS = min(4, os.cpu_count() or 1)
"""Threads reading the pieces of one local file."""


def read_pieces(
    where: Location, name: str, size: int, starts: set[int]
) -> tuple[dict[int, torch.UntypedStorage], str]:
    """The ``size`` bytes of file ``name`` under ``where``, cut at ``starts`` (and at 0),
    as ``{start: bytes up to the next start}``, with their CRC-32 as 8 hex digits.

    OSError when the file cannot be read or holds fewer bytes than ``size``.
    """
    spans = list(pairwise([*sorted({0, *(s for s in starts if 0 < s < size)}), size]))
    path = where.child(name).path
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
