"""Extended resources (``rdma/hca``, ``example.com/fpga``) are counted like cpu and memory."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .builders import bound, decide, job, node, placements, running

FPGA = "example.com/fpga"
HCA = "rdma/hca"


@dataclass(frozen=True)
class Case:
    nodes: list[node]
    jobs: list[job]
    bound: list[str]
    where: dict[str, list[str]] = field(default_factory=dict)
    """Per bound job, the node of each pod in pod order."""
    held: list[running] = field(default_factory=list)


CASES = [
    pytest.param(
        Case(
            nodes=[node("n1").offers(FPGA, 1), node("n2").offers(FPGA, 4), node("n3")],
            jobs=[job("a").pods(2).extended(FPGA, 2)],
            bound=["a"],
            where={"a": ["n2", "n2"]},
        ),
        id="a gang lands on the one node offering enough of the extended resource",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers(FPGA, 2), node("n2").offers(FPGA, 2)],
            jobs=[job("a").pods(2).extended(FPGA, 2)],
            bound=["a"],
            where={"a": ["n1", "n2"]},
        ),
        id="a gang spreads over nodes when no single node has enough for every pod",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers(FPGA, 4)],
            jobs=[job("a").pods(2).extended(FPGA, 2), job("b").extended(FPGA, 1)],
            bound=["a"],
            where={"a": ["n1", "n1"]},
        ),
        id="placements hold extended resources so a later job in the cycle sees none left",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers(HCA, 4)],
            held=[running("r").on("n1", extended={HCA: 3})],
            jobs=[job("a").extended(HCA, 2), job("b").extended(HCA, 1)],
            bound=["b"],
            where={"b": ["n1"]},
        ),
        id="what running jobs hold is not free; a smaller ask still fits",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers(HCA, 2).offers(FPGA, 1), node("n2").offers(HCA, 2)],
            jobs=[job("a").extended(HCA, 2).extended(FPGA, 1)],
            bound=["a"],
            where={"a": ["n1"]},
        ),
        id="a pod asking two extended resources needs both on the same node",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers(FPGA, 4).cpu(8)],
            jobs=[job("a").pods(3).cpu(2)],
            bound=["a"],
            where={"a": ["n1", "n1", "n1"]},
        ),
        id="a job asking no extended resource may use a node that offers some",
    ),
    pytest.param(
        Case(
            nodes=[node("n1")],
            jobs=[job("a").extended(FPGA, 0)],
            bound=["a"],
            where={"a": ["n1"]},
        ),
        id="asking zero of a resource no node offers still fits",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_extended_resource_placement(case: Case) -> None:
    decisions = decide(nodes=case.nodes, jobs=case.jobs, running_jobs=case.held)
    assert bound(decisions) == case.bound
    for key, nodes in case.where.items():
        assert [p.node for p in placements(decisions, key)] == nodes


def test_a_placement_carries_the_extended_resources_it_holds() -> None:
    decisions = decide(nodes=[node("n1").offers(HCA, 4)], jobs=[job("a").extended(HCA, 2)])
    assert placements(decisions, "a")[0].extended == ((HCA, 2),)


def test_look_alike_jobs_differing_only_in_extended_resources_are_not_confused() -> None:
    decisions = decide(
        nodes=[node("n1").offers(FPGA, 1)],
        jobs=[job("a").extended(FPGA, 2), job("b").extended(FPGA, 1)],
    )
    assert bound(decisions) == ["b"]
    assert decisions.pending["a"].code == "NoNodeLargeEnough"
