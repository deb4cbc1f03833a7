"""Kubernetes-style resource quantities ("500m", "2Gi") parsed into plain numbers.

Job files are written by people who already know Kubernetes notation, so we accept it;
everything inside tidemill uses millicores and bytes.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

from tidemill.api.limits import MAX_CPU_CORES, MAX_MEMORY_BYTES, shown

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_HUGE = 2**1000
"""Integers beyond float range are clipped to this (still refused, as too much)."""
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_cpu_millis(value: object) -> int:
    """Return CPU in millicores from ``2``, ``0.5``, ``"1.5"`` or ``"500m"``.

    Refuses negative amounts and more than :data:`MAX_CPU_CORES` cores.
    """
    number, suffix = _number_and_suffix(value, "cpu quantity", "2, 0.5 or '500m'")
    if suffix == "m":
        millis = number
    elif suffix == "":
        millis = number * 1000
    else:
        raise ValueError(f"{shown(value)} has unknown cpu unit {shown(suffix)}; use cores or 'm'")
    if millis < 0:
        raise ValueError("cpu must not be negative")
    if millis > MAX_CPU_CORES * 1000:
        raise ValueError(
            f"{shown(value)} is more cpu than any machine has; at most {MAX_CPU_CORES:,} cores"
        )
    return round(millis)


def parse_memory_bytes(value: object) -> int:
    """Return bytes from ``1073741824``, ``"1Gi"``, ``"512Mi"`` or ``"2G"``.

    Refuses negative amounts and more than :data:`MAX_MEMORY_BYTES` (1 EiB).
    """
    number, suffix = _number_and_suffix(value, "memory size", "'512Mi' or '2Gi'")
    if suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    elif suffix == "":
        factor = 1
    else:
        raise ValueError(
            f"{shown(value)} has unknown memory unit {shown(suffix)}; use Ki, Mi, Gi or Ti"
        )
    num_bytes = number * factor
    if num_bytes < 0:
        raise ValueError("memory must not be negative")
    if num_bytes > MAX_MEMORY_BYTES:
        raise ValueError(f"{shown(value)} is more memory than any machine has; at most 1Ei")
    return round(num_bytes)


def _number_and_suffix(value: object, what: str, example: str) -> tuple[float, str]:
    """The finite number and unit suffix of a quantity (bools and inf/nan refused)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {what} such as {example}")
    if isinstance(value, float):
        number, suffix = value, ""
    elif isinstance(value, int):
        number, suffix = float(max(-_HUGE, min(value, _HUGE))), ""
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            raise ValueError(f"{shown(value)} is not a {what}; write {example}")
        number, suffix = float(match.group(1)), match.group(2)
    if not math.isfinite(number):
        raise ValueError(f"{shown(value)} is not a finite {what}; write {example}")
    return number, suffix


def format_memory(num_bytes: int) -> str:
    """Render bytes the way people write them in job files."""
    for suffix, factor in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if num_bytes >= factor:
            value = num_bytes / factor
            return f"{value:.0f}{suffix}" if value == int(value) else f"{value:.1f}{suffix}"
    return f"{num_bytes}"


def format_cpu(millis: int) -> str:
    """Render millicores as cores ("1.5") or millicores ("250m")."""
    if millis % 1000 == 0:
        return str(millis // 1000)
    if millis > 1000:
        return f"{millis / 1000:g}"
    return f"{millis}m"


def _cores(value: object) -> float:
    return parse_cpu_millis(value) / 1000


CpuCores = Annotated[float, BeforeValidator(_cores)]
"""A model field in cores that accepts ``2``, ``0.5`` or ``"500m"``."""
MemoryBytes = Annotated[int, BeforeValidator(parse_memory_bytes)]
"""A model field in bytes that accepts ``"2Gi"``, ``"512Mi"`` or a number."""
