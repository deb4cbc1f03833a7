"""A write-only local file that skips the page cache (``O_DIRECT``), for checkpoint data.

A checkpoint is written once and read back only after a failure, usually on another
machine: through the page cache its bytes are copied once more, stay dirty until
written back, and push the training process's own pages out. Straight to the device
they move once, from a small buffer that stays in the CPU's cache. Measured on the
2-core development machine, 1 GB with fsync: 3.0-3.4 s buffered, 0.7-1.0 s direct;
DeepSpeed's FastPersist writes checkpoints the same way.

``O_DIRECT`` wants the memory, the file offset and the length of every write aligned
to the device's block: bytes are gathered into an aligned buffer of
:data:`BUFFER_BYTES` and written a whole buffer at a time; the last, partial block is
written padded and the file then cut to its true length. Where the file system
refuses ``O_DIRECT`` (at open or at the first write), the file is written through the
page cache instead: same bytes, same calls.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
from typing import Any

BLOCK_BYTES = 4096
"""Alignment of every direct write: the largest logical block size of common devices."""
BUFFER_BYTES = 4 << 20
"""Bytes gathered per write: large enough for the device's full speed, small enough to
stay in the CPU's cache between the copy into it and the device's read."""
_REFUSED = (errno.EINVAL, errno.EOPNOTSUPP)
"""What ``open`` or ``pwrite`` raise where a file system does not take ``O_DIRECT``."""


def open_direct(path: str | os.PathLike[str]) -> io.IOBase:
    """``path`` created (or emptied) for writing, bypassing the page cache where the
    platform and file system allow it, else an ordinary buffered file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return DirectFile(os.open(path, flags | direct, 0o644))
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
    return io.BufferedWriter(io.FileIO(os.open(path, flags, 0o644), "wb"))


class DirectFile(io.RawIOBase):
    """Writes front to back through an aligned buffer; ``flush()`` puts every byte
    written so far in the file (so an ``fsync`` of :meth:`fileno` covers them all), and
    writing may go on after it."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._buffer = mmap.mmap(-1, BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._filled = 0
        """Bytes in the buffer, not yet all in the file."""
        self._offset = 0
        """Where in the file the buffer's first byte goes (a multiple of the block)."""
        self._unflushed = False
        """Whether the buffer holds bytes the file does not."""

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        source = memoryview(data).cast("B")
        taken = 0
        while taken < len(source):
            count = min(len(source) - taken, BUFFER_BYTES - self._filled)
            self._view[self._filled : self._filled + count] = source[taken : taken + count]
            self._filled += count
            taken += count
            self._unflushed = True
            if self._filled == BUFFER_BYTES:
                self._put(BUFFER_BYTES)
                self._offset += BUFFER_BYTES
                self._filled = 0
                self._unflushed = False
        return taken

    def flush(self) -> None:
        """Write the partial buffer, its last block padded, and cut the file to the
        bytes written; they stay in the buffer, so later writes extend them."""
        if self.closed or not self._unflushed:
            return
        padded = -(-self._filled // BLOCK_BYTES) * BLOCK_BYTES
        self._view[self._filled : padded] = bytes(padded - self._filled)
        self._put(padded)
        os.ftruncate(self._fd, self._offset + self._filled)
        self._unflushed = False

    def fileno(self) -> int:
        self.flush()
        return self._fd

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()  # flushes first
        finally:
            os.close(self._fd)
            self._view.release()
            self._buffer.close()

    def _put(self, length: int) -> None:
        """The buffer's first ``length`` bytes to the file at the buffer's offset."""
        done = 0
        while done < length:
            try:
                done += os.pwrite(self._fd, self._view[done:length], self._offset + done)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self._through_page_cache()

    def _through_page_cache(self) -> None:
        """Go on without ``O_DIRECT`` (the file system took the open, not the write)."""
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        if not flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "the file refuses writes even through the page cache")
        fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
