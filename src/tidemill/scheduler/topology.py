"""Topology domains: a gang packed into the smallest domain that holds it.

The cluster declares levels, smallest first (``nvlink-domain, rack, zone``), each a
node label key. Nodes with the same value of a level's label (and of every larger
level's, so rack ``r1`` of two zones is two racks) form one domain. A role asking
``packWithin: rack`` has its gang pods, with those of the job's other roles asking the
same level, placed inside one domain: one of the smallest level that holds them first
(an NVLink domain), then one rack. Within a level the domain with the least room to
spare goes first (best fit), so big blocks stay whole.

``required``: a gang no domain holds waits, with a reason naming the largest free
block. Otherwise it goes to a domain of a larger level, or is spread, and the bind's
note says so. A cluster that declares no levels (this machine, by default) has nothing
to pack into: packings are ignored there, with a note, so one job file runs everywhere.

Counting first: per node, how many pods of each shape its room takes; summed per
domain (``np.bincount``) that rules out the domains that cannot hold the gang without
trying them. The rest are tried for real, in order, on the snapshot with undo.

An optional (elastic) pod goes into the domains its role's pods already use
(``place_extra``): only there when the packing is required, there first when preferred.
Preemption plans do not look at topology: one that breaks a required packing is refused
(``holds``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tidemill.scheduler import reasons
from tidemill.scheduler.arrays import Bools, Floats, Ints
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.placement import Misfit, place_gang, place_pod
from tidemill.scheduler.reasons import Shortfall
from tidemill.scheduler.types import ClusterState, NodeInfo, Placement, PodRequest, Reason

_MANY = 1 << 30
"""Stands in for "any number" of pods that ask nothing of a resource."""


@dataclass(frozen=True)
class Packed:
    """A placed gang, with a note when it is packed looser than it asked."""

    placements: tuple[Placement, ...]
    note: str = ""


@dataclass(frozen=True)
class _Group:
    """Gang pods (by position) that must share one domain of ``level``."""

    level: str
    required: bool
    positions: tuple[int, ...]


@dataclass(frozen=True)
class _Level:
    ids: Ints
    """Per node row, its domain's number at this level; -1 without the label."""
    names: tuple[str, ...]
    """Per domain number, its name as people read it (``r2``, or ``z1/r2`` if repeated)."""


class Domains:
    """The snapshot's topology domains, per level, built on first use."""

    def __init__(self, nodes: Sequence[NodeInfo], levels: Sequence[str]) -> None:
        self.levels = tuple(levels)
        self._nodes = nodes
        self._built: dict[str, _Level] = {}
        self._rows: dict[str, int] = {}
        self._refusals: dict[tuple[str, frozenset[object]], Reason | None] = {}

    @classmethod
    def of(cls, state: ClusterState) -> Domains:
        return cls(state.nodes, state.topology)

    def level(self, name: str) -> _Level | None:
        """The domains of level ``name``; None if it is not a declared level."""
        if name not in self.levels:
            return None
        built = self._built.get(name)
        if built is None:
            built = self._built[name] = self._build(self.levels.index(name))
        return built

    def refusal(self, capacity: Capacity, gang: Sequence[PodRequest]) -> Reason | None:
        """Why a required packing could never hold, even on empty nodes, or None."""
        if not self.levels:
            return None
        for group in _groups(gang):
            if not group.required:
                continue
            pods = [gang[i] for i in group.positions]
            key = (group.level, frozenset((k, n) for k, (_, n) in _shapes(pods).items()))
            if key not in self._refusals:
                self._refusals[key] = self._never_holds(capacity, group.level, pods)
            refused = self._refusals[key]
            if refused is not None:
                return refused
        return None

    def holds(self, gang: Sequence[PodRequest], placements: Sequence[Placement]) -> bool:
        """Whether ``placements`` keep every required packing of ``gang`` in one domain."""
        if not self.levels:
            return True
        where = {(p.role, p.index): p.node for p in placements}
        rows = self._node_rows()
        for group in _groups(gang):
            level = self.level(group.level)
            if not group.required:
                continue
            if level is None:
                return False
            nodes = {where.get((gang[i].role, gang[i].index)) for i in group.positions}
            found = {int(level.ids[rows[n]]) if n in rows else -1 for n in nodes}
            if len(found) != 1 or -1 in found:
                return False
        return True

    def used_by(self, pod: PodRequest, beside: Sequence[Placement]) -> Bools | None:
        """The nodes of the domains (at ``pod``'s packing level) that the placed pods of
        its role use; None when it does not pack or none of its role is placed."""
        if pod.topology is None:
            return None
        level = self.level(pod.topology.level)
        rows = self._node_rows()
        used = [rows[p.node] for p in beside if p.role == pod.role and p.node in rows]
        if level is None or not used:
            return None
        ids = level.ids[used]
        domains: Bools = np.isin(level.ids, ids[ids >= 0])
        return domains

    def _node_rows(self) -> dict[str, int]:
        if not self._rows:
            self._rows = {node.name: row for row, node in enumerate(self._nodes)}
        return self._rows

    def _build(self, at: int) -> _Level:
        keys: dict[tuple[str | None, ...], int] = {}
        ids = np.full(len(self._nodes), -1, dtype=np.int64)
        for row, node in enumerate(self._nodes):
            if self.levels[at] not in node.labels:
                continue
            key = tuple(node.labels.get(level) for level in self.levels[at:])
            ids[row] = keys.setdefault(key, len(keys))
        repeated = {v for v, times in Counter(key[0] for key in keys).items() if times > 1}
        names = tuple(
            "/".join(v for v in reversed(key) if v is not None)
            if key[0] in repeated
            else str(key[0])
            for key in keys
        )
        return _Level(ids, names)

    def _never_holds(self, capacity: Capacity, level: str, pods: list[PodRequest]) -> Reason | None:
        domains = self.level(level)
        usable = capacity.schedulable & (domains.ids >= 0) if domains is not None else None
        if domains is None or usable is None or not usable.any():
            return reasons.no_topology_domain(pods[0], level, self.levels)
        holding, block = _blocks(capacity, domains, pods, empty=True)
        if holding.any():
            return None
        best = int(np.argmax(block))
        resource = _primary(pods)
        return reasons.topology_domain_too_small(
            _need(pods), level, reasons.amount(resource, block[best]), domains.names[best]
        )


def place(capacity: Capacity, domains: Domains, gang: Sequence[PodRequest]) -> Packed | Misfit:
    """Place ``gang`` honouring its topology requests and hold it, or hold nothing and
    say why. Placements come back in the order of ``gang``."""
    groups = _groups(gang)
    if not groups or not domains.levels:
        placed = place_gang(capacity, gang)
        if isinstance(placed, Misfit):
            return placed
        return Packed(placed, reasons.NO_LEVELS_NOTE if groups else "")
    start = capacity.mark()
    held: dict[int, Placement] = {}
    notes: list[str] = []
    for group in groups:
        packed = _pack(capacity, domains, group, [gang[i] for i in group.positions])
        if isinstance(packed, Misfit):
            capacity.undo(start)
            return Misfit(len(held) + packed.placed, packed.shortfall, packed.topology)
        held.update(zip(group.positions, packed.placements, strict=True))
        if packed.note:
            notes.append(packed.note)
    rest = [i for i in range(len(gang)) if i not in held]
    placed = place_gang(capacity, [gang[i] for i in rest])
    if isinstance(placed, Misfit):
        capacity.undo(start)
        return Misfit(len(held) + placed.placed, placed.shortfall)
    held.update(zip(rest, placed, strict=True))
    return Packed(tuple(held[i] for i in range(len(gang))), "; ".join(notes))


def place_extra(
    capacity: Capacity, domains: Domains, pod: PodRequest, beside: Sequence[Placement]
) -> Placement | None:
    """The spot for an optional ``pod`` next to its job's placed pods ``beside``; nothing
    is held. A packing role's pod goes into the domains its role's placed pods use."""
    within = domains.used_by(pod, beside)
    if within is None:
        return place_pod(capacity, pod)
    placed = place_pod(capacity, pod, within=within)
    if placed is not None or (pod.topology is not None and pod.topology.required):
        return placed
    return place_pod(capacity, pod)


def extra_misfit(
    capacity: Capacity, domains: Domains, pod: PodRequest, beside: Sequence[Placement]
) -> Reason | None:
    """Why an optional ``pod`` of a required packing found no room in its role's
    domains; None when it does not pack that way."""
    within = domains.used_by(pod, beside)
    if within is None or pod.topology is None or not pod.topology.required:
        return None
    level = domains.level(pod.topology.level)
    names = sorted({level.names[i] for i in level.ids[within]}) if level is not None else []
    resource = _primary([pod])
    free = np.where(within & capacity.eligible_mask(pod.gpu_model), _free(capacity, pod), -1.0)
    best = int(np.argmax(free))
    block = reasons.amount(resource, max(float(free[best]), 0.0))
    return reasons.cannot_grow_within(
        pod, f"{pod.topology.level} {', '.join(names)}", block, capacity.names[best]
    )


def _pack(
    capacity: Capacity, domains: Domains, group: _Group, pods: list[PodRequest]
) -> Packed | Misfit:
    """One group into one domain: its level or a smaller one, else as its request allows."""
    levels = domains.levels
    asked = levels.index(group.level) if group.level in levels else len(levels)
    for name in levels[: asked + 1]:
        placed = _in_one_domain(capacity, domains, name, pods)
        if placed is not None:
            return Packed(placed[0])
    block, where = _largest_free(capacity, domains, group.level, pods)
    resource = _primary(pods)
    if group.required:
        shortfall = Shortfall(pods[0], resource, block, where)
        reason = reasons.topology_does_not_fit(
            _need(pods), group.level, reasons.amount(resource, block), where
        )
        return Misfit(0, shortfall, topology=reason)
    for name in levels[asked + 1 :]:
        placed = _in_one_domain(capacity, domains, name, pods)
        if placed is not None:
            return Packed(
                placed[0],
                _note(pods, group.level, block, where, f"packed within {name} {placed[1]}"),
            )
    spread = place_gang(capacity, pods)
    if isinstance(spread, Misfit):
        return spread
    nodes = len({p.node for p in spread})
    return Packed(
        spread,
        _note(
            pods, group.level, block, where, f"spread over {nodes} node{'s' if nodes != 1 else ''}"
        ),
    )


def _in_one_domain(
    capacity: Capacity, domains: Domains, level: str, pods: list[PodRequest]
) -> tuple[tuple[Placement, ...], str] | None:
    """The pods placed and held inside the best-fitting domain of ``level`` that takes
    them, with its name; None if none does."""
    found = domains.level(level)
    if found is None:
        return None
    holding, block = _blocks(capacity, found, pods, empty=False)
    candidates = np.flatnonzero(holding)
    for domain in candidates[np.argsort(block[candidates], kind="stable")]:
        placed = place_gang(capacity, pods, within=found.ids == domain)
        if not isinstance(placed, Misfit):
            return placed, found.names[int(domain)]
    return None


def _largest_free(
    capacity: Capacity, domains: Domains, level: str, pods: list[PodRequest]
) -> tuple[float, str]:
    """The most of the pods' main resource one domain of ``level`` offers them, and where."""
    found = domains.level(level)
    if found is None or not found.names:
        return 0.0, ""
    _, block = _blocks(capacity, found, pods, empty=False)
    best = int(np.argmax(block))
    return (float(block[best]), found.names[best]) if block[best] > 0 else (0.0, "")


def _blocks(
    capacity: Capacity, level: _Level, pods: list[PodRequest], *, empty: bool
) -> tuple[Bools, np.ndarray]:
    """Per domain: whether it has room for as many pods of each shape as asked (each
    shape counted alone), and how much of the main resource that room gives the pods."""
    count = len(level.names)
    labelled = level.ids >= 0
    holding: Bools = np.ones(count, dtype=np.bool_)
    block = np.zeros(count, dtype=np.float64)
    resource = _primary(pods)
    for pod, wanted in _shapes(pods).values():
        takes = _takes(capacity, pod, empty=empty)
        per_domain = np.bincount(level.ids[labelled], weights=takes[labelled], minlength=count)
        holding &= per_domain >= wanted
        block += per_domain * _amount_of(pod, resource)
    return holding, block


def _takes(capacity: Capacity, pod: PodRequest, *, empty: bool) -> Ints:
    """Per node, how many pods like ``pod`` its free room (``empty``: all of it) takes."""
    cpu = capacity.total_cpu if empty else capacity.free_cpu
    memory = capacity.total_memory if empty else capacity.free_memory
    takes = np.full(len(capacity.names), _MANY, dtype=np.int64)
    if pod.cpu_millis > 0:
        takes = np.minimum(takes, np.maximum(cpu, 0) // pod.cpu_millis)
    if pod.memory_bytes > 0:
        takes = np.minimum(takes, np.maximum(memory, 0) // pod.memory_bytes)
    if pod.gpu >= 1:
        devices = capacity.total_gpus if empty else capacity.whole_free
        takes = np.minimum(takes, devices // int(pod.gpu))
    elif pod.gpu > 0:
        used = np.where(np.isfinite(capacity.gpu_used), 0.0, np.inf) if empty else capacity.gpu_used
        per_device = np.floor(np.clip(1.0 - used, 0.0, 1.0) / pod.gpu + EPS)
        takes = np.minimum(takes, per_device.sum(axis=1).astype(np.int64))
    for name, asked in pod.extended:
        if asked > 0:
            offered = capacity.extended_free(name, np.arange(len(capacity.names)), empty=empty)
            takes = np.minimum(takes, np.maximum(offered, 0) // asked)
    eligible: Ints = np.where(capacity.eligible_mask(pod.gpu_model), takes, 0)
    return eligible


def _free(capacity: Capacity, pod: PodRequest) -> Floats:
    """Per node, what is free of ``pod``'s main resource: whole devices (the freest
    device's share for a shared pod), cpu millis or memory bytes."""
    resource = _primary([pod])
    if resource == "gpu" and pod.gpu < 1:
        shares: Floats = np.clip(1.0 - capacity.gpu_used, 0.0, 1.0).max(axis=1, initial=0.0)
        return shares
    amounts = {
        "gpu": capacity.whole_free,
        "cpu": capacity.free_cpu,
        "memory": capacity.free_memory,
    }[resource]
    free: Floats = amounts.astype(np.float64)
    return free


def _groups(gang: Sequence[PodRequest]) -> list[_Group]:
    """The gang's packings: pods asking the same level share one; required ones first,
    then the smallest level."""
    by_level: dict[str, list[int]] = {}
    required: set[str] = set()
    for i, pod in enumerate(gang):
        if pod.topology is None:
            continue
        by_level.setdefault(pod.topology.level, []).append(i)
        if pod.topology.required:
            required.add(pod.topology.level)
    groups = [_Group(level, level in required, tuple(at)) for level, at in by_level.items()]
    return sorted(groups, key=lambda g: (not g.required, g.level))


def _shapes(pods: Sequence[PodRequest]) -> dict[tuple[object, ...], tuple[PodRequest, int]]:
    shapes: dict[tuple[object, ...], tuple[PodRequest, int]] = {}
    for pod in sorted(pods, key=lambda p: (-p.gpu, -p.cpu_millis, -p.memory_bytes)):
        key = (pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model, pod.extended)
        first, count = shapes.get(key, (pod, 0))
        shapes[key] = (first, count + 1)
    return shapes


def _primary(pods: Sequence[PodRequest]) -> str:
    """The resource a packing is measured in: gpu if any pod asks one, else cpu, else memory."""
    if any(p.gpu > 0 for p in pods):
        return "gpu"
    return "cpu" if any(p.cpu_millis > 0 for p in pods) else "memory"


def _amount_of(pod: PodRequest, resource: str) -> float:
    return {"gpu": pod.gpu, "cpu": float(pod.cpu_millis), "memory": float(pod.memory_bytes)}[
        resource
    ]


def _need(pods: Sequence[PodRequest]) -> str:
    """ "16 gpu (8 worker x 2 gpu)": the packing's total and its parts, by role."""
    resource = _primary(pods)
    total = sum(_amount_of(p, resource) for p in pods)
    roles: dict[str, list[PodRequest]] = {}
    for pod in pods:
        roles.setdefault(pod.role, []).append(pod)
    parts = " + ".join(
        f"{len(same)} {role} x {reasons.amount(resource, _amount_of(same[0], resource))}"
        for role, same in sorted(roles.items())
    )
    return f"{reasons.amount(resource, total)} ({parts})"


def _note(pods: Sequence[PodRequest], level: str, block: float, where: str, instead: str) -> str:
    roles = ", ".join(sorted({p.role for p in pods}))
    resource = _primary(pods)
    return reasons.spread_note(
        roles, _need(pods), level, reasons.amount(resource, block), where, instead
    )
