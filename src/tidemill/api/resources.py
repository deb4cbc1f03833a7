"""What one replica of a role asks for: CPU, memory, whole or shared GPUs and extended
resources, normalised from Kubernetes notation (cpu in cores, memory in bytes)."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from tidemill.api._model import SpecModel, validate_line
from tidemill.api.extended import ExtendedAmounts
from tidemill.api.limits import MAX_GPUS, shown
from tidemill.api.quantity import CpuCores, MemoryBytes


class Resources(SpecModel):
    """What one replica needs. ``gpu`` may be fractional (0.5) to share a device."""

    cpu: CpuCores = Field(default=1.0, description="CPU cores; '500m' means 0.5")
    memory: MemoryBytes = Field(default=2**30, description="bytes; '2Gi' and '512Mi' accepted")
    gpu: float = Field(default=0.0, description="whole devices, or a fraction below 1")
    gpu_model: str | None = Field(default=None, description="e.g. 'A100'; any model if unset")
    extended: ExtendedAmounts = Field(
        default_factory=dict,
        description="extended resources per replica, e.g. {rdma/hca: 2, example.com/fpga: 1}",
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _gpu(cls, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError("expected a number of GPUs such as 1, 2 or 0.5")
        try:
            gpus = float(value)
        except (ValueError, OverflowError):
            raise ValueError(f"{shown(value)} is not a number of GPUs; write 1, 2 or 0.5") from None
        if not math.isfinite(gpus):
            raise ValueError(f"{shown(value)} is not a number of GPUs; write 1, 2 or 0.5")
        if gpus < 0:
            raise ValueError("must not be negative")
        if gpus > MAX_GPUS:
            raise ValueError(f"{gpus:g} GPUs is more than any node has; at most {MAX_GPUS}")
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(
                f"{gpus:g} mixes whole and shared GPUs; ask for a whole number (1, 2, 8) "
                "or a fraction below 1 (0.5, 0.25)"
            )
        if 0 < gpus < 1 and round(gpus * 100) != gpus * 100:
            raise ValueError(f"{gpus:g} is finer than 0.01 of a GPU; round it (e.g. 0.25)")
        return gpus

    @field_validator("gpu_model")
    @classmethod
    def _gpu_model(cls, value: str | None) -> str | None:
        return None if value is None else validate_line(value, "gpu model", 253)

    @property
    def cpu_millis(self) -> int:
        return round(self.cpu * 1000)
