"""Clusters the simulator replays on: a cluster YAML, or the openb node list CSV.

The YAML is the file ``tidemill server --cluster`` reads (``nodes`` with cpu, memory,
gpus, gpuModel, labels and count; ``queues`` with weight, guaranteed and max), so a
simulated cluster and a served one are written the same way.
"""

from __future__ import annotations

from pathlib import Path

from tidemill.api.cluster import ClusterSpec, NodeSpec, QueueSpec
from tidemill.api.loader import load_cluster_file
from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.rows import Fields, rows
from tidemill.scheduler.sim.trace import MIB
from tidemill.scheduler.types import ClusterState, NodeInfo, QueueInfo, ResourceVector

OPENB_NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


def read_cluster(path: str | Path) -> ClusterState:
    """An empty cluster from ``path``: the openb node list if it ends in .csv, else YAML."""
    if Path(path).suffix.lower() == ".csv":
        return read_openb_nodes(path)
    state = from_spec(load_cluster_file(path))
    if not state.nodes:
        raise SimInputError(str(path), None, "declares no nodes; add a nodes: list")
    return state


def from_spec(spec: ClusterSpec) -> ClusterState:
    """The scheduler's view of a declared cluster, nothing running yet."""
    nodes = tuple(_node(node) for node in spec.all_nodes())
    return ClusterState(nodes=nodes, queues={q.name: _queue(q) for q in spec.queues})


def read_openb_nodes(path: str | Path) -> ClusterState:
    """The openb node list (``sn,cpu_milli,memory_mib,gpu,model``); no queues declared."""
    nodes: list[NodeInfo] = []
    seen: dict[str, int] = {}
    for line, row in rows(Path(path), OPENB_NODE_COLUMNS, ()):
        field = Fields(str(path), line, row)
        name = field.text("sn")
        if name in seen:
            field.fail("sn", f"{name!r} is already the node of line {seen[name]}")
        seen[name] = line
        gpus = field.integer("gpu", minimum=0, maximum=1024)
        nodes.append(
            NodeInfo(
                name=name,
                cpu_millis=field.integer("cpu_milli", minimum=0, maximum=2**40),
                memory_bytes=field.integer("memory_mib", minimum=0, maximum=2**30) * MIB,
                gpus=gpus,
                gpu_model=(row.get("model") or None) if gpus else None,
            )
        )
    if not nodes:
        raise SimInputError(str(path), None, "lists no nodes; a cluster needs at least one")
    return ClusterState(nodes=tuple(nodes), queues={})


def _node(spec: NodeSpec) -> NodeInfo:
    return NodeInfo(
        name=spec.name,
        cpu_millis=round(spec.cpu * 1000),
        memory_bytes=spec.memory,
        gpus=spec.gpus,
        gpu_model=spec.gpu_model,
        labels=dict(spec.labels),
        extended=dict(spec.extended),
    )


def _queue(spec: QueueSpec) -> QueueInfo:
    guaranteed, limit = spec.guaranteed, spec.max
    return QueueInfo(
        name=spec.name,
        weight=spec.weight,
        guaranteed=ResourceVector(
            round((guaranteed.cpu or 0) * 1000), guaranteed.memory or 0, guaranteed.gpu or 0.0
        ),
        max_cpu_millis=None if limit.cpu is None else round(limit.cpu * 1000),
        max_memory_bytes=limit.memory,
        max_gpu=limit.gpu,
    )
