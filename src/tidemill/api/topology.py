"""Topology in the job and cluster files: where a role's replicas run relative to each
other, the levels a cluster is built of, and each machine's NUMA layout.

A cluster file declares its levels, smallest first, as node label keys::

    topology: {levels: [nvlink-domain, rack, zone]}
    nodes:
      - {name: gpu-a1, cpu: 64, memory: 512Gi, gpus: 8, labels: {rack: r1, zone: z1},
         numa: [{cpus: "0-31", gpus: [0, 1, 2, 3]}, {cpus: "32-63", gpus: [4, 5, 6, 7]}]}

and a role asks ``topology: {packWithin: rack, required: true}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import Field, field_validator

from tidemill.api._model import SpecModel, validate_labels
from tidemill.api.limits import MAX_CPU_ID, MAX_GPUS, MAX_TOPOLOGY_LEVELS, shown


class TopologySpec(SpecModel):
    """A role's gang replicas packed into one domain of a topology level."""

    pack_within: str = Field(
        description="a topology level of the cluster (a node label key), e.g. rack; roles "
        "of a job asking the same level share one domain"
    )
    required: bool = Field(
        default=False,
        description="true: wait until one domain holds the replicas; false: prefer one "
        "domain, spread (and say so) when none holds them",
    )

    @field_validator("pack_within")
    @classmethod
    def _level(cls, value: str) -> str:
        return validate_level(value)


class ClusterTopology(SpecModel):
    """The levels of a cluster, smallest first, each a node label key."""

    levels: list[str] = Field(
        default_factory=list,
        max_length=MAX_TOPOLOGY_LEVELS,
        description="node label keys, smallest level first, e.g. [nvlink-domain, rack, zone]",
    )

    @field_validator("levels")
    @classmethod
    def _levels(cls, value: list[str]) -> list[str]:
        for level in value:
            validate_level(level)
        repeated = sorted({level for level in value if value.count(level) > 1})
        if repeated:
            raise ValueError(f"levels repeat {', '.join(repeated)}; list each level once")
        return value


class NumaNodeSpec(SpecModel):
    """One NUMA node of a machine: its CPUs and the GPUs attached to it."""

    cpus: str = Field(description="Linux CPU list, e.g. '0-31' or '0-15,64-79'")
    gpus: list[int] = Field(
        default_factory=list, max_length=MAX_GPUS, description="device numbers, e.g. [0, 1, 2, 3]"
    )

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, value: str) -> str:
        parse_cpu_list(value)
        return value

    @property
    def cpu_ids(self) -> tuple[int, ...]:
        return parse_cpu_list(self.cpus)


def validate_level(value: str) -> str:
    """A level is a node label key (``rack``, ``topology.kubernetes.io/zone``)."""
    validate_labels({value: ""})
    return value


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """The CPU numbers of a Linux CPU list, ascending.

    >>> parse_cpu_list("0-3,8")
    (0, 1, 2, 3, 8)
    """
    ids: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(
                f"{shown(text)} is not a CPU list; write numbers and ranges such as '0-15,32-47'"
            )
        low, high = int(first), int(last) if dash else int(first)
        if high < low or high > MAX_CPU_ID:
            raise ValueError(
                f"{shown(text)}: the range {part.strip()} must go upwards and stay at or "
                f"below CPU {MAX_CPU_ID}"
            )
        ids.update(range(low, high + 1))
    return tuple(sorted(ids))


def format_cpu_list(ids: Iterable[int]) -> str:
    """The Linux CPU list of ``ids``.

    >>> format_cpu_list([0, 1, 2, 3, 8])
    '0-3,8'
    """
    ordered = sorted(set(ids))
    runs: list[str] = []
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            low, high = ordered[start], ordered[i - 1]
            runs.append(str(low) if low == high else f"{low}-{high}")
            start = i
    return ",".join(runs)


def numa_problems(layout: Sequence[NumaNodeSpec], gpus: int, cpu_cores: float) -> list[str]:
    """Why ``layout`` does not add up for a node of ``gpus`` devices and ``cpu_cores``.

    Every device ``0 .. gpus-1`` sits on exactly one NUMA node, no CPU on two, and
    the CPUs listed number at least the node's cores."""
    if not layout:
        return []
    problems: list[str] = []
    gpu_home: dict[int, int] = {}
    cpu_home: dict[int, int] = {}
    for at, numa in enumerate(layout):
        for device in numa.gpus:
            if not 0 <= device < gpus:
                have = f"devices 0-{gpus - 1}" if gpus else "no devices"
                problems.append(
                    f"[{at}].gpus: device {device} does not exist; the node declares "
                    f"gpus: {gpus} ({have})"
                )
            elif device in gpu_home:
                problems.append(
                    f"[{at}].gpus: device {device} is also on NUMA node {gpu_home[device]}; "
                    "list each device once"
                )
            gpu_home.setdefault(device, at)
        for cpu in numa.cpu_ids:
            if cpu in cpu_home:
                problems.append(
                    f"[{at}].cpus: CPU {cpu} is also on NUMA node {cpu_home[cpu]}; list each "
                    "CPU once"
                )
                break
            cpu_home[cpu] = at
    missing = [d for d in range(gpus) if d not in gpu_home]
    if missing:
        listed = ", ".join(str(d) for d in missing[:8]) + (" ..." if len(missing) > 8 else "")
        problems.append(
            f"GPUs {listed} are on no NUMA node; the node declares gpus: {gpus}: list every "
            "device on the NUMA node it is attached to"
        )
    if len(cpu_home) < cpu_cores:
        problems.append(
            f"the NUMA nodes list {len(cpu_home)} CPUs in all; the node declares cpu: "
            f"{cpu_cores:g}: list every CPU it offers"
        )
    return problems


def missing_levels(levels: Sequence[str], label_keys: Iterable[str]) -> list[str]:
    """The declared levels no node carries as a label."""
    carried = set(label_keys)
    return [level for level in levels if level not in carried]
