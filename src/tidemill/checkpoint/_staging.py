"""A committed state in shared memory, for the writer process to save without a copy of its own.

The writer process cannot see the training process's memory, but it can map a memfd.
A commit's tensors usually lie in one already (:mod:`tidemill.runtime._commit_memory`):
those are described by their place in it and not copied at all. Any others (a small
state's, a state restored from a checkpoint) are copied by the writer thread into a
reused staging arena, with byte copies that release the GIL. The rest of the state is
pickled with each tensor replaced by its place; the writer process maps each arena
once and rebuilds the state around views of them.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from tidemill.runtime._shared_memory import SharedArena, packed
from tidemill.runtime._state_copy import copy_bytes, plain, tensors_in
from tidemill.runtime.elastic_state import Committed

Place = tuple[str, int, int, str, tuple[int, ...]]
"""("arena", generation, offset, dtype name, shape): where a staged tensor lies."""


class Staged(NamedTuple):
    """A state staged for the writer process: keep ``tensors`` until it has saved (they
    hold the arenas' bytes it reads)."""

    payload: bytes
    arenas: list[SharedArena]
    """The arenas the payload's places name."""
    tensors: list[torch.Tensor]


class Stager:
    """Describes committed states for the writer process, copying what is not shared yet
    into a reused staging arena."""

    def __init__(self) -> None:
        self.arena: SharedArena | None = None

    def stage(self, committed: Committed) -> Staged:
        """``committed`` pickled with references to the arenas its tensors are in."""
        shared = committed.memory
        if shared is not None and shared.fd is None:
            shared = None  # private memory: the writer process cannot map it
        places: dict[int, Place] = {}
        kept: list[torch.Tensor] = []
        copies: list[torch.Tensor] = []
        for tensor in _stageable(committed):
            offset = _offset_in(shared, tensor)
            if shared is None or offset is None:
                copies.append(tensor)
            else:
                places[id(tensor)] = _place(shared, offset, tensor)
                kept.append(tensor)
        arenas = [] if shared is None or not kept else [shared]
        if copies:
            arenas.append(self._copied(copies, places, kept))
        buffer = io.BytesIO()
        _PlacePickler(buffer, places).dump(dataclasses.replace(committed, memory=None, fill=None))
        return Staged(buffer.getvalue(), arenas, kept)

    def _copied(
        self, tensors: list[torch.Tensor], places: dict[int, Place], kept: list[torch.Tensor]
    ) -> SharedArena:
        """The staging arena, with ``tensors`` copied into it (their places and copies noted)."""
        offsets, end = packed(tensors)
        arena = self._arena_for(end)
        plain_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor, offset in zip(tensors, offsets, strict=True):
            target = arena.view(offset, tensor.dtype, tuple(tensor.shape))
            places[id(tensor)] = _place(arena, offset, tensor)
            kept.append(target)
            if plain(tensor):
                plain_pairs.append((target, tensor))
            else:
                target.copy_(tensor)
        copy_bytes(plain_pairs, threads=1)  # on the writer thread: the other cores train
        return arena

    def close(self) -> None:
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def _arena_for(self, nbytes: int) -> SharedArena:
        if self.arena is None or self.arena.nbytes < nbytes:
            self.close()
            self.arena = SharedArena(nbytes)
        return self.arena


def unstage(payload: bytes, arenas: Mapping[int, SharedArena]) -> Committed:
    """The committed state :meth:`Stager.stage` described, its tensors views of ``arenas``
    (by generation)."""
    committed = _PlaceUnpickler(io.BytesIO(payload), arenas).load()
    if not isinstance(committed, Committed):
        raise TypeError(f"staged payload holds a {type(committed).__name__}, not Committed")
    return committed


def tensor_bytes(committed: Committed) -> int:
    """The bytes of the tensors of ``committed`` a writer process would read."""
    return sum(tensor.numel() * tensor.element_size() for tensor in _stageable(committed))


def _stageable(committed: Committed) -> list[torch.Tensor]:
    """The dense tensors of ``committed`` (any device), each once; the rest is pickled."""
    return [
        tensor
        for tensor in tensors_in([committed.model, committed.optimizer])
        if type(tensor) is torch.Tensor
        and tensor.layout == torch.strided
        and tensor.device.type != "meta"
        and not tensor.is_quantized
        and not tensor.requires_grad
        and tensor.numel() > 0
    ]


def _offset_in(arena: SharedArena | None, tensor: torch.Tensor) -> int | None:
    """Where ``tensor`` lies in ``arena``, when it is a plain tensor there."""
    return None if arena is None or not plain(tensor) else arena.offset_of(tensor)


def _place(arena: SharedArena, offset: int, tensor: torch.Tensor) -> Place:
    dtype = str(tensor.dtype).removeprefix("torch.")
    return ("arena", arena.generation, offset, dtype, tuple(tensor.shape))


class _PlacePickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, places: dict[int, Place]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.places = places

    def persistent_id(self, obj: Any) -> Place | None:
        if type(obj) is torch.Tensor:
            return self.places.get(id(obj))
        return None


class _PlaceUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, arenas: Mapping[int, SharedArena]) -> None:
        super().__init__(file)
        self.arenas = arenas
        self.loaded: dict[Any, torch.Tensor] = {}
        """Each place once: a tensor the state references twice stays one tensor."""

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if pid in self.loaded:
            return self.loaded[pid]
        kind, generation, offset, dtype, shape = pid
        arena = self.arenas.get(generation)
        if kind != "arena" or arena is None:
            raise pickle.UnpicklingError(f"staged tensor {pid!r} is not in a mapped arena")
        tensor = self.loaded[pid] = arena.view(offset, getattr(torch, dtype), tuple(shape))
        return tensor
