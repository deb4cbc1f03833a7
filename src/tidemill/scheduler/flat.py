"""Placements as parallel numpy arrays, so what thousands of pods hold moves in a few calls."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from tidemill.scheduler.arrays import Floats, Indices, Ints
from tidemill.scheduler.types import Placement


@dataclass(frozen=True)
class Flat:
    """Placements as parallel arrays (node row, cpu, memory; device row, device, share),
    so what thousands of pods hold is added to or taken from capacity in a few numpy
    calls. ``cuts[i]`` / ``device_cuts[i]``: where the first ``i`` groups end."""

    rows: Indices
    cpu: Ints
    memory: Ints
    device_rows: Indices
    devices: Indices
    shares: Floats
    cuts: tuple[int, ...]
    device_cuts: tuple[int, ...]

    @staticmethod
    def of(total_gpus: Ints, groups: Iterable[Iterable[tuple[int | None, Placement]]]) -> Flat:
        """``groups`` of (node row, placement); a placement on no known row (None) or a
        device the node lacks (``total_gpus`` per row) is left out."""
        rows: list[int] = []
        cpu: list[int] = []
        memory: list[int] = []
        device_rows: list[int] = []
        devices: list[int] = []
        shares: list[float] = []
        cuts, device_cuts = [0], [0]
        for group in groups:
            for row, p in group:
                if row is None:
                    continue
                rows.append(row)
                cpu.append(p.cpu_millis)
                memory.append(p.memory_bytes)
                for device in p.gpu_ids:
                    if 0 <= device < total_gpus[row]:
                        device_rows.append(row)
                        devices.append(device)
                        shares.append(p.gpu_share)
            cuts.append(len(rows))
            device_cuts.append(len(devices))
        return Flat(
            np.array(rows, dtype=np.intp),
            np.array(cpu, dtype=np.int64),
            np.array(memory, dtype=np.int64),
            np.array(device_rows, dtype=np.intp),
            np.array(devices, dtype=np.intp),
            np.array(shares, dtype=np.float64),
            tuple(cuts),
            tuple(device_cuts),
        )
