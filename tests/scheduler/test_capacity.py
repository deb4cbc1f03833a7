"""The what-if snapshot: what running jobs hold, exact undo, and preemption's narrow room."""

from __future__ import annotations

import numpy as np

from tidemill.scheduler import Placement
from tidemill.scheduler.capacity import Capacity

from .builders import GIB, node, running, state_of


def snapshot() -> Capacity:
    return Capacity.of(
        state_of(
            [node("n1").gpus(4).cpu(16).memory(64), node("n2").gpus(2)],
            [
                running("whole").on("n1", gpu_ids=[0, 1], cpu=4, memory=8),
                running("slice").on("n1", gpu_ids=[2], share=0.3),
                running("elsewhere").on("gone-node", gpu_ids=[0], cpu=100),
            ],
        )
    )


def arrays(capacity: Capacity) -> tuple[list[int], list[int], list[list[float]], list[int]]:
    return (
        capacity.free_cpu.tolist(),
        capacity.free_memory.tolist(),
        capacity.gpu_used.tolist(),
        capacity.whole_free.tolist(),
    )


def test_running_jobs_are_subtracted_and_vanished_nodes_ignored() -> None:
    capacity = snapshot()
    assert capacity.free_cpu.tolist() == [16_000 - 5_000, 64_000]
    assert capacity.free_memory.tolist() == [(64 - 9) * GIB, 512 * GIB]
    assert capacity.gpu_used[0].tolist() == [1.0, 1.0, 0.3, 0.0]
    assert capacity.gpu_used[1, :2].tolist() == [0.0, 0.0]
    assert np.isinf(capacity.gpu_used[1, 2:]).all()
    assert capacity.whole_free.tolist() == [1, 2]


def test_undo_puts_back_exactly_what_was_there() -> None:
    capacity = snapshot()
    before = arrays(capacity)
    mark = capacity.mark()
    slice_ = Placement("w", 0, "n1", 1000, GIB, (2,), 0.1)
    for _ in range(7):
        capacity.hold([slice_])
    capacity.release([Placement("w", 0, "n1", 4000, 8 * GIB, (0, 1), 1.0)])
    assert arrays(capacity) != before
    capacity.undo(mark)
    assert arrays(capacity) == before


def test_a_bulk_release_frees_every_node_at_once_and_undoes_with_the_rest() -> None:
    capacity = snapshot()
    before = arrays(capacity)
    mark = capacity.mark()
    capacity.hold([Placement("w", 0, "n2", 1000, GIB, (0,), 1.0)])
    gpu_used = np.zeros_like(capacity.gpu_used)
    gpu_used[0, :2] = 1.0
    capacity.release_all(
        np.array([4_000, 1_000], dtype=np.int64), np.array([8 * GIB, GIB], dtype=np.int64), gpu_used
    )
    assert capacity.free_cpu.tolist() == [15_000, 64_000]
    assert capacity.whole_free.tolist() == [3, 1]
    capacity.release([Placement("w", 0, "n2", 1000, GIB, (0,), 1.0)])
    assert capacity.whole_free.tolist() == [3, 2]
    capacity.undo(mark)
    assert arrays(capacity) == before


def test_a_preemption_leaves_its_victims_leftovers_unavailable() -> None:
    capacity = snapshot()
    state = state_of([node("n1")], [running("whole").on("n1", gpu_ids=[0, 1], cpu=4, memory=8)])
    victim = state.running[0]
    preemptor = Placement("w", 0, "n1", 1000, GIB, (0,), 1.0)
    capacity.preempt(victim.placements, [preemptor])
    assert capacity.gpu_used[0].tolist() == [1.0, 1.0, 0.3, 0.0]
    assert capacity.whole_free[0] == 1
    assert capacity.free_cpu[0] == 16_000 - 5_000
