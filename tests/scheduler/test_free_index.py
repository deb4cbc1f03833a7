"""Nodes grouped by free GPUs stay in step with the free GPUs themselves.

Best fit for whole-GPU pods reads nodes group by group; a group out of date would place
a pod on a node with too few GPUs or miss the fullest one that fits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemill.scheduler import NodeInfo, Placement, SchedulerConfig, schedule
from tidemill.scheduler import capacity as capacity_module
from tidemill.scheduler.capacity import Capacity

from .test_incremental import History

GIB = 2**30
NODES = tuple(NodeInfo(f"n{i}", 64_000, 512 * GIB, gpus) for i, gpus in enumerate((8, 4, 8, 2, 0)))


def groups(capacity: Capacity, fewest: int) -> list[list[int]]:
    return [rows.tolist() for rows in capacity.by_free_gpus(fewest)]


def expected(capacity: Capacity, fewest: int) -> list[list[int]]:
    free = capacity.whole_free
    values = sorted({int(v) for v in free if v >= fewest})
    return [np.flatnonzero(free == v).tolist() for v in values]


placements = st.builds(
    lambda node, first, count, share: Placement(
        "w", 0, f"n{node}", 1_000, GIB, tuple(range(first, first + count)), share
    ),
    st.integers(0, len(NODES) - 1),
    st.integers(0, 7),
    st.integers(1, 4),
    st.sampled_from((1.0, 0.5, 0.25)),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("hold", "undo", "clone", "all")), placements)))
def test_groups_by_free_gpus_follow_holds_undos_and_bulk_releases(
    steps: list[tuple[str, Placement]],
) -> None:
    capacity = Capacity(NODES)
    assert groups(capacity, 0) == expected(capacity, 0)
    marks: list[int] = []
    for action, placement in steps:
        if action == "hold":
            marks.append(capacity.mark())
            capacity.hold([placement])
        elif action == "undo" and marks:
            capacity.undo(marks.pop())
        elif action == "clone":
            capacity = capacity.clone()
            marks.clear()
        elif action == "all":
            marks.append(capacity.mark())
            freed = np.zeros_like(capacity.gpu_used)
            freed[capacity.index[placement.node], 0] = 0.5
            capacity.release_all(
                np.zeros_like(capacity.free_cpu), np.zeros_like(capacity.free_memory), freed
            )
        for fewest in (0, 1, 3):
            assert groups(capacity, fewest) == expected(capacity, fewest)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_placement_by_groups_places_every_pod_where_masking_every_node_does(
    data: st.DataObject, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    # Best fit, and fragmentation scoring cut to the 2 nodes best fit ranks first (so the
    # cut falls inside the groups read).
    config = data.draw(
        st.sampled_from([SchedulerConfig(scoring="best-fit"), SchedulerConfig(score_nodes=2)])
    )
    history = History()
    for _ in range(data.draw(st.integers(2, 6))):
        pending = history.arrivals(data.draw)
        state = history.state()
        monkeypatch_module.setattr(capacity_module, "GROUPED_FROM_NODES", 0)
        grouped = schedule(state, pending, config)
        monkeypatch_module.setattr(capacity_module, "GROUPED_FROM_NODES", 10**9)
        masked = schedule(state, pending, config)
        assert grouped == masked
        history.apply(masked, pending, data.draw)
        history.events(data.draw)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch
