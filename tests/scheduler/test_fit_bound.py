"""The fit bound only ever rules out gangs that cannot be placed.

Preemption skips a what-if placement when the bound says the gang cannot fit, so a
bound that wrongly said so would change plans. Random clusters are filled and emptied
step by step (with shares that do not add up exactly in floating point); at every step
a gang that placement fits must be possible by the bound kept current, and that bound
must agree with one built afresh.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.scheduler import ClusterState, NodeInfo, PodRequest, QueueInfo
from tidemill.scheduler.capacity import Capacity
from tidemill.scheduler.fit_bound import FitBound
from tidemill.scheduler.placement import place_gang, try_gang

GIB = 2**30
SHARES = (0.1, 0.2, 0.25, 0.3, 0.5)


def _capacity(*nodes: NodeInfo) -> Capacity:
    return Capacity.of(ClusterState(nodes=nodes, queues={"q": QueueInfo("q")}))


def _pods(
    count: int,
    gpu: float,
    cpu_millis: int = 1_000,
    gpu_model: str | None = None,
    extended: tuple[tuple[str, int], ...] = (),
) -> list[PodRequest]:
    return [
        PodRequest("worker", i, cpu_millis, GIB, gpu, gpu_model, extended=extended)
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("case", "nodes", "held", "gang", "possible"),
    [
        (
            "two 8-GPU pods, one node with 8 free GPUs: cannot fit",
            [NodeInfo("a", 64_000, 512 * GIB, 8), NodeInfo("b", 64_000, 512 * GIB, 8)],
            _pods(1, 4.0),
            _pods(2, 8.0),
            False,
        ),
        (
            "two 4-GPU pods, 4 free on each of two nodes: may fit",
            [NodeInfo("a", 64_000, 512 * GIB, 8), NodeInfo("b", 64_000, 512 * GIB, 8)],
            _pods(2, 4.0),
            _pods(2, 4.0),
            True,
        ),
        (
            "three half-GPU pods, two devices half used and nothing else: cannot fit",
            [NodeInfo("a", 64_000, 512 * GIB, 2)],
            _pods(2, 0.5),
            _pods(3, 0.5),
            False,
        ),
        (
            "seven 0.1 pods beside 0.1 and 0.2 (a sum float rounds up): may fit",
            [NodeInfo("a", 64_000, 512 * GIB, 1)],
            [*_pods(1, 0.1), *_pods(1, 0.2)],
            _pods(7, 0.1),
            True,
        ),
        (
            "GPUs free but cpu for one pod only: cannot fit two",
            [NodeInfo("a", 8_000, 512 * GIB, 8)],
            _pods(1, 0.0, cpu_millis=3_000),
            _pods(2, 1.0, cpu_millis=4_000),
            False,
        ),
        (
            "a model no node has: cannot fit",
            [NodeInfo("a", 64_000, 512 * GIB, 8, gpu_model="h100")],
            [],
            _pods(1, 1.0, gpu_model="a100"),
            False,
        ),
        (
            "an extended resource the node lacks: cannot fit",
            [NodeInfo("a", 64_000, 512 * GIB, 8, extended={"rdma/hca": 1})],
            [],
            _pods(1, 1.0, extended=(("rdma/hca", 2),)),
            False,
        ),
    ],
)
def test_the_bound_reads_each_resource(
    case: str,
    nodes: list[NodeInfo],
    held: list[PodRequest],
    gang: list[PodRequest],
    possible: bool,
) -> None:
    capacity = _capacity(*nodes)
    assert isinstance(place_gang(capacity, held), tuple)
    assert FitBound(capacity, gang).possible() is possible, case
    assert (try_gang(capacity, gang) is not None) is possible, case


@st.composite
def gangs(draw: st.DrawFn) -> list[PodRequest]:
    """One to four pods, of one or two shapes."""
    shapes = draw(st.lists(_shapes(), min_size=1, max_size=2))
    count = draw(st.integers(1, 4))
    return [
        PodRequest("worker", i, cpu, memory, gpu=gpu, gpu_model=model)
        for i, (cpu, memory, gpu, model) in enumerate(shapes[i % len(shapes)] for i in range(count))
    ]


def _shapes() -> st.SearchStrategy[tuple[int, int, float, str | None]]:
    return st.tuples(
        st.sampled_from((0, 500, 4_000, 12_000)),
        st.sampled_from((0, GIB, 16 * GIB)),
        st.sampled_from((0.0, 1.0, 2.0, 4.0, *SHARES)),
        st.sampled_from((None, None, "h100")),
    )


@settings(max_examples=150, deadline=None)
@given(
    gpus=st.lists(st.sampled_from((0, 2, 4, 8)), min_size=1, max_size=5),
    gang=gangs(),
    steps=st.lists(st.tuples(gangs(), st.booleans()), min_size=1, max_size=12),
)
def test_a_gang_that_fits_is_never_ruled_out(
    gpus: list[int], gang: list[PodRequest], steps: list[tuple[list[PodRequest], bool]]
) -> None:
    nodes = [
        NodeInfo(f"n{i}", 16_000, 64 * GIB, count, gpu_model="h100" if i % 2 else None)
        for i, count in enumerate(gpus)
    ]
    capacity = _capacity(*nodes)
    bound = FitBound(capacity, gang)
    for pods, keep in steps:
        mark = capacity.mark()
        placed = try_gang(capacity, pods)
        touched = capacity.node_indices(placed or ())
        bound.refresh(touched)
        if not keep:
            capacity.undo(mark)
            bound.refresh(touched)
        assert bound.possible() == FitBound(capacity, gang).possible()
        trial = capacity.mark()
        fits = try_gang(capacity, gang) is not None
        capacity.undo(trial)
        if fits:
            assert bound.possible()
