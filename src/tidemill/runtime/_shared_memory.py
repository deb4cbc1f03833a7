"""Memory another process can map: where commits and checkpoint staging put tensors.

A :class:`SharedArena` is a memfd mapped into this process (no name to leak, freed with
its last mapping and descriptor, not bounded by the size of ``/dev/shm``): a checkpoint
writer process maps it from its descriptor and reads the tensors in it without a copy.
Where memfd is missing (not Linux) or refused, :meth:`SharedArena.private` gives
anonymous memory instead, which serves this process alone.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import weakref
from itertools import count

import numpy as np
import torch

ALIGN = 64
"""Tensors start at multiples of this many bytes (a cache line; every dtype's alignment)."""
_generations = count(1)


class SharedArena:
    """One mapping; ``generation`` names it, uniquely in this process, to a writer process."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(nbytes, mmap.PAGESIZE)
        self.generation = next(_generations)
        fd = os.memfd_create(f"tidemill-state-{self.generation}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, self.nbytes)
            self._open(fd, mmap.mmap(fd, self.nbytes))
        except OSError:
            os.close(fd)
            raise

    @classmethod
    def private(cls, nbytes: int) -> SharedArena:
        """Anonymous memory of this process alone (``fd`` is None): no other process maps it."""
        arena = cls.__new__(cls)
        arena.nbytes, arena.generation = max(nbytes, mmap.PAGESIZE), next(_generations)
        arena._open(None, mmap.mmap(-1, arena.nbytes))
        return arena

    @classmethod
    def adopt(cls, fd: int, generation: int) -> SharedArena:
        """The arena another process made, from its file descriptor (which it now owns)."""
        arena = cls.__new__(cls)
        arena.nbytes, arena.generation = os.fstat(fd).st_size, generation
        arena._open(fd, mmap.mmap(fd, arena.nbytes))
        return arena

    def _open(self, fd: int | None, mapping: mmap.mmap) -> None:
        self.fd = fd
        self.map = mapping
        self.closed = False
        self.base = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
        """The address of the first byte here (tensors in it are found by address)."""
        self._close_fd = weakref.finalize(self, _close_quietly, fd)

    def view(
        self, offset: int, dtype: torch.dtype, shape: tuple[int, ...], buffer: object = None
    ) -> torch.Tensor:
        """The tensor at ``offset``: its own storage over exactly its bytes of the arena.

        The storage holds ``buffer`` (default: the mapping itself) alive while any tensor
        viewing it lives; :class:`~tidemill.runtime._commit_memory.CommitMemory` passes
        a memoryview it watches to learn when the bytes are free again.
        """
        numel = math.prod(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        source = self.map if buffer is None else buffer
        return torch.frombuffer(source, dtype=dtype, count=numel, offset=offset).view(shape)

    def offset_of(self, tensor: torch.Tensor) -> int | None:
        """Where ``tensor``'s bytes start in this arena, if they all lie in it."""
        start = tensor.data_ptr() - self.base
        end = start + tensor.numel() * tensor.element_size()
        return start if start >= 0 and end <= self.nbytes else None

    def close(self) -> None:
        """Unmap and close; tensors still viewing the arena keep their mapping alive."""
        self.closed = True
        with contextlib.suppress(BufferError):  # a tensor still exports the mapping
            self.map.close()
        self._close_fd()


def packed(tensors: list[torch.Tensor]) -> tuple[list[int], int]:
    """Where each of ``tensors`` starts when laid out one after another in an arena,
    each at a multiple of :data:`ALIGN`, and the bytes they take in all."""
    offsets, end = [], 0
    for tensor in tensors:
        offsets.append(end)
        end += -(-(tensor.numel() * tensor.element_size()) // ALIGN) * ALIGN
    return offsets, end


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
