"""Where a gang fits: every pod placed on the snapshot, or none.

Pods go biggest first. For each, numpy masks keep the nodes with enough free cpu,
memory and GPU; ``fragmentation`` picks among them when the cycle scores that way
(``SchedulerConfig.scoring``, the default), else a best-fit score picks the one left
with the least: fewest whole GPUs left over (so big blocks stay whole), then the least
cpu and memory left. Nodes a gang already uses score better as they fill, which packs a
gang onto few nodes. Ties go to the earlier node, so the result depends only on the
input.

Shared pods (``0 < gpu < 1``) take one device whose used share stays at most 1.0,
preferring the fullest device that still fits, so whole devices stay free.

A pod asking extended resources (``rdma/hca: 2``) also needs that much of each free on
its node; they narrow the candidate nodes but do not enter the best-fit score.

``within`` (a mask over nodes) confines a gang to one topology domain; ``topology``
chooses the domains. On a node with a declared NUMA layout a pod's whole GPUs come from
one NUMA node when they fit in one (``numa``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tidemill.scheduler import numa, reasons
from tidemill.scheduler.arrays import Bools, Floats, Indices, Ints
from tidemill.scheduler.capacity import EPS, Capacity
from tidemill.scheduler.reasons import Shortfall
from tidemill.scheduler.types import Placement, PodRequest, Reason

if TYPE_CHECKING:
    from tidemill.scheduler.fragmentation import Fragmentation

_NEVER = int(np.iinfo(np.int64).max)
"""Stands in for "no such node" when taking a minimum over a mask."""


@dataclass(frozen=True)
class Misfit:
    """A gang that did not fit: ``placed`` pods went first, then one found no node."""

    placed: int
    shortfall: Shortfall
    topology: Reason | None = None
    """Set when the gang fit no topology domain it required: the reason to show."""


def size_key(pod: PodRequest) -> tuple[bool, float, int, int]:
    """Sorts spread pods (parameter servers) first, then biggest first: the hardest pods
    get the widest choice of nodes."""
    return (not pod.spread, -pod.gpu, -pod.cpu_millis, -pod.memory_bytes)


def request_problem(pod: PodRequest) -> str | None:
    """What is malformed in ``pod``'s request, if anything; the API layer should have caught it."""
    if pod.cpu_millis < 0 or pod.memory_bytes < 0 or pod.gpu < 0:
        return (
            f"asks cpu_millis={pod.cpu_millis}, memory_bytes={pod.memory_bytes}, "
            f"gpu={pod.gpu:g}; every amount must be zero or more"
        )
    negative = [f"{name}={held}" for name, held in pod.extended if held < 0]
    if negative:
        return f"asks {', '.join(negative)}; every amount must be zero or more"
    if pod.gpu >= 1 and pod.gpu != int(pod.gpu):
        return (
            f"asks {pod.gpu:g} gpu; a pod takes whole GPUs (1, 2, ...) "
            "or one shared fraction below 1"
        )
    return None


def fits_empty_node(capacity: Capacity, pod: PodRequest) -> bool:
    """Whether some eligible node could hold ``pod`` if nothing else ran there."""
    nodes = capacity.eligible(pod.gpu_model)
    enough = (
        (capacity.total_cpu[nodes] >= pod.cpu_millis)
        & (capacity.total_memory[nodes] >= pod.memory_bytes)
        & (capacity.total_gpus[nodes] >= np.ceil(pod.gpu))
    )
    if pod.extended:
        enough &= capacity.extended_mask(pod.extended, empty=True)[nodes]
    return bool(enough.any())


def never_fits(capacity: Capacity, pod: PodRequest) -> Reason:
    """Why ``pod`` fits no eligible node even when empty (``fits_empty_node`` said no)."""
    nodes = capacity.eligible(pod.gpu_model)
    if nodes.size == 0:
        if pod.gpu_model is not None and capacity.schedulable.any():
            return reasons.no_matching_gpu_model(pod, _models_offered(capacity))
        return reasons.no_node_large_enough(pod, (), 0)
    cpu = capacity.total_cpu[nodes]
    memory = capacity.total_memory[nodes]
    gpus = capacity.total_gpus[nodes]
    needed_gpus = int(np.ceil(pod.gpu))
    largest: list[tuple[str, float, str]] = []
    for resource, totals, asked in (
        ("cpu", cpu, pod.cpu_millis),
        ("memory", memory, pod.memory_bytes),
        ("gpu", gpus, needed_gpus),
    ):
        best = int(np.argmax(totals))
        if totals[best] < asked:
            largest.append((resource, float(totals[best]), capacity.names[nodes[best]]))
    for name, asked in pod.extended:
        offered = capacity.extended_free(name, nodes, empty=True)
        best = int(np.argmax(offered))
        if offered[best] < asked:
            largest.append((name, float(offered[best]), capacity.names[nodes[best]]))
    return reasons.no_node_large_enough(pod, largest, int(capacity.schedulable.sum()))


def place_gang(
    capacity: Capacity, pods: Sequence[PodRequest], within: Bools | None = None
) -> tuple[Placement, ...] | Misfit:
    """Place every pod (on nodes in ``within``, if given) and hold them on ``capacity``,
    or hold nothing and say why.

    Placements come back in the order of ``pods``.
    """
    start = capacity.mark()
    placed = _place_all(capacity, pods, within)
    if isinstance(placed, tuple):
        return placed
    shortfall = _shortfall(capacity, placed.pod)
    capacity.undo(start)
    return Misfit(placed.placed, shortfall)


def try_gang(capacity: Capacity, pods: Sequence[PodRequest]) -> tuple[Placement, ...] | None:
    """Like ``place_gang`` without the explanation: the cheap check preemption repeats."""
    start = capacity.mark()
    placed = _place_all(capacity, pods)
    if isinstance(placed, tuple):
        return placed
    capacity.undo(start)
    return None


def fits(pod: PodRequest, free_cpu: Ints, free_memory: Ints, gpu_used: Floats) -> Bools:
    """Per node (row), whether ``pod`` fits in the given free cpu, memory and device shares."""
    ok: Bools = (free_cpu >= pod.cpu_millis) & (free_memory >= pod.memory_bytes)
    if pod.gpu >= 1:
        ok &= (gpu_used <= EPS).sum(axis=1) >= int(pod.gpu)
    elif pod.gpu > 0:
        ok &= (gpu_used <= 1.0 - pod.gpu + EPS).any(axis=1)
    return ok


@dataclass(frozen=True)
class _Stuck:
    placed: int
    pod: PodRequest


def _place_all(
    capacity: Capacity, pods: Sequence[PodRequest], within: Bools | None = None
) -> tuple[Placement, ...] | _Stuck:
    """Hold pods biggest first; stop at the first that fits nowhere, leaving the
    earlier ones held so the caller can explain against that state before undoing."""
    placed: dict[int, Placement] = {}
    spread_nodes: set[str] = set()
    for position, pod in sorted(enumerate(pods), key=lambda item: (*size_key(item[1]), item[0])):
        avoid = spread_nodes if pod.spread else frozenset()
        placement = place_pod(capacity, pod, avoid, within)
        if placement is None:
            return _Stuck(len(placed), pod)
        capacity.hold([placement])
        placed[position] = placement
        if pod.spread:
            spread_nodes.add(placement.node)
    return tuple(placed[i] for i in range(len(pods)))


def place_pod(
    capacity: Capacity,
    pod: PodRequest,
    avoid: AbstractSet[str] = frozenset(),
    within: Bools | None = None,
) -> Placement | None:
    """The best-fit spot for one pod as things are now, on a node in ``within`` (all if
    None), off the nodes in ``avoid`` when another fits; nothing is held."""
    chosen = _choose(capacity, pod, avoid, within)
    if chosen is None:
        return None
    row, devices = chosen
    share = 0.0 if not devices else (1.0 if pod.gpu >= 1 else pod.gpu)
    return Placement(
        role=pod.role,
        index=pod.index,
        node=capacity.names[row],
        cpu_millis=pod.cpu_millis,
        memory_bytes=pod.memory_bytes,
        gpu_ids=devices,
        gpu_share=share,
        extended=pod.extended,
    )


def _choose(
    capacity: Capacity, pod: PodRequest, avoid: AbstractSet[str], within: Bools | None
) -> tuple[int, tuple[int, ...]] | None:
    """The best node for ``pod`` and the devices to take there: by the capacity's
    fragmentation scorer when it has one, else best fit.

    Masks run over all nodes; the scoring gathers only the nodes still in the running.
    On a large cluster a pod with no nodes to avoid and no topology domain to keep to
    reads nodes by free GPUs instead (the same choice, looking only as far as the
    fullest nodes that fit): with best fit, a pod taking whole GPUs or none; with
    fragmentation scoring over ``score_nodes``, any pod.
    """
    scorer = capacity.fragmentation
    whole_or_none = pod.gpu == 0 or pod.gpu >= 1
    if capacity.grouped and not avoid and within is None:
        if scorer is None and whole_or_none:
            return _choose_by_free(capacity, pod)
        if scorer is not None and scorer.score_nodes is not None:
            return _scored(capacity, pod, scorer, None)
    ok = capacity.eligible_mask(pod.gpu_model) & (capacity.free_cpu >= pod.cpu_millis)
    ok &= capacity.free_memory >= pod.memory_bytes
    if within is not None:
        ok &= within
    if pod.extended:
        ok &= capacity.extended_mask(pod.extended)
    if avoid:
        elsewhere = ok.copy()
        elsewhere[[capacity.index[name] for name in avoid]] = False
        if elsewhere.any():
            ok = elsewhere
    if scorer is not None:
        return _scored(capacity, pod, scorer, np.flatnonzero(ok))
    if 0 < pod.gpu < 1:
        ok &= capacity.least_used <= 1.0 - pod.gpu + EPS
        rows = np.flatnonzero(ok)
        if rows.size == 0:
            return None
        fullest = _fullest_fitting(capacity, rows, pod.gpu)
        rows = rows[1.0 - pod.gpu - fullest <= (1.0 - pod.gpu - fullest).min() + EPS]
        secondary: Floats = capacity.whole_free[rows] * 4.0 + _left(capacity, pod, rows)
    else:
        whole = int(pod.gpu)
        if whole:
            ok &= capacity.whole_free >= whole
        spare = np.where(ok, capacity.whole_free, _NEVER)
        fewest = spare.min(initial=_NEVER)
        if fewest == _NEVER:
            return None
        rows = np.flatnonzero(spare == fewest)
        secondary = _left(capacity, pod, rows)
    row = int(rows[int(np.argmin(secondary))])
    return row, _devices(capacity.gpu_used[row], pod.gpu, capacity.numa[row])


def _scored(
    capacity: Capacity, pod: PodRequest, scorer: Fragmentation, rows: Indices | None
) -> tuple[int, tuple[int, ...]] | None:
    """The fragmentation scorer's choice among ``rows`` (ascending; None: the nodes best
    fit ranks first, read by free GPUs), with its devices."""
    chosen = scorer.choose(capacity, pod, rows)
    if chosen is None:
        return None
    row, device = chosen
    if 0 < pod.gpu < 1:
        return row, (device,)
    return row, _devices(capacity.gpu_used[row], pod.gpu, capacity.numa[row])


def _choose_by_free(capacity: Capacity, pod: PodRequest) -> tuple[int, tuple[int, ...]] | None:
    """``_choose`` for whole GPUs: the first group of nodes by free GPUs where it fits
    holds the fewest spare GPUs, and there the least cpu and memory left wins."""
    eligible = capacity.eligible_mask(pod.gpu_model)
    extended = capacity.extended_mask(pod.extended) if pod.extended else None
    for rows in capacity.by_free_gpus(int(pod.gpu)):
        ok = eligible[rows] & (capacity.free_cpu[rows] >= pod.cpu_millis)
        ok &= capacity.free_memory[rows] >= pod.memory_bytes
        if extended is not None:
            ok &= extended[rows]
        if ok.any():
            fitting = rows[ok]
            row = int(fitting[int(np.argmin(_left(capacity, pod, fitting)))])
            return row, _devices(capacity.gpu_used[row], pod.gpu, capacity.numa[row])
    return None


def _left(capacity: Capacity, pod: PodRequest, rows: Indices) -> Floats:
    """Fraction of cpu plus fraction of memory each node would have left: best fit is least.

    With many rows, computing every node's and picking is cheaper than gathering four
    times (the same operations per node, so the same values).
    """
    if rows.size * 8 > capacity.free_cpu.size:
        cpu_all = (capacity.free_cpu - pod.cpu_millis) * capacity.cpu_scale
        memory_all = (capacity.free_memory - pod.memory_bytes) * capacity.memory_scale
        every: Floats = (cpu_all + memory_all)[rows]
        return every
    cpu = (capacity.free_cpu[rows] - pod.cpu_millis) * capacity.cpu_scale[rows]
    memory = (capacity.free_memory[rows] - pod.memory_bytes) * capacity.memory_scale[rows]
    left: Floats = cpu + memory
    return left


def _fullest_fitting(capacity: Capacity, rows: Indices, share: float) -> Floats:
    """Per node of ``rows``, the highest used share among devices that still take
    ``share``; -1 if none.

    Only partly used nodes are looked at device by device: on the others every device is
    idle or full, so (for a share above ``EPS``, on a node with a device that fits) the
    answer is an idle device's 0.
    """
    if share > EPS:
        fullest: Floats = np.zeros(rows.size)
        some = np.flatnonzero(capacity.partial[rows])
        fullest[some] = _fullest(capacity.gpu_used[rows[some]], share)
        return fullest
    return _fullest(capacity.gpu_used[rows], share)


def _fullest(used: Floats, share: float) -> Floats:
    fits: Bools = used <= 1.0 - share + EPS
    fullest: Floats = np.where(fits, used, -1.0).max(axis=1, initial=-1.0)
    return fullest


def _devices(used: Floats, gpu: float, layout: numa.Layout) -> tuple[int, ...]:
    if gpu >= 1:
        free = [int(d) for d in np.flatnonzero(used <= EPS)]
        return numa.whole_devices(free, int(gpu), layout)
    if gpu > 0:
        fitting = np.where(used <= 1.0 - gpu + EPS, used, -1.0)
        return (int(np.argmax(fitting)),)
    return ()


def _shortfall(capacity: Capacity, pod: PodRequest) -> Shortfall:
    """Name the resource that kept ``pod`` off every node, with the best on offer.

    First look for a resource that is short even on nodes with enough of all the others
    (gpu, cpu, memory, then the extended resources the pod asks, by name); if none is,
    report the first resource no node alone can give.
    """
    nodes = capacity.eligible(pod.gpu_model)
    free = {
        "cpu": capacity.free_cpu[nodes].astype(np.float64),
        "memory": capacity.free_memory[nodes].astype(np.float64),
        "gpu": _gpu_free(capacity, nodes, pod.gpu),
    }
    asked = {"cpu": float(pod.cpu_millis), "memory": float(pod.memory_bytes), "gpu": pod.gpu}
    for name, amount in pod.extended:
        free[name] = capacity.extended_free(name, nodes).astype(np.float64)
        asked[name] = float(amount)
    enough = {r: free[r] >= asked[r] - EPS for r in free}
    order = ("gpu", "cpu", "memory", *(name for name, _ in pod.extended))
    for resource in order:
        others = [r for r in order if r != resource]
        base = np.logical_and.reduce([enough[r] for r in others])
        if base.any() and not (base & enough[resource]).any():
            among = tuple(sorted(others)) if not base.all() else ()
            return _best(capacity, pod, nodes, free[resource], base, resource, among)
    everywhere = np.ones(nodes.size, dtype=np.bool_)
    short = next((r for r in order if not enough[r].any()), order[0])
    return _best(capacity, pod, nodes, free[short], everywhere, short, ())


def _gpu_free(capacity: Capacity, nodes: Indices, gpu: float) -> Floats:
    """Whole free devices per node, or for shared pods the largest free share of one device."""
    if 0 < gpu < 1:
        spare: Floats = np.clip(1.0 - capacity.gpu_used[nodes], 0.0, 1.0)
        most: Floats = spare.max(axis=1, initial=0.0)
        return most
    return capacity.whole_free[nodes].astype(np.float64)


def _best(
    capacity: Capacity,
    pod: PodRequest,
    nodes: Indices,
    free: Floats,
    among: Bools,
    resource: str,
    enough_of: tuple[str, ...],
) -> Shortfall:
    candidates = np.flatnonzero(among)
    pick = int(candidates[int(np.argmax(free[candidates]))])
    return Shortfall(
        pod=pod,
        resource=resource,
        best=float(free[pick]),
        node=capacity.names[int(nodes[pick])],
        among=enough_of,
    )


def _models_offered(capacity: Capacity) -> dict[str, int]:
    counts = Counter(
        model
        for model, on in zip(capacity.models, capacity.schedulable, strict=True)
        if on and model is not None
    )
    return dict(counts)
