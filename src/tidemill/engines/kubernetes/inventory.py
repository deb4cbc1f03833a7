"""The cluster as tidemill's scheduler sees it: Nodes, less what other pods hold.

Pure functions of the objects the informers keep. A node counts when it is Ready, not
cordoned and without a ``NoSchedule``/``NoExecute`` taint (tidemill's pods tolerate
none); what it offers is its allocatable less the requests of every pod bound to it
that tidemill does not manage, by whatever scheduler (tidemill's own pods are the
scheduler's placements already). Extended resources are counted the same way, for the
names in ``KubernetesOptions.extended_resources`` only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from kubernetes.utils import parse_quantity

from tidemill.api.cluster import NodeSpec
from tidemill.api.limits import MAX_EXTENDED_AMOUNT
from tidemill.engines.kubernetes import names
from tidemill.engines.kubernetes.options import GPU_RESOURCE, KubernetesOptions

Obj = dict[str, Any]
FINISHED = ("Succeeded", "Failed")
BLOCKING_TAINTS = ("NoSchedule", "NoExecute")
LABELS_KEPT = {
    "topology.kubernetes.io/zone": "zone",
    "topology.kubernetes.io/region": "region",
}
"""Well-known node labels also given under tidemill's short names (``zone``)."""


def quantity(raw: object) -> float:
    try:
        return float(parse_quantity(str(raw)))  # type: ignore[no-untyped-call]
    except (ValueError, ArithmeticError):
        return 0.0


def pod_requests(pod: Obj) -> dict[str, float]:
    """What a pod holds on its node: the sum of its containers' requests, or its
    largest init container's when that is more (as kube-scheduler counts), plus overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, float] = defaultdict(float)
    for container in spec.get("containers") or []:
        for name, raw in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] += quantity(raw)
    for container in spec.get("initContainers") or []:
        for name, raw in ((container.get("resources") or {}).get("requests") or {}).items():
            total[name] = max(total[name], quantity(raw))
    for name, raw in (spec.get("overhead") or {}).items():
        total[name] += quantity(raw)
    return dict(total)


def is_ours(obj: Obj) -> bool:
    return ((obj.get("metadata") or {}).get("labels") or {}).get(names.MANAGED_BY) == "tidemill"


def foreign_usage(pods: Iterable[Obj]) -> dict[str, dict[str, float]]:
    """node -> resource -> what pods tidemill does not manage hold there."""
    usage: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in FINISHED or is_ours(pod):
            continue
        for name, amount in pod_requests(pod).items():
            usage[node][name] += amount
    return usage


def unusable(node: Obj) -> str | None:
    """Why tidemill places nothing on ``node`` (None: it may)."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return "cordoned"
    for taint in spec.get("taints") or []:
        if taint.get("effect") in BLOCKING_TAINTS:
            return f"tainted {taint.get('key')}:{taint.get('effect')}"
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") != "True":
        return "not Ready"
    return None


def node_spec(node: Obj, used: dict[str, float], options: KubernetesOptions) -> NodeSpec:
    meta = node.get("metadata") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    labels = dict(meta.get("labels") or {})
    for well_known, short in LABELS_KEPT.items():
        if well_known in labels:
            labels.setdefault(short, labels[well_known])

    def free(resource: str) -> float:
        return max(0.0, quantity(allocatable.get(resource, 0)) - used.get(resource, 0.0))

    extended = {
        name: int(free(name))
        if name.startswith("hugepages-")
        else min(int(free(name)), MAX_EXTENDED_AMOUNT)
        for name in options.extended_resources
    }
    return NodeSpec(
        name=meta["name"],
        cpu=round(free("cpu"), 3),
        memory=int(free("memory")),
        gpus=int(free(GPU_RESOURCE)),
        gpu_model=labels.get(options.gpu_product_label),
        labels=labels,
        extended={name: amount for name, amount in extended.items() if amount > 0},
    )


def node_specs(
    nodes: Iterable[Obj], pods: Iterable[Obj], options: KubernetesOptions
) -> list[NodeSpec]:
    """Every usable node, with what is left for tidemill, sorted by name."""
    usage = foreign_usage(pods)
    specs = [
        node_spec(node, usage.get(node["metadata"]["name"], {}), options)
        for node in nodes
        if unusable(node) is None
    ]
    return sorted(specs, key=lambda spec: spec.name)
