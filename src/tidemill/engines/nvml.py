"""GPU figures from NVIDIA's management library, when this machine has it.

``nvidia-ml-py`` (the ``gpu`` extra) is NVIDIA's own binding; without it, or without a
driver, there are no GPU figures and nothing else changes. Device numbers are NVML's,
which are the ones tidemill gives replicas (the local engine sets
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so that CUDA agrees).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from types import ModuleType
from typing import Any

from tidemill.engines.usage import GpuUsage

log = logging.getLogger(__name__)


class Nvml:
    """A lazily opened NVML session; every call is safe when there is no GPU."""

    def __init__(self) -> None:
        self._module: ModuleType | None = None
        self._tried = False

    def devices(self, indexes: Sequence[int], pids: Collection[int]) -> tuple[GpuUsage, ...]:
        """Per device of ``indexes``: its utilization, and the memory ``pids`` hold on it."""
        nvml = self._open()
        if nvml is None:
            return ()
        found = []
        for index in indexes:
            try:
                device = nvml.nvmlDeviceGetHandleByIndex(index)
                busy = float(nvml.nvmlDeviceGetUtilizationRates(device).gpu)
                held = _memory_of(nvml.nvmlDeviceGetComputeRunningProcesses(device), pids)
            except Exception as exc:  # an NVMLError, or a device gone since
                log.debug("no NVML figures for GPU %d: %s", index, exc)
                found.append(GpuUsage(index, None, None))
                continue
            found.append(GpuUsage(index, busy, held))
        return tuple(found)

    def _open(self) -> ModuleType | None:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
            except Exception as exc:  # not installed, no driver, no device
                log.debug("no GPU figures: %s", exc)
            else:
                self._module = pynvml
        return self._module


def _memory_of(processes: Sequence[Any], pids: Collection[int]) -> int | None:
    """GPU memory held by ``pids`` (None when the driver hides per-process figures)."""
    held = [p.usedGpuMemory for p in processes if p.pid in pids]
    if any(amount is None for amount in held):
        return None
    return int(sum(held))
