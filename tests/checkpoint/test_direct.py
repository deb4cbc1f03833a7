"""Checkpoint files written past the page cache hold exactly the bytes written, in any
pieces, flushed at any point, and fall back to the page cache where O_DIRECT is refused."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from tidemill.checkpoint import CheckpointStore, _direct
from tidemill.checkpoint._direct import BLOCK_BYTES, BUFFER_BYTES, DirectFile, open_direct
from tidemill.runtime import ElasticState

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="O_DIRECT is Linux's")


def pieces(total: int, seed: int) -> list[bytes]:
    """Random bytes cut at random places: single bytes, sub-block and multi-buffer pieces."""
    generator = random.Random(seed)
    data = generator.randbytes(total)
    cuts = sorted(generator.sample(range(1, total), 40))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, total], strict=True)]


def test_pieces_of_any_size_land_in_the_file_in_order_and_its_size_is_exact(
    tmp_path: Path,
) -> None:
    parts = pieces(2 * BUFFER_BYTES + 3 * BLOCK_BYTES + 17, seed=1)
    path = tmp_path / "data"
    with open_direct(path) as file:
        assert isinstance(file, DirectFile)
        for part in parts:
            assert file.write(part) == len(part)
    assert path.read_bytes() == b"".join(parts)


def test_every_byte_written_is_in_the_file_when_its_descriptor_is_asked_for(
    tmp_path: Path,
) -> None:
    """DCP fsyncs ``stream.fileno()`` before closing: the bytes must be there by then,
    and writing may go on after it."""
    parts = pieces(BUFFER_BYTES + 5 * BLOCK_BYTES + 3, seed=2)
    path = tmp_path / "data"
    written = b""
    with open_direct(path) as file:
        for index, part in enumerate(parts):
            file.write(part)
            written += part
            if index % 7 == 0:
                os.fsync(file.fileno())
                assert path.read_bytes() == written
    assert path.read_bytes() == written


def test_the_bytes_do_not_stay_in_the_page_cache(tmp_path: Path) -> None:
    path = tmp_path / "data"
    with open_direct(path) as file:
        file.write(os.urandom(4 * BUFFER_BYTES))
    assert resident_fraction(path) < 0.1
    buffered = tmp_path / "buffered"
    buffered.write_bytes(os.urandom(4 * BUFFER_BYTES))
    assert resident_fraction(buffered) > 0.9


def test_a_saved_checkpoint_leaves_its_data_out_of_the_page_cache(tmp_path: Path) -> None:
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(4)])
    state = ElasticState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    CheckpointStore(str(tmp_path)).save(state.committed)
    data = [path for path in tmp_path.rglob("*.distcp") if path.stat().st_size > BUFFER_BYTES]
    assert data and all(resident_fraction(path) < 0.1 for path in data)


def test_a_file_system_that_refuses_o_direct_at_open_gets_a_buffered_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing_open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(_direct.os, "open", refusing_open)
    parts = pieces(BUFFER_BYTES + 99, seed=3)
    path = tmp_path / "data"
    with open_direct(path) as file:
        assert not isinstance(file, DirectFile)
        for part in parts:
            file.write(part)
    assert path.read_bytes() == b"".join(parts)


def test_a_file_system_that_refuses_direct_writes_is_written_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    real_pwrite = os.pwrite

    def refusing_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(_direct.os, "pwrite", refusing_pwrite)
    parts = pieces(2 * BUFFER_BYTES + 5, seed=4)
    path = tmp_path / "data"
    with open_direct(path) as file:
        for part in parts:
            file.write(part)
    assert path.read_bytes() == b"".join(parts)


def resident_fraction(path: Path) -> float:
    """The share of the file's pages in the page cache (``mincore`` of a mapping, which
    reads none of them)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        vector = ctypes.create_string_buffer(pages)
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        return sum(byte & 1 for byte in vector.raw) / pages
    finally:
        libc.munmap(address, size)
