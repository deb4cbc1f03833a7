"""Fragmentation-aware node choice, after FGD (Weng et al., "Beware of Fragmentation", ATC'23).

A node's fragmentation for a pod mix is the free GPU on it that the mix could not use,
weighted by how common each pod type is; a pod goes where that measure grows least.
FGD counts a type's loss as all the node's free GPU if one pod of it does not fit, else
the free share of devices too small for it. Here a type uses as many of its pods as the
node holds at once, by devices with room (a device with 0.75 free holds one 0.5 share,
three 0.25 ones) and cpu, if one pod's memory fits; the rest of the node's free GPU is
lost to it. So a node with 8 free GPUs but cpu for one more GPU pod counts 7 GPUs lost,
where FGD counts none: on the openb trace that is what leaves GPUs idle.

That measure looks one pod ahead, and a type by itself: a device with 0.53 free is
nearly all lost by it (only 0.47 pods use it, 1 in 10), so a 0.32 pod goes there and
leaves 0.21, which hardly any pod fits, when a 0.47 pod would have come along. So the
score adds each device's eventual waste: the share left unused when the pods that fit
its room take it in the order they arrive (each type as likely as its weight among the
types that fit) until none fits; all its room on a node where no pod of the mix fits by
cpu and memory.

Each candidate is a (node, device) option: the devices a shared pod could take (one per
distinct free share), or the node for a whole-GPU or cpu-only pod. Per option only a few
numbers change (free cpu, memory, GPU in all, and per distinct GPU size in the mix how
many of that size the devices hold), so scoring every candidate node at once is a few
numpy operations over (options x pod types). Ties go to the best-fit choice.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from tidemill.scheduler.capacity import EPS, Bools, Capacity, Floats, Indices, Ints
from tidemill.scheduler.placement import request_problem
from tidemill.scheduler.types import (
    ClusterState,
    JobRequest,
    Placement,
    PodRequest,
    PodType,
    SchedulerConfig,
)

MAX_TYPES = 256
"""The most common pod types kept (by weight); openb has 151 shapes, 126 asking a GPU, so
all are kept there. Scoring cost grows with the number kept."""

_MANY = 1e18
"""More pods than any node holds."""

_GRAIN = 1000
"""Eventual waste is tabled per thousandth of a device (openb's and Kubernetes GPU
sharing's unit)."""

_ROUNDING = 1e-6
"""Added before rounding a pod count down: 16000 * (1 / 8000) may come out 1.999..."""

TIE = 1e-9
"""Scores this close are a tie (sums of weighted shares are not exact)."""


def for_cycle(
    state: ClusterState, pending: Sequence[JobRequest], config: SchedulerConfig
) -> Fragmentation | None:
    """The scorer this cycle places with, or None for best fit (by config, or when the
    mix asks no GPU: then every node scores the same).

    The mix is ``state.workload``, or failing that the pods pending in this call and
    those running: what the cluster has been asked for lately.
    """
    if config.scoring != "fragmentation":
        return None
    types = state.workload
    if not types:
        asked = (pod for job in pending for pod in job.pods if request_problem(pod) is None)
        held = (p for job in state.running for p in job.placements)
        types = mix_of(itertools.chain(asked, map(_asked, held)))
    scorer = Fragmentation(types, config.score_nodes)
    return scorer if scorer.weight.size else None


def mix_of(pods: Iterable[PodRequest]) -> tuple[PodType, ...]:
    """``pods`` as pod types weighted by how many ask each shape."""
    counts = Counter((p.cpu_millis, p.memory_bytes, p.gpu, p.gpu_model) for p in pods)
    return tuple(
        PodType(cpu, memory, gpu, float(count), model)
        for (cpu, memory, gpu, model), count in counts.items()
    )


def _asked(placement: Placement) -> PodRequest:
    """What a running pod asked, as far as its placement tells."""
    whole = placement.gpu_share >= 1
    gpu = float(len(placement.gpu_ids)) if whole else placement.gpu_share * bool(placement.gpu_ids)
    return PodRequest(
        placement.role, placement.index, placement.cpu_millis, placement.memory_bytes, gpu
    )


@dataclass(frozen=True)
class _Options:
    """Candidate placements and the GPU state each would leave on its node."""

    rows: Indices
    devices: Indices
    """The device a shared pod takes; -1 for a whole-GPU or cpu-only pod."""
    cpu: Ints
    memory: Ints
    free: Floats
    """Free GPU in all (shares summed)."""
    whole: Ints
    slots: Floats
    """(options, GPU sizes in the mix + 1): how many of each size the free devices hold (a
    device with 0.75 free holds one 0.5 share or three 0.25 ones; a free one, one 1.0);
    the last column, the devices' eventual waste summed."""

    def at(self, positions: Indices) -> _Options:
        """The options at ``positions`` only."""
        return _Options(
            self.rows[positions],
            self.devices[positions],
            self.cpu[positions],
            self.memory[positions],
            self.free[positions],
            self.whole[positions],
            self.slots[positions],
        )


@dataclass(frozen=True)
class _Seen:
    """Every node as last scored: what it had free, and its figures then."""

    cpu: Ints
    memory: Ints
    used: Floats
    free: Floats
    slots: Floats
    score: Floats


class Fragmentation:
    """A pod mix, as arrays, that scores candidate nodes for one pod at a time."""

    def __init__(self, types: Sequence[PodType], score_nodes: int | None = None) -> None:
        self.score_nodes = score_nodes
        """Score at most this many candidate nodes per pod, best fit's first (None: all)."""
        weights: dict[tuple[int, int, float, str | None], float] = {}
        for t in types:
            if t.gpu > 0:
                key = (t.cpu_millis, t.memory_bytes, t.gpu, t.gpu_model)
                weights[key] = weights.get(key, 0.0) + t.weight
        kept = sorted(weights.items(), key=lambda item: -item[1])[:MAX_TYPES]
        self.cpu: Ints = np.array([k[0] for k, _ in kept], dtype=np.int64)
        self.memory: Ints = np.array([k[1] for k, _ in kept], dtype=np.int64)
        gpu = np.array([k[2] for k, _ in kept], dtype=np.float64)
        self.models: tuple[str | None, ...] = tuple(k[3] for k, _ in kept)
        total = sum(w for _, w in kept)
        self.weight: Floats = np.array([w / total for _, w in kept], dtype=np.float64)
        self.gpu_weight: Floats = gpu * self.weight
        """A pod's GPU times its type's weight: what one more pod of a type counts."""
        shared = gpu < 1
        self.count: Ints = np.where(shared, 1, gpu).astype(np.int64)
        """Whole devices a type needs (1 for a shared type: one device with room)."""
        need = np.where(shared, gpu, 1.0)
        self.thresholds: Floats = np.unique(need)
        """The distinct room one device of a type needs: its share, or a whole device."""
        self.threshold_of: Indices = np.searchsorted(self.thresholds, need)
        self.per_device: Floats = 1.0 / self.count
        self.eventual_waste = _eventual_waste(need, self.weight)
        """Per free share of a device, in thousandths: the share its room leaves unused."""
        self.several_devices = bool((self.count > 1).any())
        self.any_model = any(model is not None for model in self.models)
        self.per_cpu: Floats = np.where(self.cpu > 0, 1.0 / np.maximum(self.cpu, 1), 0.0)
        """Pods of each type per device and per millicore."""
        self.no_cpu: Floats = np.where(self.cpu > 0, 0.0, _MANY)
        """Pods of a type that asks no cpu that cpu allows: any number."""
        self._access: tuple[tuple[str | None, ...], Bools] | None = None
        self._seen: _Seen | None = None
        self._versions: Ints = np.zeros(0, dtype=np.int64)
        """Per node, how many times its free resources were seen to change."""
        self._afters: dict[tuple[int, int, float], tuple[Ints, Floats]] = {}
        """Per pod shape: the node versions scored, and the scores placing it leaves."""

    def choose(self, capacity: Capacity, pod: PodRequest, rows: Indices) -> tuple[int, int] | None:
        """The node (among ``rows``, ascending, where cpu, memory and extended resources
        fit) and, for a shared pod, the device where ``pod`` fragments the cluster least
        (-1 for a whole-GPU or cpu-only pod: which free devices it takes is placement's
        choice); None if no node fits."""
        if 0 < pod.gpu < 1:
            rows = rows[capacity.least_used[rows] <= 1.0 - pod.gpu + EPS]
        elif pod.gpu >= 1:
            rows = rows[capacity.whole_free[rows] >= int(pod.gpu)]
        if rows.size == 0:
            return None
        if self.score_nodes is not None and rows.size > self.score_nodes:
            rows = np.sort(rows[_best_fit_first(capacity, pod, rows, self.score_nodes)])
        free = np.clip(1.0 - capacity.gpu_used[rows], 0.0, 1.0)
        before, scores = self._now(capacity, rows)
        rise = self._after_scores(capacity, pod, before, free) - scores[:, np.newaxis]
        is_tied = rise <= rise.min() + TIE
        near = np.flatnonzero(is_tied.any(axis=1))
        after = self._after(before.at(near), free[near], pod)
        position = near[np.searchsorted(rows[near], after.rows)]
        tied = np.flatnonzero(is_tied[position, np.maximum(after.devices, 0)])
        return self._tie_break(capacity, pod, after, free, position, tied)

    def _after_scores(
        self, capacity: Capacity, pod: PodRequest, now: _Options, free: Floats
    ) -> Floats:
        """(nodes of ``now``, devices): the score each way to place ``pod`` leaves; inf
        where it is no option (a cpu-only or whole-GPU pod has one column).

        Kept per pod shape and redone only for nodes that changed since."""
        shape = (pod.cpu_millis, pod.memory_bytes, pod.gpu)
        width = free.shape[1] if 0 < pod.gpu < 1 else 1
        total = capacity.free_cpu.size
        kept = self._afters.get(shape)
        if kept is None or kept[0].size != total:
            kept = self._afters[shape] = (
                np.full(total, -1, dtype=np.int64),
                np.full((total, width), np.inf),
            )
        versions, scores = kept
        rows = now.rows
        stale = np.flatnonzero(versions[rows] != self._versions[rows])
        if stale.size:
            options = self._after(now.at(stale), free[stale], pod)
            scores[rows[stale]] = np.inf
            scores[options.rows, np.maximum(options.devices, 0)] = self._score(capacity, options)
            versions[rows[stale]] = self._versions[rows[stale]]
        found: Floats = scores[rows]
        return found

    def _now(self, capacity: Capacity, rows: Indices) -> tuple[_Options, Floats]:
        """The nodes ``rows`` as they are now, and their scores.

        Per-node figures are kept between calls and redone only for nodes whose free
        cpu, memory or device shares changed since (a placement, a hold, an undo).
        """
        seen = self._seen
        if seen is None or seen.cpu.shape != capacity.free_cpu.shape:
            everyone = np.arange(capacity.free_cpu.size)
            seen = self._seen = self._state(capacity, everyone)
            self._versions = np.zeros(everyone.size, dtype=np.int64)
            self._afters.clear()
        else:
            stale = rows[
                (seen.cpu[rows] != capacity.free_cpu[rows])
                | (seen.memory[rows] != capacity.free_memory[rows])
                | (seen.used[rows] != capacity.gpu_used[rows]).any(axis=1)
            ]
            if stale.size:
                fresh = self._state(capacity, stale)
                for name in ("cpu", "memory", "used", "free", "slots", "score"):
                    getattr(seen, name)[stale] = getattr(fresh, name)
                self._versions[stale] += 1
        now = _Options(
            rows=rows,
            devices=np.full(rows.size, -1, dtype=np.intp),
            cpu=capacity.free_cpu[rows],
            memory=capacity.free_memory[rows],
            free=seen.free[rows],
            whole=capacity.whole_free[rows],
            slots=seen.slots[rows],
        )
        return now, seen.score[rows]

    def _state(self, capacity: Capacity, rows: Indices) -> _Seen:
        used = capacity.gpu_used[rows]
        free = np.clip(1.0 - used, 0.0, 1.0)
        now = _Options(
            rows=rows,
            devices=np.full(rows.size, -1, dtype=np.intp),
            cpu=capacity.free_cpu[rows],
            memory=capacity.free_memory[rows],
            free=free.sum(axis=1),
            whole=capacity.whole_free[rows],
            slots=self._slots(free[:, :, np.newaxis]).sum(axis=1),
        )
        return _Seen(
            now.cpu.copy(),
            now.memory.copy(),
            used.copy(),
            now.free,
            now.slots,
            self._score(capacity, now),
        )

    def _after(self, now: _Options, free: Floats, pod: PodRequest) -> _Options:
        """Every way to place ``pod`` on the nodes of ``now``, as each would leave its node."""
        cpu = now.cpu - pod.cpu_millis
        memory = now.memory - pod.memory_bytes
        if pod.gpu >= 1:
            slots = now.slots - int(pod.gpu) * self._slots(np.ones((1, 1)))
            whole = now.whole - int(pod.gpu)
            return _Options(now.rows, now.devices, cpu, memory, now.free - pod.gpu, whole, slots)
        if pod.gpu <= 0:
            return _Options(now.rows, now.devices, cpu, memory, now.free, now.whole, now.slots)
        at, device = np.nonzero(_distinct_fitting(free, pod.gpu))
        taken = free[at, device]
        left = np.maximum(taken - pod.gpu, 0.0)
        slots = now.slots[at] - self._slots(taken[:, np.newaxis]) + self._slots(left[:, np.newaxis])
        return _Options(
            rows=now.rows[at],
            devices=device,
            cpu=cpu[at],
            memory=memory[at],
            free=now.free[at] - (taken - left),
            whole=now.whole[at] - (taken >= 1.0 - EPS),
            slots=slots,
        )

    def _slots(self, free: Floats) -> Floats:
        """Per threshold (last axis), how many of that size fit in each of ``free`` (whose
        last axis has length 1), and then its eventual waste."""
        slots = np.floor((free + EPS) / self.thresholds)
        grains = np.rint(np.clip(free, 0.0, 1.0) * _GRAIN).astype(np.int64)
        together: Floats = np.concatenate([slots, self.eventual_waste[grains]], axis=-1)
        return together

    def _score(self, capacity: Capacity, options: _Options) -> Floats:
        """Per option, the GPU the pod mix could not use on its node, weighted by
        popularity, plus the GPU its devices will leave unused as arrivals fill them.

        A type uses as many of its pods' GPUs as the node holds pods of it, counting
        devices with room and cpu, and none if one pod's memory does not fit; the rest of
        the free GPU is lost to it. (Capping the count by memory as well measured worse
        on openb: 95.31% against 95.45% at 130% demand, seeds 42-51.) The devices'
        eventual waste counts all their room where no pod of the mix fits by cpu and
        memory (without that gate it measured 95.43%, with it 95.76%; the first term
        alone 95.45%).
        """
        pods = np.floor(options.cpu[:, np.newaxis] * self.per_cpu + _ROUNDING)
        pods += self.no_cpu
        pods *= options.memory[:, np.newaxis] >= self.memory
        if self.any_model:
            pods *= self._accessible(capacity)[options.rows]
        hosts = pods.any(axis=1)
        by_gpu = options.slots[:, self.threshold_of]
        if self.several_devices:
            by_gpu = np.floor(by_gpu * self.per_device + _ROUNDING)
        np.minimum(pods, by_gpu, out=pods)
        usable: Floats = pods @ self.gpu_weight
        eventual = np.where(hosts, options.slots[:, -1], options.free)
        score: Floats = options.free - usable + eventual
        return score

    def _accessible(self, capacity: Capacity) -> Bools:
        """(nodes, types): whether a node has the GPU model a type asks (any, if none)."""
        if self._access is None or self._access[0] is not capacity.models:
            models = np.array([m or "" for m in capacity.models], dtype=object)
            access = np.ones((len(models), len(self.models)), dtype=np.bool_)
            for k, model in enumerate(self.models):
                if model is not None:
                    access[:, k] = models == model
            self._access = (capacity.models, access)
        return self._access[1]

    def _tie_break(
        self,
        capacity: Capacity,
        pod: PodRequest,
        after: _Options,
        free: Floats,
        position: Indices,
        tied: Indices,
    ) -> tuple[int, int]:
        """Among equally good options, best fit: the fullest device a share fits, then
        the fewest whole GPUs left, then the least cpu and memory left."""
        rows = after.rows[tied]
        taken = np.where(
            after.devices[tied] >= 0, free[position[tied], np.maximum(after.devices[tied], 0)], 0.0
        )
        left = (after.cpu[tied] * capacity.cpu_scale[rows]) + (
            after.memory[tied] * capacity.memory_scale[rows]
        )
        best = int(np.lexsort((left, after.whole[tied], taken))[0])
        return int(rows[best]), int(after.devices[tied][best])


def _eventual_waste(need: Floats, weight: Floats) -> Floats:
    """Per free share of a device in thousandths (0 to ``_GRAIN``), the share expected
    left unused when the pods that fit take the room in arrival order, each type (of
    ``need`` on one device, by ``weight``) as likely as its weight among those that
    fit, until none does.

    Rooms are done in runs as long as the smallest need: a run's rooms only refer to
    rooms below the run, done already."""
    grains = np.maximum(np.rint(need * _GRAIN).astype(np.int64), 1)
    sizes, of_size = np.unique(grains, return_inverse=True)
    size_weight = np.bincount(of_size, weights=weight)
    waste: Floats = np.arange(_GRAIN + 1) / _GRAIN
    if sizes.size == 0:
        return waste
    smallest = int(sizes[0])
    for start in range(smallest, _GRAIN + 1, smallest):
        room = np.arange(start, min(start + smallest, _GRAIN + 1))
        left = room[:, np.newaxis] - sizes
        fits = np.where(left >= 0, size_weight, 0.0)
        waste[room] = (fits * waste[np.maximum(left, 0)]).sum(axis=1) / fits.sum(axis=1)
    return waste


def _best_fit_first(capacity: Capacity, pod: PodRequest, rows: Indices, count: int) -> Indices:
    """Positions in ``rows`` (ascending) of ``count`` nodes best fit ranks first: fewest
    whole GPUs to spare, then least cpu and memory left, then the earlier node; in linear
    time (a partition, not a sort), and the same whatever nodes ranked later are in ``rows``."""
    left = (capacity.free_cpu[rows] - pod.cpu_millis) * capacity.cpu_scale[rows]
    left += (capacity.free_memory[rows] - pod.memory_bytes) * capacity.memory_scale[rows]
    key = capacity.whole_free[rows] * 4.0 + left
    kth = np.partition(key, count - 1)[count - 1]
    below = np.flatnonzero(key < kth)
    tied = np.flatnonzero(key == kth)[: count - below.size]  # the earlier nodes, as best fit
    first: Indices = np.concatenate([below, tied])
    return first


def _distinct_fitting(free: Floats, share: float) -> Bools:
    """(nodes, devices): devices with room for ``share``, one per distinct free share on
    a node (two devices with the same room leave the node the same)."""
    fits: Bools = free >= share - EPS
    order = np.argsort(-free, axis=1, kind="stable")
    ranked = np.take_along_axis(free, order, axis=1)
    repeat = np.zeros_like(fits)
    repeat[:, 1:] = np.abs(np.diff(ranked, axis=1)) <= EPS
    first: Bools = np.zeros_like(fits)
    np.put_along_axis(first, order, ~repeat, axis=1)
    return fits & first
