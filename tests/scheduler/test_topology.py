"""Topology: a gang packed into the smallest domain that holds it; GPUs and CPUs of one
NUMA node inside a machine."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tidemill.scheduler import NumaNode, TopologyRequest
from tidemill.scheduler.numa import cpu_set

from .builders import bound, decide, job, node, placements, running

LEVELS = ("nvlink-domain", "rack", "zone")


def _rack(name: str, rack: str, zone: str = "z1", nvlink: str | None = None) -> node:
    built = node(name).gpus(8).label("rack", rack).label("zone", zone)
    return built if nvlink is None else built.label("nvlink-domain", nvlink)


@dataclass(frozen=True)
class Case:
    nodes: list[node]
    jobs: list[job]
    nodes_used: dict[str, set[str]]
    """Per bound job, the set of nodes its pods landed on."""
    held: list[running] = field(default_factory=list)
    note: dict[str, str] = field(default_factory=dict)
    """Per bound job, a text its bind's note must contain ("" for no note)."""
    pending: dict[str, str] = field(default_factory=dict)
    """Per pending job, its reason code."""


CASES = [
    pytest.param(
        Case(
            nodes=[
                _rack("a1", "r1"),
                _rack("b1", "r2"),
                _rack("a2", "r1"),
                _rack("b2", "r2"),
            ],
            jobs=[job("j").pods(4).gpus(4).pack("rack", required=True)],
            nodes_used={"j": {"a1", "a2"}},
        ),
        id="a required rack packing keeps every pod in one rack even where best fit "
        "alone would interleave racks",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1"), _rack("a2", "r1"), _rack("b1", "r2"), _rack("b2", "r2")],
            held=[running("x").on("b1", gpu_ids=range(4))],
            jobs=[job("j").pods(3).gpus(4).pack("rack", required=True)],
            nodes_used={"j": {"b1", "b2"}},
        ),
        id="among racks that hold the gang the one with the least room to spare is chosen",
    ),
    pytest.param(
        Case(
            nodes=[
                _rack("a1", "r1", nvlink="nv1"),
                _rack("a2", "r1", nvlink="nv2"),
                _rack("a3", "r1", nvlink="nv2"),
            ],
            held=[running("x").on("a1", gpu_ids=range(4)).on("a2", gpu_ids=range(4))],
            jobs=[job("j").pods(2).gpus(4).pack("rack", required=True)],
            nodes_used={"j": {"a2", "a3"}},
        ),
        id="a gang that fits one nvlink domain is packed there though it asked only for a "
        "rack (best fit alone would take a1 and a2, across two nvlink domains)",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1"), _rack("b1", "r2")],
            held=[running("x").on("a1", gpu_ids=range(4)), running("y").on("b1", gpu_ids=range(4))],
            jobs=[job("j").pods(4).gpus(2).pack("rack", required=True)],
            nodes_used={},
            pending={"j": "TopologyDoesNotFit"},
        ),
        id="a required packing waits while the free gpus are split over two racks",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1", "z1"), _rack("b1", "r2", "z2")],
            held=[running("x").on("a1", gpu_ids=range(4)), running("y").on("b1", gpu_ids=range(4))],
            jobs=[job("j").pods(4).gpus(2).pack("rack")],
            nodes_used={"j": {"a1", "b1"}},
            note={
                "j": "worker: no rack holds 8 gpu (4 worker x 2 gpu); the largest free rack "
                "block is 4 gpu on r1; spread over 2 nodes"
            },
        ),
        id="a preferred packing that no rack holds is spread, and its bind says why",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1", "z1"), _rack("a2", "r2", "z1"), _rack("b1", "r3", "z2")],
            held=[
                running("x").on("a1", gpu_ids=range(4)),
                running("y").on("a2", gpu_ids=range(4)),
                running("z").on("b1", gpu_ids=range(4)),
            ],
            jobs=[job("j").pods(4).gpus(2).pack("rack")],
            nodes_used={"j": {"a1", "a2"}},
            note={"j": "packed within zone z1"},
        ),
        id="a preferred packing falls back to the next level up before spreading",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1"), _rack("b1", "r2")],
            jobs=[job("j").pods(2).gpus(4).pack("rack", required=True).plus("ps", 2, cpu=60)],
            nodes_used={"j": {"a1", "b1"}},
        ),
        id="a role without a topology request is placed freely beside a packed role",
    ),
    pytest.param(
        Case(
            nodes=[_rack("a1", "r1"), _rack("a2", "r1"), _rack("b1", "r2")],
            jobs=[job("j").pods(3).gpus(8).pack("rack", required=True).plus("ps", 1, cpu=4)],
            nodes_used={},
            pending={"j": "TopologyDomainTooSmall"},
        ),
        id="a gang larger than every rack is refused at once, not left waiting for room",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_packing(case: Case) -> None:
    decisions = decide(case.nodes, case.jobs, case.held, levels=LEVELS)
    assert {k: r.code for k, r in decisions.pending.items()} == case.pending
    assert set(bound(decisions)) == set(case.nodes_used)
    for key, used in case.nodes_used.items():
        assert {p.node for p in placements(decisions, key)} == used
    for key, text in case.note.items():
        (bind,) = [b for b in decisions.binds if b.job == key]
        assert text in bind.note


def test_roles_packed_together_land_in_one_rack_when_it_holds_them() -> None:
    nodes = [_rack("a1", "r1"), _rack("a2", "r1"), _rack("b1", "r2")]
    ps = TopologyRequest("rack", required=True)
    gang = job("j").pods(2).gpus(8).pack("rack", required=True).plus("ps", 2, cpu=2, pack=ps)
    decisions = decide(nodes, [gang], levels=LEVELS)
    assert {p.node for p in placements(decisions, "j")} == {"a1", "a2"}


def test_a_gang_without_a_topology_request_is_placed_as_before() -> None:
    nodes = [_rack("a1", "r1"), _rack("b1", "r2")]
    with_levels = decide(nodes, [job("j").pods(2).gpus(6)], levels=LEVELS)
    without = decide(nodes, [job("j").pods(2).gpus(6)])
    assert placements(with_levels, "j") == placements(without, "j")
    assert with_levels.binds[0].note == ""


def test_preemption_that_would_break_a_required_packing_is_not_taken() -> None:
    nodes = [_rack("a1", "r1"), _rack("b1", "r2")]
    held = [running("low").on("a1", gpu_ids=range(4)).on("b1", gpu_ids=range(4))]
    gang = job("high").pods(2).gpus(4).priority(10).pack("rack", required=True)
    decisions = decide(nodes, [gang], held, levels=LEVELS)
    # The gang fits the free room spread over both racks: that plan breaks the packing.
    assert decisions.preemptions == []
    assert decisions.pending["high"].code == "TopologyDoesNotFit"


def test_preemption_that_keeps_the_packing_is_taken() -> None:
    nodes = [_rack("a1", "r1"), _rack("a2", "r1"), _rack("b1", "r2")]
    held = [
        running("low").on("a1", gpu_ids=range(8)).on("a2", gpu_ids=range(8)),
        running("other").on("b1", gpu_ids=range(8)).not_preemptible(),
    ]
    gang = job("high").pods(4).gpus(4).priority(10).pack("rack", required=True)
    decisions = decide(nodes, [gang], held, levels=LEVELS)
    assert [p.victim for p in decisions.preemptions] == ["low"]
    assert {p.node for p in placements(decisions, "high")} == {"a1", "a2"}


def test_a_repeated_rack_name_in_two_zones_is_two_racks_and_reads_with_its_zone() -> None:
    nodes = [_rack("a1", "r1", "z1"), _rack("b1", "r1", "z2")]
    held = [running("x").on("a1", gpu_ids=range(4)), running("y").on("b1", gpu_ids=range(6))]
    gang = job("j").pods(4).gpus(2).pack("rack", required=True)
    reason = decide(nodes, [gang], held, levels=LEVELS).pending["j"]
    assert reason.message.endswith("the largest free rack block is 4 gpu on z1/r1")


NUMA_CASES = [
    pytest.param(
        node("n1").gpus(8).numa((0, 2, 4, 6), (1, 3, 5, 7)),
        [],
        4,
        (0, 2, 4, 6),
        id="four gpus come from one numa node even when device numbers interleave",
    ),
    pytest.param(
        node("n1").gpus(8).numa((0, 1, 2, 3), (4, 5, 6, 7)),
        [running("x").on("n1", gpu_ids=[0, 1, 2])],
        2,
        (4, 5),
        id="a numa node with too few free gpus is skipped for one that holds them all",
    ),
    pytest.param(
        node("n1").gpus(8).numa((0, 1, 2, 3), (4, 5, 6, 7)),
        [running("x").on("n1", gpu_ids=[0, 1]), running("y").on("n1", gpu_ids=[4])],
        2,
        (2, 3),
        id="the numa node with the fewest free gpus that holds the pod is used first",
    ),
    pytest.param(
        node("n1").gpus(8).numa((0, 1, 2, 3), (4, 5, 6, 7)),
        [running("x").on("n1", gpu_ids=[0, 1]), running("y").on("n1", gpu_ids=[4, 5])],
        4,
        (2, 3, 6, 7),
        id="a pod no numa node holds takes the free gpus of as few numa nodes as it can",
    ),
]


@pytest.mark.parametrize(("machine", "held", "gpus", "devices"), NUMA_CASES)
def test_numa_gpu_choice(
    machine: node, held: list[running], gpus: int, devices: tuple[int, ...]
) -> None:
    decisions = decide([machine], [job("j").gpus(gpus)], held)
    assert placements(decisions, "j")[0].gpu_ids == devices


def test_the_cpu_set_is_the_numa_node_of_the_gpus_widened_only_when_too_small() -> None:
    layout = (
        NumaNode(cpus=tuple(range(0, 16)), gpus=(0, 1, 2, 3)),
        NumaNode(cpus=tuple(range(16, 32)), gpus=(4, 5, 6, 7)),
    )
    assert cpu_set(layout, [5, 6], cpu_cores=8) == tuple(range(16, 32))
    assert cpu_set(layout, [5, 6], cpu_cores=20) == tuple(range(32))
    assert cpu_set(layout, [3, 4], cpu_cores=1) == tuple(range(32))
    assert cpu_set(layout, [], cpu_cores=4) == ()
    assert cpu_set((), [0], cpu_cores=4) == ()


def test_elastic_extras_of_a_required_packing_stay_in_their_gang_s_rack() -> None:
    nodes = [_rack("a1", "r1"), _rack("b1", "r2")]
    held = [running("x").on("a1", gpu_ids=range(4))]
    gang = job("j").pods(6).min_pods(2).gpus(2).pack("rack", required=True)
    decisions = decide(nodes, [gang], held, levels=LEVELS)
    where = {f"{p.role}-{p.index}": p.node for p in placements(decisions, "j")}
    # The gang goes to r1 (4 gpu free: it holds the gang and spares least); its extras
    # may go only there, and r1 is full, so none of the four is added.
    assert set(where.values()) == {"a1"}
    assert sorted(where) == ["worker-0", "worker-1"]


def test_elastic_extras_of_a_preferred_packing_go_elsewhere_once_their_rack_is_full() -> None:
    nodes = [_rack("a1", "r1"), _rack("b1", "r2")]
    held = [running("x").on("a1", gpu_ids=range(4))]
    gang = job("j").pods(6).min_pods(2).gpus(2).pack("rack")
    decisions = decide(nodes, [gang], held, levels=LEVELS)
    nodes_used = [p.node for p in placements(decisions, "j")]
    assert nodes_used == ["a1", "a1", "b1", "b1", "b1", "b1"]


def test_growth_of_a_running_job_with_a_required_packing_stays_in_its_rack() -> None:
    nodes = [_rack("a1", "r1"), _rack("a2", "r1"), _rack("b1", "r2")]
    held = [
        running("j").on("a1", gpu_ids=range(8)),
        running("x").on("a2", gpu_ids=range(6)),
    ]
    grow = job("j").pods(3).first_index(1).gpus(2).pack("rack", required=True).grows()
    decisions = decide(nodes, [grow], held, levels=LEVELS)
    assert [(p.index, p.node) for g in decisions.grows for p in g.placements] == [(1, "a2")]
    reason = decisions.unmet_grows["j"]
    assert (reason.code, reason.message) == (
        "TopologyDoesNotFit",
        "cannot add worker-2: it needs 1 cpu, 2 gpu, 1Gi memory within rack r1, beside its "
        "role's pods; largest free block there is 0 gpu on a1",
    )


def test_a_packing_of_roles_that_differ_only_in_gpu_model_is_judged_without_error() -> None:
    nodes = [_rack("a1", "r1").model("H100"), _rack("b1", "r2").model("H100")]
    pack = TopologyRequest("rack", required=True)
    gang = job("j").pods(2).gpus(2).model("H100").pack("rack", required=True)
    decisions = decide(nodes, [gang.plus("chief", 1, gpu=2, pack=pack)], levels=LEVELS)
    assert {p.node for p in placements(decisions, "j")} == {"a1"}


def test_a_cluster_without_levels_ignores_packings_and_says_so() -> None:
    nodes = [node("n1").gpus(8)]
    decisions = decide(nodes, [job("j").pods(2).gpus(2).pack("rack", required=True)])
    assert [p.node for p in placements(decisions, "j")] == ["n1", "n1"]
    assert decisions.binds[0].note == "packWithin ignored: this cluster declares no topology levels"
