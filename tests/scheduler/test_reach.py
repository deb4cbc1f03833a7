"""What a preemption plan keeps between asks agrees with working it out afresh.

Random clusters with random running jobs (shares that do not add up exactly in floating
point among them): victims are stopped one by one on a lent room and the pod placed
where it then fits, as a plan does. After each step the nodes the pod could fit on once
candidates are freed, kept current by the nodes touched, must equal a fresh
computation, and once the plan ends the lent room must be exactly as it was.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.scheduler import ClusterState, NodeInfo, Placement, PodRequest, QueueInfo, RunningJob
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.placement import place_pod
from tidemill.scheduler.reach import Reach
from tidemill.scheduler.victims import VictimPool

GIB = 2**30
SHARES = (0.1, 0.2, 0.3, 0.5, 1.0)


@st.composite
def clusters(draw: st.DrawFn) -> ClusterState:
    """Up to five 4-GPU nodes, each with up to four one-device pods of random shares."""
    nodes = tuple(NodeInfo(f"n{i}", 16_000, 64 * GIB, 4) for i in range(draw(st.integers(1, 5))))
    running = []
    for node in nodes:
        for device in range(draw(st.integers(0, 4))):
            share = draw(st.sampled_from(SHARES))
            placement = Placement("worker", 0, node.name, 2_000, 4 * GIB, (device,), share)
            key = f"{node.name}-{device}"
            priority = draw(st.sampled_from((0, 10)))
            running.append(RunningJob(key, "q", priority, len(running), (placement,)))
    return ClusterState(nodes, {"q": QueueInfo("q")}, tuple(running))


@settings(max_examples=100, deadline=None)
@given(
    state=clusters(),
    gpu=st.sampled_from((0.2, 0.5, 0.7, 1.0, 2.0, 4.0)),
    stops=st.lists(st.integers(0, 20), max_size=6),
)
def test_the_nodes_a_pod_could_use_stay_current_as_victims_are_stopped(
    state: ClusterState, gpu: float, stops: list[int]
) -> None:
    capacity = Capacity.of(state)
    pod = PodRequest("worker", 0, 1_000, GIB, gpu=gpu)
    pool = VictimPool(state.running, capacity, capacity.total(), 0)
    with pool.lent_room(100) as kept:
        before = (kept.cpu.copy(), kept.memory.copy(), kept.gpu_used.copy())
    start = capacity.mark()
    with pool.lent_room(100) as room:
        reach = Reach(capacity, room)
        reach.could(pod)
        for stop in stops:
            if not state.running:
                break
            victim = state.running[stop % len(state.running)]
            core = pool.core(victim)
            capacity.release(p for _, p in core)
            pool.forget(room, core)
            reach.touch(row for row, _ in core)
            placement = place_pod(capacity, pod)
            if placement is not None:
                capacity.hold([placement])
                reach.touch([capacity.index[placement.node]])
            assert np.array_equal(reach.could(pod), Reach(capacity, room).could(pod))
    capacity.undo(start)
    with pool.lent_room(100) as after:
        assert np.array_equal(after.cpu, before[0])
        assert np.array_equal(after.memory, before[1])
        assert np.array_equal(after.gpu_used, before[2])
