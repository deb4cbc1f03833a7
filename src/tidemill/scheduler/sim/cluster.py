"""Clusters the simulator replays on: a cluster YAML, or the openb node list CSV.

The YAML is the file ``tidemill server --cluster`` reads (``nodes`` with cpu, memory,
gpus, gpuModel, labels, numa and count; ``queues`` with weight, guaranteed, max and the
reservation settings; ``topology`` levels; the ``scheduler`` policy and expected pod
mix, which the ``tidemill`` policy replays with), read by the same conversion as the server's,
so a simulated cluster and a served one are written and scheduled the same way.
"""

from __future__ import annotations

from pathlib import Path

from tidemill.api.loader import load_cluster_file
from tidemill.scheduler.sim.errors import SimInputError
from tidemill.scheduler.sim.rows import Fields, rows
from tidemill.scheduler.sim.trace import MIB
from tidemill.scheduler.specs import cluster_of, config_of
from tidemill.scheduler.types import ClusterState, NodeInfo, SchedulerConfig

OPENB_NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")


def read_cluster(path: str | Path) -> ClusterState:
    """An empty cluster from ``path``: the openb node list if it ends in .csv, else YAML."""
    if Path(path).suffix.lower() == ".csv":
        return read_openb_nodes(path)
    state = cluster_of(load_cluster_file(path))
    if not state.nodes:
        raise SimInputError(str(path), None, "declares no nodes; add a nodes: list")
    return state


def read_policy(path: str | Path) -> SchedulerConfig | None:
    """The cluster YAML's ``scheduler`` section, if it has one; None for the openb CSV
    or a file without the section (the scheduler's defaults)."""
    if Path(path).suffix.lower() == ".csv":
        return None
    spec = load_cluster_file(path)
    return config_of(spec.scheduler) if "scheduler" in spec.model_fields_set else None


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
