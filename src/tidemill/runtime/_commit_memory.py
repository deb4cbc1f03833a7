"""Reused memory for commit copies: a commit copies into pages already touched.

Every commit copies the whole state. Into fresh memory that pays the kernel's first
touch of every page: on the 2-core development VM, a 100 MB commit took 37 ms into
fresh memory and 12 ms into memory already touched, a 1 GB one 0.3-0.8 s and 0.1 s.
So the plain CPU tensors of each commit lie in one arena, and an arena goes back to
a pool once no tensor views it any more (a newer commit replaced it, the checkpoint
writer is done with it, and no caller still holds one of its tensors); the next
commit reuses it.

The price is memory: one arena stays spare between commits, so a job holds two
copies of its state beyond the live one (three while a checkpoint writer still reads
an older commit), where fresh copies hold one between commits.

The arenas are memfds (:class:`~tidemill.runtime._shared_memory.SharedArena`): a
checkpoint writer process maps a commit's arena and saves the commit without a copy.
"""

from __future__ import annotations

import collections
import os
import threading
import weakref
from typing import Any

from tidemill.runtime._shared_memory import SharedArena, packed
from tidemill.runtime._state_copy import Pairs, plain, shaped, tensors_in

MIN_BYTES = 1 << 20
"""States with fewer bytes in plain tensors get ordinary tensors: an arena costs a
mapping and a file descriptor, which a small state does not repay."""
SPARE_ARENAS = 1
"""Free arenas kept once a commit has taken its own."""


class CommitMemory:
    """A pool of arenas for one :class:`~tidemill.runtime.ElasticState`'s commits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[SharedArena] = []
        self._returned: collections.deque[SharedArena] = collections.deque()
        """Arenas whose last tensor died (appended from any thread, even inside the
        garbage collector: never under the lock)."""
        self._memfd = hasattr(os, "memfd_create")

    def shaped(self, value: Any) -> tuple[Any, SharedArena | None, Pairs]:
        """``value`` copied as :func:`shaped` copies it, with its plain tensors empty in one
        arena of this pool; that arena (None: a small state, in ordinary tensors); and the
        (target, source) pairs whose bytes are still to copy."""
        sources = [tensor for tensor in tensors_in(value) if plain(tensor)]
        offsets, end = packed(sources)
        if end < MIN_BYTES:
            pairs: Pairs = []
            return shaped(value, pairs), None, pairs
        arena = self._take(end)
        lease = memoryview(arena.map)
        weakref.finalize(lease, self._returned.append, arena)
        targets = [
            arena.view(offset, tensor.dtype, tuple(tensor.shape), lease)
            for tensor, offset in zip(sources, offsets, strict=True)
        ]
        del lease  # only the tensors hold it now: the arena returns when they are gone
        memo = {id(source): target for source, target in zip(sources, targets, strict=True)}
        return shaped(value, [], memo), arena, list(zip(targets, sources, strict=True))

    def _take(self, nbytes: int) -> SharedArena:
        """A free arena of at least ``nbytes`` (the smallest), else a new one."""
        with self._lock:
            while self._returned:
                self._free.append(self._returned.popleft())
            fitting = sorted(
                (arena for arena in self._free if arena.nbytes >= nbytes),
                key=lambda arena: arena.nbytes,
            )
            taken = fitting[0] if fitting else None
            spare = fitting[1 : 1 + SPARE_ARENAS]
            for arena in self._free:
                if arena is not taken and arena not in spare:
                    arena.close()  # too small for this state, or more than are needed
            self._free = spare
        return taken if taken is not None else self._new(nbytes)

    def _new(self, nbytes: int) -> SharedArena:
        if self._memfd:
            try:
                return SharedArena(nbytes)
            except OSError:
                self._memfd = False  # refused here: later commits go straight to private memory
        return SharedArena.private(nbytes)
