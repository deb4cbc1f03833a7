"""Inside one node: which GPUs a pod gets, and the CPUs that sit beside them.

A GPU talks to host memory through its NUMA node's PCIe root; a process on the other
socket pays the interconnect on every copy. So a pod's whole GPUs come from one NUMA
node when one has enough free (the one with the fewest free that still holds them, so
whole NUMA nodes stay free for bigger pods), else from as few NUMA nodes as possible.

The CPU set is a pure function of the layout and the GPUs held (the CPUs of their NUMA
nodes, as ``torchrun --numa-binding=node`` binds), so it needs no state of its own and
the launcher recomputes it at every start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tidemill.scheduler.types import NumaNode

Layout = tuple[NumaNode, ...]


def whole_devices(free: Sequence[int], count: int, layout: Layout) -> tuple[int, ...]:
    """``count`` devices out of ``free`` (ascending), kept on one NUMA node when one holds them.

    >>> layout = (NumaNode(cpus=(0, 1), gpus=(0, 1)), NumaNode(cpus=(2, 3), gpus=(2, 3)))
    >>> whole_devices([1, 2, 3], 2, layout)
    (2, 3)
    >>> whole_devices([1, 2, 3], 1, layout)
    (1,)
    """
    if not layout:
        return tuple(free[:count])
    available = set(free)
    per_node = [[d for d in node.gpus if d in available] for node in layout]
    holding = [i for i, devices in enumerate(per_node) if len(devices) >= count]
    if holding:
        tightest = min(holding, key=lambda i: (len(per_node[i]), i))
        return tuple(per_node[tightest][:count])
    chosen: list[int] = []
    for i in sorted(range(len(layout)), key=lambda i: (-len(per_node[i]), i)):
        chosen += per_node[i][: count - len(chosen)]
    placed = set(chosen)
    chosen += [d for d in free if d not in placed][: count - len(chosen)]
    return tuple(sorted(chosen))


def cpu_set(layout: Layout, gpu_ids: Sequence[int], cpu_cores: float) -> tuple[int, ...]:
    """The CPUs a replica holding ``gpu_ids`` is pinned to; empty: not pinned.

    The CPUs of the NUMA nodes its GPUs sit on, widened by further NUMA nodes (in
    layout order) while they number fewer than the cores it reserved. A replica
    without GPUs, or on a node with no declared layout, is not pinned.

    >>> layout = (NumaNode(cpus=(0, 1), gpus=(0,)), NumaNode(cpus=(2, 3), gpus=(1,)))
    >>> cpu_set(layout, [1], cpu_cores=2)
    (2, 3)
    >>> cpu_set(layout, [1], cpu_cores=3)
    (0, 1, 2, 3)
    >>> cpu_set(layout, [], cpu_cores=1)
    ()
    """
    held = set(gpu_ids)
    if not layout or not held:
        return ()
    chosen = [node for node in layout if held & set(node.gpus)]
    if not chosen:
        return ()
    wanted = math.ceil(cpu_cores)
    for node in layout:
        if sum(len(n.cpus) for n in chosen) >= wanted:
            break
        if node not in chosen:
            chosen.append(node)
    return tuple(sorted({cpu for node in chosen for cpu in node.cpus}))
