"""A committed state in shared memory, for the writer process to save without a copy of its own.

The writer process cannot see the training process's memory. Before each save, the
writer thread copies the committed tensors into one shared-memory arena (a memfd: no
name to leak, freed with its last mapping, not bounded by the size of ``/dev/shm``)
with byte copies that release the GIL, and pickles the rest of the state with each
tensor replaced by its place in the arena. The writer process maps the arena once and
rebuilds the state around views of it. The arena is reused while states fit, so only
the first save pays for faulting its pages in.
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import pickle
from itertools import count
from typing import Any, NamedTuple

import torch

from tidemill.runtime._state_copy import copy_bytes, plain
from tidemill.runtime.elastic_state import Committed

ALIGN = 64
"""Each tensor starts at a multiple of this many bytes (a cache line; every dtype's alignment)."""
Place = tuple[str, int, int, str, tuple[int, ...]]
"""("arena", generation, offset, dtype name, shape): where a staged tensor lies."""


class SharedArena:
    """One memfd mapped into this process; ``generation`` names it to the writer process."""

    def __init__(self, nbytes: int, generation: int) -> None:
        self.nbytes = max(nbytes, mmap.PAGESIZE)
        self.generation = generation
        self.fd = os.memfd_create(f"tidemill-checkpoint-{generation}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, self.nbytes)
            self.map = mmap.mmap(self.fd, self.nbytes)
        except OSError:
            os.close(self.fd)
            raise

    @classmethod
    def adopt(cls, fd: int, generation: int) -> SharedArena:
        """The arena another process made, from its file descriptor (which it now owns)."""
        arena = cls.__new__(cls)
        arena.fd, arena.generation = fd, generation
        arena.nbytes = os.fstat(fd).st_size
        arena.map = mmap.mmap(fd, arena.nbytes)
        return arena

    def view(self, offset: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor at ``offset``: its own storage over exactly its bytes of the arena."""
        numel = math.prod(shape)
        if numel == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=numel, offset=offset).view(shape)

    def close(self) -> None:
        """Unmap and close; tensors still viewing the arena keep their mapping alive."""
        with contextlib.suppress(BufferError):  # a tensor still exports the mapping
            self.map.close()
        os.close(self.fd)


class Staged(NamedTuple):
    """A state staged for the writer process: keep ``tensors`` until it has saved (they are
    the arena's bytes it reads)."""

    payload: bytes
    arena: SharedArena
    tensors: list[torch.Tensor]


class Stager:
    """Copies committed states into a reused arena and describes them for the writer process."""

    def __init__(self) -> None:
        self.arena: SharedArena | None = None
        self._generations = count(1)

    def stage(self, committed: Committed) -> Staged:
        """``committed`` copied into the arena and pickled with references to it."""
        sources = _stageable(committed)
        offsets: dict[int, int] = {}
        end = 0
        for tensor in sources:
            offsets[id(tensor)] = end
            end += _aligned(tensor.numel() * tensor.element_size())
        arena = self._arena_for(end)
        places: dict[int, Place] = {}
        targets: list[torch.Tensor] = []
        plain_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor in sources:
            offset, shape = offsets[id(tensor)], tuple(tensor.shape)
            target = arena.view(offset, tensor.dtype, shape)
            places[id(tensor)] = ("arena", arena.generation, offset, _dtype_name(tensor), shape)
            targets.append(target)
            if plain(tensor):
                plain_pairs.append((target, tensor))
            else:
                target.copy_(tensor)
        copy_bytes(plain_pairs, threads=1)  # on the writer thread: the other cores train
        buffer = io.BytesIO()
        _PlacePickler(buffer, places).dump(committed)
        return Staged(buffer.getvalue(), arena, targets)

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def _arena_for(self, nbytes: int) -> SharedArena:
        if self.arena is None or self.arena.nbytes < nbytes:
            self.close()
            self.arena = SharedArena(nbytes, next(self._generations))
        return self.arena


def unstage(payload: bytes, arena: SharedArena | None) -> Committed:
    """The committed state :meth:`Stager.stage` described, its tensors views of ``arena``."""
    committed = _PlaceUnpickler(io.BytesIO(payload), arena).load()
    if not isinstance(committed, Committed):
        raise TypeError(f"staged payload holds a {type(committed).__name__}, not Committed")
    return committed


def tensor_bytes(committed: Committed) -> int:
    """The bytes of the tensors :meth:`Stager.stage` would copy."""
    return sum(tensor.numel() * tensor.element_size() for tensor in _stageable(committed))


def _stageable(committed: Committed) -> list[torch.Tensor]:
    """The dense tensors of ``committed`` (any device), each once; the rest is pickled."""
    found: dict[int, torch.Tensor] = {}
    pending: list[Any] = [committed.model, committed.optimizer]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list | tuple):
            pending.extend(value)
        elif (
            type(value) is torch.Tensor
            and value.layout == torch.strided
            and value.device.type != "meta"
            and not value.is_quantized
            and not value.requires_grad
            and value.numel() > 0
        ):
            found.setdefault(id(value), value)
    return list(found.values())


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


class _PlacePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, places: dict[int, Place]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.places = places

    def persistent_id(self, obj: Any) -> Place | None:
        if type(obj) is torch.Tensor:
            return self.places.get(id(obj))
        return None


class _PlaceUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, arena: SharedArena | None) -> None:
        super().__init__(file)
        self.arena = arena
        self.loaded: dict[Any, torch.Tensor] = {}
        """Each place once: a tensor the state references twice stays one tensor."""

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if pid in self.loaded:
            return self.loaded[pid]
        kind, generation, offset, dtype, shape = pid
        if kind != "arena" or self.arena is None or generation != self.arena.generation:
            raise pickle.UnpicklingError(f"staged tensor {pid!r} is not in the mapped arena")
        tensor = self.loaded[pid] = self.arena.view(offset, getattr(torch, dtype), tuple(shape))
        return tensor
