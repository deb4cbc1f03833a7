"""``resources.extended`` on a role and ``extended`` on a node: Kubernetes names, whole
amounts, refused as ``path: what is wrong; what would be right``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.api.cluster import ClusterSpec
from tidemill.api.errors import SpecError
from tidemill.api.loader import load_cluster_file, load_job_text


def job_with(extended: str) -> str:
    return (
        "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: ok}\nspec:\n  roles:\n"
        f"    worker: {{command: [python], resources: {{extended: {extended}}}}}\n"
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_job_text(text, "job.yaml")
    return [str(error) for error in caught.value.errors]


def test_a_role_asks_extended_resources_by_kubernetes_name() -> None:
    job = load_job_text(
        job_with('{rdma/hca: 2, example.com/fpga: "1", hugepages-2Mi: 1Gi}'), "job.yaml"
    )
    assert job.spec.roles["worker"].resources.extended == {
        "example.com/fpga": 1,
        "hugepages-2Mi": 2**30,
        "rdma/hca": 2,
    }


def test_a_role_without_extended_resources_asks_none() -> None:
    job = load_job_text(job_with("{}"), "job.yaml")
    assert job.spec.roles["worker"].resources.extended == {}


PATH = "spec.roles.worker.resources.extended: "
REFUSED = {
    "a name without a domain": (
        "{fpga: 1}",
        "'fpga' is not an extended resource name; write domain/name (e.g. example.com/fpga) "
        "or hugepages-<size> (e.g. hugepages-2Mi)",
    ),
    "the gpu resource, which has its own field": (
        "{nvidia.com/gpu: 1}",
        "'nvidia.com/gpu' is counted by the gpu field; write gpu: N instead",
    ),
    "a name in the reserved kubernetes.io domain": (
        "{x.kubernetes.io/thing: 1}",
        "'x.kubernetes.io/thing' is in the reserved kubernetes.io domain; use your own domain",
    ),
    "a fraction": (
        "{rdma/hca: 1.5}",
        "rdma/hca: 1.5 is not a whole number; extended resources are counted in whole units "
        "(0, 1, 2, ...)",
    ),
    "a negative amount": ("{rdma/hca: -1}", "rdma/hca: -1 is negative; ask for 0 or more"),
    "more than any node has": (
        "{rdma/hca: 1000001}",
        "rdma/hca: 1,000,001 is more than any node has; at most 1,000,000",
    ),
    "a list instead of a mapping": (
        "[rdma/hca]",
        "expected a mapping of resource name to amount, e.g. {rdma/hca: 2}",
    ),
    "too many names": (
        "{" + ", ".join(f"example.com/r{i}: 1" for i in range(33)) + "}",
        "33 extended resources; at most 32 are accepted",
    ),
}


@pytest.mark.parametrize(("extended", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_bad_extended_resources_are_refused_with_the_path(extended: str, message: str) -> None:
    assert errors_of(job_with(extended)) == [PATH + message]


def load_cluster_text(text: str, folder: Path) -> ClusterSpec:
    path = folder / "cluster.yaml"
    path.write_text(text)
    return load_cluster_file(path)


def test_a_cluster_file_node_offers_extended_resources(tmp_path: Path) -> None:
    cluster = load_cluster_text(
        "nodes: [{name: n, cpu: 8, memory: 32Gi, extended: {example.com/fpga: 4}, count: 2}]",
        tmp_path,
    )
    assert [(n.name, n.extended) for n in cluster.all_nodes()] == [
        ("n-0", {"example.com/fpga": 4}),
        ("n-1", {"example.com/fpga": 4}),
    ]


def test_a_cluster_file_node_with_a_bad_extended_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_cluster_text("nodes: [{name: n, cpu: 8, memory: 32Gi, extended: {fpga: 4}}]", tmp_path)
    assert [str(e) for e in caught.value.errors] == [
        "nodes.0.extended: 'fpga' is not an extended resource name; write domain/name "
        "(e.g. example.com/fpga) or hugepages-<size> (e.g. hugepages-2Mi)"
    ]
