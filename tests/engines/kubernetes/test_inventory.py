"""What tidemill's scheduler sees of a cluster: usable nodes, less other pods' requests."""

from __future__ import annotations

from typing import Any

from tidemill.engines.kubernetes.inventory import node_specs, pod_requests, unusable
from tidemill.engines.kubernetes.options import KubernetesOptions


def node(
    name: str, cpu: str = "8", memory: str = "32Gi", gpus: int = 0, **spec: Any
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "110"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    ready = spec.pop("ready", True)
    return {
        "metadata": {
            "name": name,
            "labels": {"topology.kubernetes.io/zone": "z1", "nvidia.com/gpu.product": "A100"},
        },
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(
    node_name: str,
    cpu: str,
    memory: str,
    ours: bool = False,
    phase: str = "Running",
    init_cpu: str | None = None,
) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "tidemill"} if ours else {}
    spec: dict[str, Any] = {
        "nodeName": node_name,
        "containers": [
            {"resources": {"requests": {"cpu": cpu, "memory": memory}}},
            {"resources": {"requests": {"cpu": "100m"}}},
        ],
    }
    if init_cpu:
        spec["initContainers"] = [{"resources": {"requests": {"cpu": init_cpu}}}]
    return {"metadata": {"labels": labels}, "spec": spec, "status": {"phase": phase}}


def test_other_pods_requests_are_taken_from_what_a_node_offers() -> None:
    nodes = [node("a", gpus=4), node("b")]
    pods = [
        pod("a", "2", "4Gi"),  # another scheduler's pod: 2.1 cores, 4Gi
        pod("a", "1", "1Gi", ours=True),  # tidemill's: already a placement
        pod("a", "3", "1Gi", phase="Succeeded"),  # finished: holds nothing
        pod("b", "500m", "1Gi", init_cpu="4"),  # an init container asks for more
    ]
    specs = {s.name: s for s in node_specs(nodes, pods, KubernetesOptions())}
    assert specs["a"].cpu == 5.9 and specs["a"].memory == 28 * 2**30
    assert specs["a"].gpus == 4 and specs["a"].gpu_model == "A100"
    assert specs["a"].labels["zone"] == "z1"
    assert specs["b"].cpu == 4.0


def test_the_extended_resources_named_in_the_options_are_counted_less_other_pods() -> None:
    fpga = node("a")
    fpga["status"]["allocatable"].update({"example.com/fpga": "4", "rdma/hca": "8"})
    other = pod("a", "1", "1Gi")
    other["spec"]["containers"][0]["resources"]["requests"]["example.com/fpga"] = "1"
    ours = pod("a", "1", "1Gi", ours=True)
    ours["spec"]["containers"][0]["resources"]["requests"]["example.com/fpga"] = "2"
    options = KubernetesOptions(extended_resources=("example.com/fpga", "vendor.io/none"))
    specs = {s.name: s for s in node_specs([fpga, node("b")], [other, ours], options)}
    assert specs["a"].extended == {"example.com/fpga": 3}, "rdma/hca is not named; ours not taken"
    assert specs["b"].extended == {}
    assert node_specs([fpga], [], KubernetesOptions())[0].extended == {}


def test_cordoned_tainted_and_not_ready_nodes_are_left_out() -> None:
    nodes = [
        node("cordoned", unschedulable=True),
        node("tainted", taints=[{"key": "dedicated", "effect": "NoSchedule"}]),
        node("prefers", taints=[{"key": "spot", "effect": "PreferNoSchedule"}]),
        node("down", ready=False),
        node("ok"),
    ]
    assert [s.name for s in node_specs(nodes, [], KubernetesOptions())] == ["ok", "prefers"]
    assert unusable(nodes[1]) == "tainted dedicated:NoSchedule"
    assert unusable(nodes[3]) == "not Ready"


def test_a_pod_holds_the_larger_of_its_containers_and_its_init_container() -> None:
    assert pod_requests(pod("a", "1", "1Gi", init_cpu="250m"))["cpu"] == 1.1
    assert pod_requests(pod("a", "1", "1Gi", init_cpu="3"))["cpu"] == 3.0
