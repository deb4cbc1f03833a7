"""Extended resources: whole counts of node devices other than GPUs, by Kubernetes name.

A role asks ``resources.extended: {rdma/hca: 2}`` per replica; a node (cluster file, or
the Kubernetes inventory) offers ``extended: {rdma/hca: 4}``. Names follow Kubernetes:
``domain/name`` (``example.com/fpga``) or ``hugepages-<size>`` (``hugepages-2Mi``,
amounts in bytes, ``1Gi`` accepted). ``nvidia.com/gpu`` is ``resources.gpu`` instead.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from tidemill.api._model import _DNS_SUBDOMAIN, _LABEL_NAME
from tidemill.api.limits import (
    MAX_EXTENDED_AMOUNT,
    MAX_EXTENDED_RESOURCES,
    MAX_LABEL_NAME,
    MAX_LABEL_PREFIX,
    shown,
)
from tidemill.api.quantity import parse_memory_bytes

_HUGEPAGES = re.compile(r"^hugepages-[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_EXAMPLE = "write domain/name (e.g. example.com/fpga) or hugepages-<size> (e.g. hugepages-2Mi)"


def name_problem(name: str) -> str | None:
    """What makes ``name`` unusable as an extended resource name, or None."""
    if _HUGEPAGES.match(name):
        return None
    if name == "nvidia.com/gpu":
        return f"{shown(name)} is counted by the gpu field; write gpu: N instead"
    domain, slash, rest = name.partition("/")
    if (
        not slash
        or len(domain) > MAX_LABEL_PREFIX
        or not _DNS_SUBDOMAIN.match(domain)
        or len(rest) > MAX_LABEL_NAME
        or not _LABEL_NAME.match(rest)
    ):
        return f"{shown(name)} is not an extended resource name; {_EXAMPLE}"
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        return f"{shown(name)} is in the reserved kubernetes.io domain; use your own domain"
    return None


def parse_amount(name: str, value: object) -> int:
    """A whole amount of ``name``: a count, or bytes for ``hugepages-*``."""
    if name.startswith("hugepages-"):
        try:
            return parse_memory_bytes(value)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"{name}: {shown(value)} is not a whole number; extended resources are counted "
            "in whole units (0, 1, 2, ...)"
        )
    if value < 0:
        raise ValueError(f"{name}: {value} is negative; ask for 0 or more")
    if value > MAX_EXTENDED_AMOUNT:
        raise ValueError(
            f"{name}: {value:,} is more than any node has; at most {MAX_EXTENDED_AMOUNT:,}"
        )
    return value


def parse_extended(value: object) -> dict[str, int]:
    """``{name: amount}`` checked and sorted by name; refuses with every problem found."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of resource name to amount, e.g. {rdma/hca: 2}")
    if len(value) > MAX_EXTENDED_RESOURCES:
        raise ValueError(
            f"{len(value)} extended resources; at most {MAX_EXTENDED_RESOURCES} are accepted"
        )
    problems: list[str] = []
    amounts: dict[str, int] = {}
    for name, raw in value.items():
        if not isinstance(name, str):
            problems.append(f"{shown(name)} is not an extended resource name; {_EXAMPLE}")
            continue
        problem = name_problem(name)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            amounts[name] = parse_amount(name, raw)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems[:5]))
    return dict(sorted(amounts.items()))


ExtendedAmounts = Annotated[dict[str, int], BeforeValidator(parse_extended)]
"""A validated ``{extended resource name: whole amount}`` mapping, sorted by name."""
