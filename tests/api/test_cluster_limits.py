"""Cluster files get the same hard limits as jobs: a node or queue nothing could be (a
node with 2**40 GPUs, a billion nodes, an infinite quota) is refused at start-up."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.limits import MAX_CLUSTER_NODES
from tidemill.api.loader import load_cluster_file

NODE = "{name: n, cpu: 8, memory: 32Gi}"

REFUSED = {
    "a node with 2**40 gpus (the scheduler would allocate one slot per device)": (
        "nodes: [{name: n, cpu: 8, memory: 32Gi, gpus: 1099511627776}]",
        "nodes.0.gpus: Input should be less than or equal to 1024",
    ),
    "a node count of a billion": (
        "nodes: [{name: n, cpu: 8, memory: 32Gi, count: 1000000000}]",
        f"nodes.0.count: Input should be less than or equal to {MAX_CLUSTER_NODES}",
    ),
    "node counts that add up beyond the cluster cap": (
        "nodes:\n"
        + "".join(f"  - {{name: n{i}, cpu: 1, memory: 1Gi, count: 4000}}\n" for i in range(3)),
        f"the cluster declares 12,000 nodes; at most {MAX_CLUSTER_NODES:,} are accepted",
    ),
    "a node with infinite cpu": (
        "nodes: [{name: n, cpu: .inf, memory: 32Gi}]",
        "nodes.0.cpu: inf is not a finite number",
    ),
    "a node with 2 EiB of memory": (
        "nodes: [{name: n, cpu: 8, memory: 2048Pi}]",
        "nodes.0.memory: '2048Pi' is more memory than any machine has; at most 1Ei",
    ),
    "a queue whose weight is zero": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, weight: 0}}]",
        "queues.0.weight: Input should be greater than or equal to 0.001",
    ),
    "a queue whose weight is 1e9": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, weight: 1.0e+9}}]",
        "queues.0.weight: Input should be less than or equal to 1000000",
    ),
    "a queue guarantee of nan gpus": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, guaranteed: {{gpu: .nan}}}}]",
        "queues.0.guaranteed.gpu: nan is not a finite number",
    ),
    "a queue that reserves after zero seconds": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, reserveAfterSeconds: 0}}]",
        "queues.0.reserveAfterSeconds: Input should be greater than 0",
    ),
    "a queue runtime estimate beyond int64": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, runtimeEstimateSeconds: 1180591620717411303424}}]",
        "queues.0.runtimeEstimateSeconds: 1180591620717411303424 is beyond the 64-bit",
    ),
    "a queue max of negative cpu": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, max: {{cpu: -4}}}}]",
        "queues.0.max.cpu: cpu must not be negative",
    ),
    "a queue whose weight is 1e300": (
        f"nodes: [{NODE}]\nqueues: [{{name: a, weight: 1.0e+300}}]",
        "queues.0.weight: 1e+300 is beyond the 64-bit range every field fits in",
    ),
    "a priority class beyond int64": (
        f"nodes: [{NODE}]\npriorityClasses: {{high: 1180591620717411303424}}",
        "priorityClasses.high: 1180591620717411303424 is beyond the 64-bit integer range",
    ),
    "a node label with a control character": (
        'nodes: [{name: n, cpu: 8, memory: 32Gi, labels: {rack: "r\\x07"}}]',
        "nodes.0.labels.rack: contains the control character \\x07",
    ),
    "a node label that Kubernetes would refuse": (
        "nodes: [{name: n, cpu: 8, memory: 32Gi, labels: {rack: -r1-}}]",
        "nodes.0.labels: label 'rack' has the invalid value '-r1-'",
    ),
    "a scoring the scheduler does not have": (
        f"nodes: [{NODE}]\nscheduler: {{scoring: fastest}}",
        "scheduler.scoring: Input should be 'fragmentation' or 'best-fit'",
    ),
    "scoring zero nodes per pod": (
        f"nodes: [{NODE}]\nscheduler: {{scoreNodes: 0}}",
        "scheduler.scoreNodes: Input should be greater than or equal to 1",
    ),
    "an expected pod asking 1.5 gpus": (
        f"nodes: [{NODE}]\nscheduler: {{workload: [{{cpu: 4, memory: 8Gi, gpu: 1.5}}]}}",
        "scheduler.workload.0.gpu: 1.5 GPUs: above 1 a pod asks whole GPUs",
    ),
    "an expected pod of weight zero": (
        f"nodes: [{NODE}]\nscheduler: {{workload: [{{cpu: 4, memory: 8Gi, weight: 0}}]}}",
        "scheduler.workload.0.weight: Input should be greater than 0",
    ),
    "a misspelt scheduler setting": (
        f"nodes: [{NODE}]\nscheduler: {{scorring: best-fit}}",
        "scheduler.scorring: unknown field",
    ),
}


@pytest.mark.parametrize(("text", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_impossible_clusters_are_refused_with_the_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)

    with pytest.raises(SpecError) as caught:
        load_cluster_file(path)

    assert any(expected in str(error) for error in caught.value.errors), caught.value.errors


def test_ten_thousand_nodes_load_quickly(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(f"nodes: [{{name: n, cpu: 8, memory: 32Gi, count: {MAX_CLUSTER_NODES}}}]")

    started = time.perf_counter()
    cluster = load_cluster_file(path)

    assert len(cluster.all_nodes()) == MAX_CLUSTER_NODES
    assert time.perf_counter() - started < 5
