"""Fragmentation scoring of one pod's candidate nodes, compiled (numba).

Scoring every candidate (node, device) option of a pod for the whole pod mix as numpy
operations costs some thirty calls per pod, most of it overhead at 128 candidates.
Here ``choose`` scores the candidates and breaks ties in one call, node by node, with
the arithmetic ``score`` writes out (the measure ``fragmentation`` describes); on a large
cluster ``best_by_free`` first picks the candidates while walking nodes by free GPUs.
Per-node figures are kept in ``NodeCache`` arrays and redone only for nodes whose free
resources changed since they were last read, and only for nodes a pod looks at: a cycle
pays for the candidates it scores, not the cluster.

Every figure of a node depends on that node alone and is summed in a fixed order, so a
node scores the same whichever other nodes are scored with it (a fresh cycle and one
carried from a memo agree to the bit).
"""

from __future__ import annotations

import numba
import numpy as np

from tidemill.scheduler.arrays import Bools, Floats, Indices, Ints
from tidemill.scheduler.capacity import EPS
from tidemill.scheduler.fragmentation import GRAIN

ROUNDING = 1e-6
"""Added before rounding a pod count down: 16000 * (1 / 8000) may come out 1.999..."""

TIE = 1e-9
"""Scores this close are a tie (sums of weighted shares are not exact)."""

Mix = tuple[Floats, Floats, Ints, Indices, Floats, Floats, Floats, Indices, bool, Floats]
"""A pod mix as the kernel reads it: per type, pods per millicore, pods cpu allows a type
asking none, memory, threshold column, pods per device, GPU times weight; the distinct
thresholds; per type, its column in the model access matrix (-1: any node); whether a
type needs several devices; a device's eventual waste per thousandth of room free."""

NodeCache = tuple[Ints, Ints, Ints, Ints, Floats, Ints, Floats, Floats, Floats]
"""Nodes scored this cycle: per node its row in the rest (-1: none yet), the rows taken
(one number), then per row as last read: free cpu, memory, device shares used, a version
(0: never read; counts changes seen), free GPU in all, slots per threshold and then the
devices' eventual waste summed, score. Rows
are handed out as nodes are first scored, so the arrays grow with the nodes a cycle
looks at rather than the cluster; the caller keeps room for the nodes a call may add."""


@numba.njit(cache=True, nogil=True)
def choose(
    rows: Indices,
    pod: tuple[int, int, float],
    score_nodes: int,
    free_cpu: Ints,
    free_memory: Ints,
    gpu_used: Floats,
    whole_free: Ints,
    least_used: Floats,
    cpu_scale: Floats,
    memory_scale: Floats,
    mix: Mix,
    access: Bools,
    nodes: NodeCache,
    after_versions: Ints,
    after_scores: Floats,
) -> tuple[int, int]:
    """(node, device) among ``rows`` (ascending, cpu and memory fit) where ``pod`` (cpu
    millis, memory bytes, gpu) raises the unusable GPU least, ties to best fit; device -1
    for a whole-GPU or cpu-only pod; (-1, -1) when none fits. At most ``score_nodes``
    (0: all) candidates are scored, those best fit ranks first.

    ``after_versions`` / ``after_scores`` keep, for this pod's shape, per ``nodes`` row
    the version scored and each option's score (column: device for a shared pod, else 0)."""
    cpu, memory, gpu = pod
    shared = 0.0 < gpu < 1.0
    whole = int(gpu) if gpu >= 1.0 else 0
    fitting = np.empty(rows.size, dtype=np.int64)
    count = 0
    for row in rows:
        if shared and least_used[row] > 1.0 - gpu + EPS:
            continue
        if whole and whole_free[row] < whole:
            continue
        fitting[count] = row
        count += 1
    if count == 0:
        return -1, -1
    candidates = fitting[:count]
    if 0 < score_nodes < count:
        candidates = _best_fit_first(
            candidates,
            cpu,
            memory,
            score_nodes,
            free_cpu,
            free_memory,
            whole_free,
            cpu_scale,
            memory_scale,
        )
    node_score = nodes[8]
    free = np.empty(gpu_used.shape[1])
    slots = np.empty(mix[6].size + 1)
    order = np.empty(gpu_used.shape[1], dtype=np.int64)
    at = np.empty(candidates.size, dtype=np.int64)
    best_rise = np.inf
    for i, row in enumerate(candidates):
        slot = at[i] = _refresh(row, free_cpu, free_memory, gpu_used, mix, access, nodes, free)
        version = nodes[5][slot]
        if after_versions[slot] != version:
            _score_options(
                row,
                slot,
                cpu,
                memory,
                gpu,
                free_cpu,
                free_memory,
                gpu_used,
                mix,
                access,
                nodes,
                after_scores[slot],
                free,
                slots,
                order,
            )
            after_versions[slot] = version
        for column in range(after_scores.shape[1]):
            best_rise = min(best_rise, after_scores[slot, column] - node_score[slot])
    if best_rise == np.inf:
        return -1, -1
    chosen, chosen_device = -1, -1
    best_taken, best_whole, best_left = np.inf, 0, np.inf
    for i, row in enumerate(candidates):
        slot = at[i]
        left = (free_cpu[row] - cpu) * cpu_scale[row] + (free_memory[row] - memory) * memory_scale[
            row
        ]
        for column in range(after_scores.shape[1]):
            if not after_scores[slot, column] - node_score[slot] <= best_rise + TIE:
                continue
            taken = 0.0
            spare = whole_free[row] - whole
            if shared:
                taken = min(max(1.0 - gpu_used[row, column], 0.0), 1.0)
                spare = whole_free[row] - (1 if taken >= 1.0 - EPS else 0)
            if chosen < 0 or _before(taken, spare, left, best_taken, best_whole, best_left):
                best_taken, best_whole, best_left = taken, spare, left
                chosen, chosen_device = row, (column if shared else -1)
    return chosen, chosen_device


@numba.njit(cache=True, nogil=True)
def best_by_free(
    grouped: Ints,
    fewest: int,
    count: int,
    eligible: Bools,
    extended: Bools,
    free_cpu: Ints,
    free_memory: Ints,
    whole_free: Ints,
    least_used: Floats,
    cpu_scale: Floats,
    memory_scale: Floats,
    pod: tuple[int, int, float],
) -> Ints:
    """The ``count`` nodes best fit ranks first for ``pod`` (cpu millis, memory bytes,
    gpu: a device's share, a whole count, or none) among those in ``eligible`` (and
    ``extended``, unless empty) where it fits, ascending; read group by group from
    ``fewest`` whole free GPUs, stopping after the group where ``count`` are found (a
    later group's nodes all rank after: their keys are larger). ``grouped``: node rows
    as ``whole free GPUs * nodes + row``, sorted (``Capacity.free_gpu_order``)."""
    cpu, memory, gpu = pod
    shared = 0.0 < gpu < 1.0
    nodes = free_cpu.size
    found = np.empty(grouped.size, dtype=np.int64)
    total = 0
    group = -1
    group_start = 0
    for at in range(np.searchsorted(grouped, fewest * nodes), grouped.size):
        key = grouped[at]
        if key // nodes != group:
            if total >= count:
                break
            group = key // nodes
            group_start = total
        row = key - group * nodes
        if not eligible[row] or free_cpu[row] < cpu or free_memory[row] < memory:
            continue
        if extended.size and not extended[row]:
            continue
        if shared and least_used[row] > 1.0 - gpu + EPS:
            continue
        found[total] = row
        total += 1
    if total > count:
        last = found[group_start:total]
        kept = _best_fit_first(
            last,
            cpu,
            memory,
            count - group_start,
            free_cpu,
            free_memory,
            whole_free,
            cpu_scale,
            memory_scale,
        )
        found[group_start : group_start + kept.size] = kept
        total = group_start + kept.size
    return np.sort(found[:total])


@numba.njit(cache=True, nogil=True, inline="always")
def _before(
    taken: float, spare: int, left: float, taken_b: float, spare_b: int, left_b: float
) -> bool:
    """Whether (taken, spare, left) sorts before the other: best fit's order of ties."""
    if taken != taken_b:
        return taken < taken_b
    if spare != spare_b:
        return spare < spare_b
    return left < left_b


@numba.njit(cache=True, nogil=True)
def _best_fit_first(
    rows: Ints,
    cpu: int,
    memory: int,
    count: int,
    free_cpu: Ints,
    free_memory: Ints,
    whole_free: Ints,
    cpu_scale: Floats,
    memory_scale: Floats,
) -> Ints:
    """The ``count`` of ``rows`` best fit ranks first, in the order of ``rows``: the
    keys below the ``count``-th smallest, then as many equal to it as there is room for,
    the earlier first (``rows`` ascend, or all ties lie in one ascending run)."""
    keys = np.empty(rows.size)
    for i, row in enumerate(rows):
        keys[i] = _fit_key(
            row, cpu, memory, free_cpu, free_memory, whole_free, cpu_scale, memory_scale
        )
    kth = np.partition(keys, count - 1)[count - 1]
    below = 0
    for key in keys:
        below += key < kth
    ties = count - below
    first = np.empty(count, dtype=np.int64)
    taken = 0
    for i, row in enumerate(rows):
        if keys[i] < kth or (keys[i] == kth and ties > 0):
            ties -= keys[i] == kth
            first[taken] = row
            taken += 1
    return first


@numba.njit(cache=True, nogil=True, inline="always")
def _fit_key(
    row: int,
    cpu: int,
    memory: int,
    free_cpu: Ints,
    free_memory: Ints,
    whole_free: Ints,
    cpu_scale: Floats,
    memory_scale: Floats,
) -> float:
    """Best fit's rank of ``row`` (smaller first): whole GPUs to spare, then the share of
    cpu and of memory left (together at most 2, so never past the next whole GPU)."""
    left = (free_cpu[row] - cpu) * cpu_scale[row]
    left += (free_memory[row] - memory) * memory_scale[row]
    key: float = whole_free[row] * 4.0 + left
    return key


@numba.njit(cache=True, nogil=True, inline="always")
def _refresh(
    row: int,
    free_cpu: Ints,
    free_memory: Ints,
    gpu_used: Floats,
    mix: Mix,
    access: Bools,
    nodes: NodeCache,
    free: Floats,
) -> int:
    """``row``'s place in ``nodes``, its figures redone if its free cpu, memory or
    shares changed since last read (``free``: room for one node's devices)."""
    slot_of, taken, seen_cpu, seen_memory, seen_used, versions, node_free, node_slots, score_ = (
        nodes
    )
    slot: int = slot_of[row]
    if slot < 0:
        if taken[0] == seen_cpu.size:
            raise ValueError("fragmentation_kernel: no room left in the node figures")
        slot = slot_of[row] = taken[0]
        taken[0] += 1
        versions[slot] = 0
    stale = (
        versions[slot] == 0
        or seen_cpu[slot] != free_cpu[row]
        or seen_memory[slot] != free_memory[row]
    )
    width = gpu_used.shape[1]
    for device in range(width):
        stale = stale or seen_used[slot, device] != gpu_used[row, device]
    if not stale:
        return slot
    seen_cpu[slot] = free_cpu[row]
    seen_memory[slot] = free_memory[row]
    for device in range(width):
        seen_used[slot, device] = gpu_used[row, device]
        free[device] = min(max(1.0 - gpu_used[row, device], 0.0), 1.0)
    thresholds = mix[6]
    for k in range(thresholds.size):
        slots = 0.0
        for device in range(width):
            slots += np.floor((free[device] + EPS) / thresholds[k])
        node_slots[slot, k] = slots
    waste = 0.0
    for device in range(width):
        waste += _waste(free[device], mix)
    node_slots[slot, thresholds.size] = waste
    node_free[slot] = _numpy_sum(free)
    score_[slot] = score(
        row, free_cpu[row], free_memory[row], node_free[slot], node_slots[slot], mix, access
    )
    versions[slot] += 1
    return slot


@numba.njit(cache=True, nogil=True, inline="always")
def _score_options(
    row: int,
    slot: int,
    cpu: int,
    memory: int,
    gpu: float,
    free_cpu: Ints,
    free_memory: Ints,
    gpu_used: Floats,
    mix: Mix,
    access: Bools,
    nodes: NodeCache,
    scores: Floats,
    free: Floats,
    slots: Floats,
    order: Ints,
) -> None:
    """Score each way to place the pod on ``row`` into ``scores`` (inf: no option): a
    shared pod, on each device with room, one per distinct free share (two devices with
    the same room leave the node the same); others, as one option. ``free``, ``slots``
    and ``order``: room for one node's figures."""
    thresholds = mix[6]
    node_free, node_slots = nodes[6][slot], nodes[7][slot]
    cpu_left = free_cpu[row] - cpu
    memory_left = free_memory[row] - memory
    scores[:] = np.inf
    if gpu >= 1.0:
        for k in range(thresholds.size):
            slots[k] = node_slots[k] - int(gpu) * np.floor((1.0 + EPS) / thresholds[k])
        slots[thresholds.size] = node_slots[thresholds.size] - int(gpu) * _waste(1.0, mix)
        scores[0] = score(row, cpu_left, memory_left, node_free - gpu, slots, mix, access)
        return
    if gpu <= 0.0:
        scores[0] = score(row, cpu_left, memory_left, node_free, node_slots, mix, access)
        return
    width = gpu_used.shape[1]
    for device in range(width):
        free[device] = min(max(1.0 - gpu_used[row, device], 0.0), 1.0)
    _stable_descending(free, order)
    previous = np.nan
    for rank in range(width):
        device = order[rank]
        taken = free[device]
        repeat = rank > 0 and abs(taken - previous) <= EPS
        previous = taken
        if repeat or taken < gpu - EPS:
            continue
        left = max(taken - gpu, 0.0)
        for k in range(thresholds.size):
            slots[k] = node_slots[k] - np.floor((taken + EPS) / thresholds[k])
            slots[k] += np.floor((left + EPS) / thresholds[k])
        waste = node_slots[thresholds.size] - _waste(taken, mix)
        slots[thresholds.size] = waste + _waste(left, mix)
        scores[device] = score(
            row, cpu_left, memory_left, node_free - (taken - left), slots, mix, access
        )


@numba.njit(cache=True, nogil=True, inline="always")
def score(
    row: int, cpu: int, memory: int, free: float, slots: Floats, mix: Mix, access: Bools
) -> float:
    """The GPU the pod mix could not use on a node left with ``cpu``, ``memory``, ``free``
    GPU in all and ``slots`` per threshold (and last the devices' eventual waste),
    weighted by popularity, plus the GPU its devices will leave unused as arrivals fill
    them.

    A type uses as many of its pods' GPUs as the node holds pods of it, counting
    devices with room and cpu, and none if one pod's memory does not fit; the rest of
    the free GPU is lost to it. (Capping the count by memory as well measured worse
    on openb: 95.31% against 95.45% at 130% demand, seeds 42-51.) The eventual waste
    counts all the room where no pod of the mix fits by cpu and memory (without that
    gate it measured 95.43%, with it 95.76%).
    """
    per_cpu, no_cpu, type_memory, threshold_of, per_device, gpu_weight, thresholds = mix[:7]
    column, several = mix[7], mix[8]
    usable = 0.0
    hosts = False
    for k in range(per_cpu.size):
        pods = np.floor(cpu * per_cpu[k] + ROUNDING) + no_cpu[k]
        pods *= 1.0 if memory >= type_memory[k] else 0.0
        if column[k] >= 0:
            pods *= 1.0 if access[row, column[k]] else 0.0
        hosts = hosts or pods > 0.0
        by_gpu = slots[threshold_of[k]]
        if several:
            by_gpu = np.floor(by_gpu * per_device[k] + ROUNDING)
        usable += min(pods, by_gpu) * gpu_weight[k]
    eventual = slots[thresholds.size] if hosts else free
    return free - usable + eventual


@numba.njit(cache=True, nogil=True, inline="always")
def _waste(room: float, mix: Mix) -> float:
    """The eventual waste of a device with ``room`` free (clipped to one device)."""
    grains = int(np.rint(min(max(room, 0.0), 1.0) * GRAIN))
    waste: float = mix[9][grains]
    return waste


@numba.njit(cache=True, nogil=True, inline="always")
def _stable_descending(values: Floats, order: Ints) -> None:
    """Fill ``order`` with the positions of ``values`` from largest to smallest, equal
    ones in position order."""
    for i in range(values.size):
        order[i] = i
    for i in range(1, values.size):
        moving = order[i]
        j = i
        while j > 0 and values[order[j - 1]] < values[moving]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = moving


@numba.njit(cache=True, nogil=True)
def _numpy_sum(values: Floats) -> float:
    """``values.sum()`` in numpy's order (pairwise, eight lanes), so a node's free GPU is
    the number numpy gives for it."""
    n = values.size
    if n < 8:
        total = 0.0
        for value in values:
            total += value
        return total
    if n <= 128:
        lanes = values[:8].copy()
        i = 8
        while i < n - n % 8:
            for lane in range(8):
                lanes[lane] += values[i + lane]
            i += 8
        paired: float = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + (
            (lanes[4] + lanes[5]) + (lanes[6] + lanes[7])
        )
        while i < n:
            paired += values[i]
            i += 1
        return paired
    half = n // 2
    half -= half % 8
    return _numpy_sum(values[:half]) + _numpy_sum(values[half:])
