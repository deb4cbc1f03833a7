"""A memo carried across cycles decides exactly what a fresh build decides.

Random histories: each step a few jobs arrive, the decisions of the last cycle are
applied (binds, grows, shrinks, preemptions), running jobs exit, and nodes are cordoned,
resized, added or removed. Every cycle is decided twice, from scratch and from the
memo, and the two must agree; now and then the memo of an older snapshot is passed
instead, since a memo is a value any snapshot may start from.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemill.scheduler import (
    ClusterState,
    Decisions,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    RunningJob,
    SchedulerConfig,
    capacity,
    schedule,
    schedule_incremental,
)
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.memo import Memo, build, carry
from tidemill.scheduler.types import Scoring

GIB = 2**30
QUEUES = {
    "ads": QueueInfo("ads", weight=2.0),
    "cv": QueueInfo("cv", max_gpu=6.0),
}
SHARES = (0.1, 0.2, 0.25, 0.3, 0.5)
"""Fractions that do not add up exactly in floating point among them on purpose."""


def a_node(name: str, gpus: int, cores: int = 16, schedulable: bool = True) -> NodeInfo:
    return NodeInfo(
        name,
        cpu_millis=cores * 1000,
        memory_bytes=64 * GIB,
        gpus=gpus,
        gpu_model="h100" if gpus % 2 == 0 else "a100",
        schedulable=schedulable,
        extended={"rdma/hca": 2} if gpus >= 4 else {},
    )


@st.composite
def pod_requests(draw: st.DrawFn, count: int, optional_from: int) -> tuple[PodRequest, ...]:
    gpu = draw(st.sampled_from((0.0, 1.0, 2.0, 4.0, *SHARES)))
    cpu_millis = draw(st.sampled_from((500, 2_000, 6_000)))
    model = draw(st.sampled_from((None, None, "h100", "a100")))
    extended = draw(st.sampled_from(((), (), (("rdma/hca", 1),))))
    spread = draw(st.booleans()) and count > 1
    return tuple(
        PodRequest(
            "worker",
            index,
            cpu_millis,
            4 * GIB,
            gpu=gpu,
            gpu_model=model,
            optional=index >= optional_from,
            extended=extended,
            spread=spread and index == 0,
        )
        for index in range(count)
    )


class History:
    """The cluster as the controller would see it, moved on by decisions and events."""

    def __init__(self) -> None:
        self.nodes = [a_node(f"n{i}", gpus) for i, gpus in enumerate((8, 8, 4, 2, 0, 1))]
        self.running: dict[str, RunningJob] = {}
        self.sequence = 0
        self.priority: dict[str, int] = {}

    def state(self) -> ClusterState:
        return ClusterState(tuple(self.nodes), QUEUES, tuple(self.running.values()))

    def arrivals(self, draw: st.DrawFn) -> list[JobRequest]:
        jobs = []
        for _ in range(draw(st.integers(0, 6))):
            self.sequence += 1
            count = draw(st.integers(1, 5))
            required = draw(st.integers(1, count))
            priority = draw(st.sampled_from((0, 5, 10)))
            key = f"j{self.sequence}"
            pods = draw(pod_requests(count, required))
            queue = draw(st.sampled_from(("ads", "cv", "ads")))
            jobs.append(JobRequest(key, queue, priority, self.sequence, pods))
        for job in list(self.running.values())[: draw(st.integers(0, 2))]:
            grow = tuple(
                PodRequest("worker", 100 + k, 1_000, GIB, gpu=draw(st.sampled_from((0.0, 1.0))))
                for k in range(draw(st.integers(1, 2)))
            )
            jobs.append(JobRequest(job.key, job.queue, job.priority, job.sequence, grow, True))
        return jobs

    def apply(self, decisions: Decisions, pending: list[JobRequest], draw: st.DrawFn) -> None:
        asked = {job.key: job for job in pending if not job.grow}
        for shrink in decisions.shrinks:
            job = self.running[shrink.job]
            gone = set(shrink.pods)
            self.running[job.key] = replace(
                job,
                placements=tuple(p for p in job.placements if (p.role, p.index) not in gone),
                shrinkable=tuple(pair for pair in job.shrinkable if pair not in gone),
            )
        for preemption in decisions.preemptions:
            del self.running[preemption.victim]
        for bind in decisions.binds:
            job = asked[bind.job]
            surplus = tuple((p.role, p.index) for p in reversed(bind.placements[1:]))
            self.running[bind.job] = RunningJob(
                bind.job,
                job.queue,
                job.priority,
                job.sequence,
                bind.placements,
                preemptible=draw(st.booleans()) or job.priority == 0,
                shrinkable=surplus if draw(st.integers(0, 3)) else (),
            )
        for grow in decisions.grows:
            job = self.running[grow.job]
            self.running[job.key] = replace(job, placements=job.placements + grow.placements)

    def events(self, draw: st.DrawFn) -> None:
        for key in list(self.running):
            if draw(st.integers(0, 14)) == 0:
                del self.running[key]
        if self.running and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(self.running)))
            job = self.running[key]
            self.running[key] = replace(job, priority=draw(st.sampled_from((0, 5, 10))))
        change = draw(st.sampled_from(("none", "none", "cordon", "cores", "gpus", "add", "drop")))
        at = draw(st.integers(0, len(self.nodes) - 1))
        node = self.nodes[at]
        if change == "cordon":
            self.nodes[at] = replace(node, schedulable=not node.schedulable)
        elif change == "cores":
            self.nodes[at] = replace(node, cpu_millis=draw(st.sampled_from((8_000, 16_000))))
        elif change == "gpus":
            self.nodes[at] = a_node(node.name, draw(st.sampled_from((0, 2, 4, 8))))
        elif change == "add":
            self.nodes.append(a_node(f"n{len(self.nodes)}-{self.sequence}", 4))
        elif change == "drop" and len(self.nodes) > 2:
            del self.nodes[at]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.data(),
    st.booleans(),
    st.booleans(),
    st.sampled_from(("fragmentation", "best-fit")),
    st.sampled_from((None, 2, 128)),
    st.booleans(),
)
def test_a_memo_carried_through_a_random_history_decides_as_a_fresh_build(
    data: st.DataObject,
    preemption: bool,
    strict_fifo: bool,
    scoring: Scoring,
    score_nodes: int | None,
    grouped: bool,
) -> None:
    """Also with the scorings' candidate cuts, and with nodes grouped by free GPUs as on
    a large cluster (here from one node), where placement reads candidates by group."""
    draw = data.draw
    config = SchedulerConfig(
        preemption=preemption, strict_fifo=strict_fifo, scoring=scoring, score_nodes=score_nodes
    )
    history = History()
    memos: list[Memo] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(capacity, "GROUPED_FROM_NODES", 1 if grouped else capacity.GROUPED_FROM_NODES)
        for _ in range(draw(st.integers(3, 12))):
            pending = history.arrivals(draw)
            state = history.state()
            fresh = schedule(state, pending, config)
            older = memos[-draw(st.integers(1, len(memos)))] if memos else None
            incremental, memo = schedule_incremental(state, pending, config, older)
            assert incremental == fresh
            assert_same_capacity(memo.capacity, Capacity.of(state))
            assert memo.held_shapes == build(state).held_shapes
            memos.append(memo)
            history.apply(fresh, pending, draw)
            history.events(draw)


def test_a_memo_is_a_value_carrying_it_leaves_it_as_it_was() -> None:
    history = History()
    history.running["r"] = RunningJob(
        "r",
        "ads",
        0,
        1,
        (
            Placement("worker", 0, "n0", 2_000, GIB, (0,), 0.3),
            Placement("worker", 1, "n1", 0, 0, (2, 3), 1.0),
        ),
    )
    busy = history.state()
    before = build(busy)
    free_gpus = before.capacity.whole_free.copy()
    del history.running["r"]
    idle = history.state()
    after = carry(before, idle)
    assert after.capacity.whole_free.sum() == free_gpus.sum() + 3
    assert np.array_equal(before.capacity.whole_free, free_gpus)
    big = JobRequest("j", "ads", 0, 2, tuple(PodRequest("w", i, 0, 0, gpu=8) for i in range(2)))
    assert schedule_incremental(idle, [big], memo=before)[0].binds
    assert not schedule_incremental(busy, [big], memo=before)[0].binds


def test_a_share_taken_then_given_back_leaves_the_device_exactly_as_a_fresh_build() -> None:
    nodes = (a_node("n0", 1),)
    shares = [
        RunningJob(f"s{i}", "ads", 0, i, (Placement("w", 0, "n0", 0, 0, (0,), share),))
        for i, share in enumerate((0.1, 0.2, 0.3))
    ]
    memo = build(ClusterState(nodes, QUEUES, tuple(shares)))
    state = ClusterState(nodes, QUEUES, (shares[1], shares[2]))
    carried = carry(memo, state)
    assert carried.capacity.gpu_used[0, 0] == Capacity.of(state).gpu_used[0, 0] == 0.5


def assert_same_capacity(carried: Capacity, fresh: Capacity) -> None:
    assert carried.names == fresh.names
    for field in ("free_cpu", "free_memory", "gpu_used", "whole_free", "least_used"):
        assert np.array_equal(getattr(carried, field), getattr(fresh, field)), field
    assert np.array_equal(carried.free_extended, fresh.free_extended)
    assert np.array_equal(carried.schedulable, fresh.schedulable)
