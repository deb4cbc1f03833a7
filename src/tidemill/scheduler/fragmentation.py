"""Fragmentation-aware node choice, after FGD (Weng et al., "Beware of Fragmentation", ATC'23).

A node's fragmentation for a pod mix is the free GPU on it that the mix could not use,
weighted by how common each pod type is; a pod goes where that measure grows least.
FGD counts a type's loss as all the node's free GPU if one pod of it does not fit, else
the free share of devices too small for it. Here a type uses as many of its pods as the
node holds at once, by devices with room (a device with 0.75 free holds one 0.5 share,
three 0.25 ones) and cpu, if one pod's memory fits; the rest of the node's free GPU is
lost to it. So a node with 8 free GPUs but cpu for one more GPU pod counts 7 GPUs lost,
where FGD counts none: on the openb trace that is what leaves GPUs idle.

Each candidate is a (node, device) option: the devices a shared pod could take (one per
distinct free share), or the node for a whole-GPU or cpu-only pod. Per option only a few
numbers change (free cpu, memory, GPU in all, and per distinct GPU size in the mix how
many of that size the devices hold, and the devices' eventual waste); ``fragmentation_kernel``
scores them, compiled. Ties go to the best-fit choice.

Beside what the mix could not use now, a node's score counts its devices' eventual
waste: the share of each device's room expected to stay unused when the pods that fit
it arrive in their mix's proportions and take it until none fits (``_eventual_waste``),
or all the room where no pod of the mix fits by cpu and memory. One pod ahead, a device
with 0.53 free looks almost all lost to a mix where 0.47 pods are rare, so a 0.32 pod
went there and left 0.21 that nothing fits; counting where the room ends up, it goes
beside another 0.32 and the 0.53 waits for its 0.47 (openb at 130% demand, seeds 42-51:
95.76% of GPUs allocated, against 95.45% with the first term alone).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from tidemill.scheduler.arrays import Bools, Floats, Indices, Ints
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.placement import request_problem
from tidemill.scheduler.types import (
    ClusterState,
    JobRequest,
    Placement,
    PodRequest,
    PodType,
    SchedulerConfig,
)

if TYPE_CHECKING:
    from tidemill.scheduler import fragmentation_kernel as kernel

MAX_TYPES = 256
"""The most common pod types kept (by weight); openb has 151 shapes, 126 asking a GPU, so
all are kept there. Scoring cost grows with the number kept."""

_MANY = 1e18
"""More pods than any node holds."""

GRAIN = 1000
"""Eventual waste is tabled per thousandth of a device (openb's and Kubernetes GPU
sharing's unit)."""

_FIRST_ROWS = 1024
"""Nodes the per-node figures have room for at first (a cycle of a few pods scores a
few hundred)."""

Array = npt.NDArray[Any]

_NONE: Bools = np.zeros(0, dtype=np.bool_)
"""No extended resources asked: no mask."""

Shape = tuple[int, int, float, str | None]
"""What a pod asks: cpu millis, memory bytes, GPU (a count or a share), GPU model."""


def for_cycle(
    state: ClusterState,
    pending: Sequence[JobRequest],
    config: SchedulerConfig,
    held: Mapping[Shape, int],
) -> Fragmentation | None:
    """The scorer this cycle places with, or None for best fit (by config, or when the
    mix asks no GPU: then every node scores the same).

    The mix is ``state.workload``, or failing that the pods pending in this call and
    those running (``held``: how many running pods hold each shape, as the memo counts
    them): what the cluster has been asked for lately.
    """
    if config.scoring != "fragmentation":
        return None
    types = state.workload
    if not types:
        asked = (pod for job in pending for pod in job.pods if request_problem(pod) is None)
        counts = Counter(map(shape_of, asked))
        counts.update(held)
        types = types_of(counts)
    scorer = Fragmentation(types, config.score_nodes)
    return scorer if scorer.weight.size else None


def mix_of(pods: Iterable[PodRequest]) -> tuple[PodType, ...]:
    """``pods`` as pod types weighted by how many ask each shape."""
    return types_of(Counter(map(shape_of, pods)))


def types_of(counts: Mapping[Shape, int]) -> tuple[PodType, ...]:
    """Pod types weighted by ``counts`` (pods per shape)."""
    return tuple(
        PodType(cpu, memory, gpu, float(count), model)
        for (cpu, memory, gpu, model), count in counts.items()
        if count > 0
    )


def shape_of(pod: PodRequest) -> Shape:
    return pod.cpu_millis, pod.memory_bytes, pod.gpu, pod.gpu_model


def held_shape(placement: Placement) -> Shape:
    """What a running pod asked, as far as its placement tells (not its GPU model)."""
    whole = placement.gpu_share >= 1
    gpu = float(len(placement.gpu_ids)) if whole else placement.gpu_share * bool(placement.gpu_ids)
    return placement.cpu_millis, placement.memory_bytes, gpu, None


class Fragmentation:
    """A pod mix, as arrays, that scores candidate nodes for one pod at a time."""

    def __init__(self, types: Sequence[PodType], score_nodes: int | None = None) -> None:
        from tidemill.scheduler import fragmentation_kernel  # numba: only once scoring

        self._kernel = fragmentation_kernel
        self.score_nodes = score_nodes
        """Score at most this many candidate nodes per pod, best fit's first (None: all)."""
        weights: dict[Shape, float] = {}
        for t in types:
            if t.gpu > 0:
                key = (t.cpu_millis, t.memory_bytes, t.gpu, t.gpu_model)
                weights[key] = weights.get(key, 0.0) + t.weight
        # Ties in weight in shape order, so the same mix gives the same arrays whatever
        # order its types came in (a mix counted afresh and one carried in a memo).
        kept = sorted(weights.items(), key=lambda item: (-item[1], *_sortable(item[0])))
        kept = kept[:MAX_TYPES]
        cpu = np.array([k[0] for k, _ in kept], dtype=np.int64)
        memory = np.array([k[1] for k, _ in kept], dtype=np.int64)
        gpu = np.array([k[2] for k, _ in kept], dtype=np.float64)
        self.models: tuple[str | None, ...] = tuple(k[3] for k, _ in kept)
        total = sum(w for _, w in kept)
        self.weight: Floats = np.array([w / total for _, w in kept], dtype=np.float64)
        shared = gpu < 1
        count = np.where(shared, 1, gpu).astype(np.int64)
        """Whole devices a type needs (1 for a shared type: one device with room)."""
        need = np.where(shared, gpu, 1.0)
        thresholds: Floats = np.unique(need)
        """The distinct room one device of a type needs: its share, or a whole device."""
        self._distinct_models = tuple(sorted({m for m in self.models if m is not None}))
        column = np.array(
            [-1 if m is None else self._distinct_models.index(m) for m in self.models],
            dtype=np.intp,
        )
        self._mix: kernel.Mix = (
            np.where(cpu > 0, 1.0 / np.maximum(cpu, 1), 0.0),
            np.where(cpu > 0, 0.0, _MANY),
            memory,
            np.searchsorted(thresholds, need).astype(np.intp),
            1.0 / count,
            gpu * self.weight,
            thresholds,
            column,
            bool((count > 1).any()),
            _eventual_waste(need, self.weight),
        )
        self._access: tuple[Capacity, Bools] | None = None
        self._nodes: kernel.NodeCache | None = None
        self._afters: dict[tuple[int, int, float], tuple[Ints, Floats]] = {}
        """Per pod shape: the node versions scored, and the scores placing it leaves."""

    def choose(
        self, capacity: Capacity, pod: PodRequest, rows: Indices | None
    ) -> tuple[int, int] | None:
        """The node (among ``rows``, ascending, where cpu, memory and extended resources
        fit) and, for a shared pod, the device where ``pod`` fragments the cluster least
        (-1 for a whole-GPU or cpu-only pod: which free devices it takes is placement's
        choice); None if no node fits.

        ``rows`` None, on a grouped capacity with ``score_nodes`` set: the nodes read by
        whole free GPUs, fewest first, until ``score_nodes`` fit (every node best fit
        ranks first is among them)."""
        kernel = self._kernel
        asked = (pod.cpu_millis, pod.memory_bytes, float(pod.gpu))
        score_nodes = self.score_nodes or 0
        if rows is None:
            rows = kernel.best_by_free(
                capacity.free_gpu_order(),
                int(pod.gpu),
                score_nodes,
                capacity.eligible_mask(pod.gpu_model),
                capacity.extended_mask(pod.extended) if pod.extended else _NONE,
                capacity.free_cpu,
                capacity.free_memory,
                capacity.whole_free,
                capacity.least_used,
                capacity.cpu_scale,
                capacity.memory_scale,
                asked,
            )
        scored = rows.size if self.score_nodes is None else min(rows.size, self.score_nodes)
        nodes = self._room_for(capacity, scored)
        versions, scores = self._after_cache(pod, nodes[2].size, capacity.gpu_used.shape[1])
        row, device = kernel.choose(
            rows,
            asked,
            score_nodes,
            capacity.free_cpu,
            capacity.free_memory,
            capacity.gpu_used,
            capacity.whole_free,
            capacity.least_used,
            capacity.cpu_scale,
            capacity.memory_scale,
            self._mix,
            self._accessible(capacity),
            nodes,
            versions,
            scores,
        )
        return None if row < 0 else (int(row), int(device))

    def _room_for(self, capacity: Capacity, more: int) -> kernel.NodeCache:
        """The per-node figures of ``capacity``'s nodes scored so far, with room for
        ``more`` nodes (the arrays, and every pod shape's, grown by doubling)."""
        count, width = capacity.gpu_used.shape
        nodes = self._nodes
        if nodes is None or nodes[0].size != count or nodes[4].shape[1] != width:
            empty = (
                np.zeros(0, dtype=np.int64),
                np.zeros(0, dtype=np.int64),
                np.zeros((0, width)),
                np.zeros(0, dtype=np.int64),
                np.zeros(0),
                np.zeros((0, self._mix[6].size + 1)),
                np.zeros(0),
            )
            nodes = self._nodes = (
                np.full(count, -1, dtype=np.int64),
                np.zeros(1, dtype=np.int64),
                *empty,
            )
            self._afters.clear()
        rows = nodes[2].size
        needed = min(int(nodes[1][0]) + more, count)
        if needed > rows:
            size = min(count, max(needed, 2 * rows, _FIRST_ROWS))
            nodes = self._nodes = cast("kernel.NodeCache", (*nodes[:2], *_grown(nodes[2:], size)))
            for shape, (versions, scores) in self._afters.items():
                self._afters[shape] = (_grown((versions,), size)[0], _grown((scores,), size)[0])
        return nodes

    def _after_cache(self, pod: PodRequest, rows: int, width: int) -> tuple[Ints, Floats]:
        """For ``pod``'s shape: per row of the node figures (``rows`` of them), the node
        version last scored and its options' scores (``width`` devices a node has at most)."""
        shape = (pod.cpu_millis, pod.memory_bytes, pod.gpu)
        kept = self._afters.get(shape)
        if kept is None:
            columns = width if 0 < pod.gpu < 1 else 1
            kept = self._afters[shape] = (
                np.zeros(rows, dtype=np.int64),
                np.zeros((rows, columns)),
            )
        return kept

    def _accessible(self, capacity: Capacity) -> Bools:
        """(nodes, models the mix asks): whether a node may run pods asking each model
        (nodes no candidate list holds, the unschedulable, read as no)."""
        if self._access is None or self._access[0] is not capacity:
            count = capacity.free_cpu.size
            access = np.empty((count, len(self._distinct_models)), dtype=np.bool_)
            for k, model in enumerate(self._distinct_models):
                access[:, k] = capacity.eligible_mask(model)
            self._access = (capacity, access)
        return self._access[1]


def _grown(arrays: Iterable[Array], rows: int) -> tuple[Array, ...]:
    """``arrays`` with ``rows`` rows each: theirs first, then zeros."""
    grown = []
    for array in arrays:
        bigger = np.zeros((rows, *array.shape[1:]), dtype=array.dtype)
        bigger[: array.shape[0]] = array
        grown.append(bigger)
    return tuple(grown)


def _eventual_waste(need: Floats, weight: Floats) -> Floats:
    """Per free share of a device in thousandths (0 to ``GRAIN``), the share expected
    left unused when the pods that fit take the room in arrival order, each type (of
    ``need`` on one device, by ``weight``) as likely as its weight among those that
    fit, until none does.

    Rooms are done in runs as long as the smallest need: a run's rooms only refer to
    rooms below the run, done already."""
    grains = np.maximum(np.rint(need * GRAIN).astype(np.int64), 1)
    sizes, of_size = np.unique(grains, return_inverse=True)
    size_weight = np.bincount(of_size, weights=weight)
    waste: Floats = np.arange(GRAIN + 1) / GRAIN
    if sizes.size == 0:
        return waste
    smallest = int(sizes[0])
    for start in range(smallest, GRAIN + 1, smallest):
        room = np.arange(start, min(start + smallest, GRAIN + 1))
        left = room[:, np.newaxis] - sizes
        fits = np.where(left >= 0, size_weight, 0.0)
        waste[room] = (fits * waste[np.maximum(left, 0)]).sum(axis=1) / fits.sum(axis=1)
    return waste


def _sortable(shape: Shape) -> tuple[int, int, float, bool, str]:
    cpu, memory, gpu, model = shape
    return cpu, memory, gpu, model is not None, model or ""
