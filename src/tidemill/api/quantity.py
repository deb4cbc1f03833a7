"""Kubernetes-style resource quantities ("500m", "2Gi") parsed into plain numbers.

Job files are written by people who already know Kubernetes notation, so we accept it;
everything inside tidemill uses millicores and bytes.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_cpu_millis(value: object) -> int:
    """Return CPU in millicores from ``2``, ``0.5``, ``"1.5"`` or ``"500m"``."""
    if isinstance(value, bool):
        raise ValueError("expected a number of cores such as 2, 0.5 or '500m'")
    if isinstance(value, int | float):
        number, suffix = float(value), ""
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a cpu quantity; write 2, 0.5 or '500m'")
        number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        millis = number
    elif suffix == "":
        millis = number * 1000
    else:
        raise ValueError(f"{value!r} has unknown cpu unit {suffix!r}; use cores or 'm'")
    if millis < 0:
        raise ValueError("cpu must not be negative")
    return round(millis)


def parse_memory_bytes(value: object) -> int:
    """Return bytes from ``1073741824``, ``"1Gi"``, ``"512Mi"`` or ``"2G"``."""
    if isinstance(value, bool):
        raise ValueError("expected a memory size such as '512Mi' or '2Gi'")
    if isinstance(value, int | float):
        number, suffix = float(value), ""
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a memory size; write '512Mi' or '2Gi'")
        number, suffix = float(match.group(1)), match.group(2)
    if suffix in _BINARY:
        factor = _BINARY[suffix]
    elif suffix in _DECIMAL:
        factor = _DECIMAL[suffix]
    elif suffix == "":
        factor = 1
    else:
        raise ValueError(f"{value!r} has unknown memory unit {suffix!r}; use Ki, Mi, Gi or Ti")
    return round(number * factor)


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
