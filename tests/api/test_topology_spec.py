"""Topology in the files: a role's packWithin, the cluster's levels, each node's NUMA
layout. Input that does not add up is refused with the field and what the file has."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.loader import job_from_document, load_cluster_file
from tidemill.api.topology import format_cpu_list, parse_cpu_list

GPU_NODE = "{name: a1, cpu: 8, memory: 64Gi, gpus: 4, labels: {rack: r1}"
GOOD_NUMA = "numa: [{cpus: '0-3', gpus: [0, 1]}, {cpus: '4-7', gpus: [2, 3]}]"

REFUSED = {
    "a topology level no node carries": (
        f"nodes: [{GPU_NODE}}}]\ntopology: {{levels: [nvlink-domain, rack]}}",
        "topology: levels: no node carries the label nvlink-domain (node labels here: rack); "
        "label the nodes or drop the level",
    ),
    "a level listed twice": (
        f"nodes: [{GPU_NODE}}}]\ntopology: {{levels: [rack, rack]}}",
        "topology.levels: levels repeat rack; list each level once",
    ),
    "a level that is not a label key": (
        f"nodes: [{GPU_NODE}}}]\ntopology: {{levels: ['my rack']}}",
        "topology.levels: label key 'my rack' is invalid",
    ),
    "a numa layout leaving gpus on no numa node": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-7', gpus: [0, 1]}}]}}]",
        "nodes.0.numa: GPUs 2, 3 are on no NUMA node; the node declares gpus: 4: list every "
        "device on the NUMA node it is attached to",
    ),
    "a numa layout naming a gpu the node does not have": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-7', gpus: [0, 1, 2, 3, 4]}}]}}]",
        "nodes.0.numa: [0].gpus: device 4 does not exist; the node declares gpus: 4 (devices 0-3)",
    ),
    "a gpu on two numa nodes": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-3', gpus: [0, 1, 2]}}, "
        "{cpus: '4-7', gpus: [2, 3]}]}]",
        "nodes.0.numa: [1].gpus: device 2 is also on NUMA node 0; list each device once",
    ),
    "a cpu on two numa nodes": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-4', gpus: [0, 1]}}, "
        "{cpus: '4-7', gpus: [2, 3]}]}]",
        "nodes.0.numa: [1].cpus: CPU 4 is also on NUMA node 0; list each CPU once",
    ),
    "numa nodes with fewer cpus than the node declares": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-1', gpus: [0, 1]}}, "
        "{cpus: '2-3', gpus: [2, 3]}]}]",
        "nodes.0.numa: the NUMA nodes list 4 CPUs in all; the node declares cpu: 8: list "
        "every CPU it offers",
    ),
    "a cpu list that is not one": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: 'all', gpus: [0, 1, 2, 3]}}]}}]",
        "nodes.0.numa.0.cpus: 'all' is not a CPU list; write numbers and ranges such as "
        "'0-15,32-47'",
    ),
    "a cpu range past the largest cpu number": (
        f"nodes: [{GPU_NODE}, numa: [{{cpus: '0-99999999', gpus: [0, 1, 2, 3]}}]}}]",
        "nodes.0.numa.0.cpus: '0-99999999': the range 0-99999999 must go upwards and stay at "
        "or below CPU 8191",
    ),
}


@pytest.mark.parametrize("text,expected", REFUSED.values(), ids=list(REFUSED))
def test_a_cluster_file_that_does_not_add_up_is_refused_naming_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_cluster_file(path)
    assert any(str(error).startswith(expected) for error in caught.value.errors), [
        str(e) for e in caught.value.errors
    ]


def test_a_cluster_file_with_levels_and_numa_loads(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"topology: {{levels: [rack]}}\nnodes: [{GPU_NODE}, {GOOD_NUMA}, count: 2}}]")
    cluster = load_cluster_file(path)
    assert cluster.topology.levels == ["rack"]
    (first, _) = cluster.all_nodes()
    assert [n.cpu_ids for n in first.numa] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [n.gpus for n in first.numa] == [[0, 1], [2, 3]]


def test_levels_are_not_checked_against_nodes_a_cluster_file_leaves_to_discovery(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("topology: {levels: [topology.kubernetes.io/zone]}")
    assert load_cluster_file(path).topology.levels == ["topology.kubernetes.io/zone"]


def _job(topology: object) -> dict[str, object]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "packed"},
        "spec": {"roles": {"worker": {"command": ["x"], "topology": topology}}},
    }


def test_a_role_topology_reads_and_writes_back_in_camel_case() -> None:
    job = job_from_document(_job({"packWithin": "rack", "required": True}))
    topology = job.spec.roles["worker"].topology
    assert topology is not None and (topology.pack_within, topology.required) == ("rack", True)
    written = job.to_document()["spec"]["roles"]["worker"]["topology"]
    assert written == {"packWithin": "rack", "required": True}


@pytest.mark.parametrize(
    "topology,path,message",
    [
        pytest.param(
            {"packWithin": "rack!"},
            "spec.roles.worker.topology.packWithin",
            "label key 'rack!' is invalid",
            id="a packWithin that is not a label key",
        ),
        pytest.param(
            {"required": True},
            "spec.roles.worker.topology.packWithin",
            "required field is missing",
            id="a topology without packWithin",
        ),
        pytest.param(
            {"packWithin": "rack", "requried": True},
            "spec.roles.worker.topology.requried",
            "unknown field; did you mean 'required'?",
            id="a misspelt field inside topology",
        ),
    ],
)
def test_a_bad_role_topology_is_refused_naming_the_field(
    topology: object, path: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        job_from_document(_job(topology))
    found = {e.path: e.message for e in caught.value.errors}
    assert path in found, found
    assert found[path].startswith(message), found[path]


def test_cpu_lists_read_and_write_as_linux_prints_them() -> None:
    assert parse_cpu_list("0-3, 8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert format_cpu_list([11, 10, 8, 3, 2, 1, 0]) == "0-3,8,10-11"
    assert format_cpu_list([]) == ""
