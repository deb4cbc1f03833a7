"""What becomes of a replica lost with its node, so the others keep their processes.

Restarted where it was, its launch would fail on the missing node and the whole job be
placed again: every survivor killed. Instead an elastic replica is forgotten (the
scheduler grows the role back where there is room), any other replica outside a static
AllReduce group waits unplaced for the scheduler to place it again (its job is queued
again whole if no node has room), and the job master, which takes no scheduled
resources, moves beside a surviving replica. None of these is charged to maxRestarts:
the node failed, not the replica.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase
from tidemill.controller.actions import Action, Event, Forget, Relocate, Transition, Unplace
from tidemill.controller.elastic import MASTER_ROLE, is_static_gang
from tidemill.controller.model import LIVE, ReplicaSnapshot


def replace_lost(replica: ReplicaSnapshot, spec: TrainingJob) -> list[Action]:
    """Forget or unplace ``replica`` (not the master); none for a static AllReduce
    group's member, whose whole group restarts by the restart policy."""
    role = spec.spec.roles.get(replica.role)
    name, node = replica.name, replica.node
    if role is None:
        return []
    if role.is_elastic:
        message = (
            f"{name} was lost with its node {node}; the others go on, and a replacement "
            "is placed where there is room"
        )
        return [Forget(name), Event("ReplicaLost", message, warning=True, replica=name)]
    if is_static_gang(spec):
        return []
    message = (
        f"{name} was lost with its node {node}; it is placed again where there is room "
        "while the others keep running (the whole job is queued again if no node has room)"
    )
    waiting = f"{name} waits to be placed again (lost with its node {node})"
    return [
        Unplace(name),
        Event("ReplicaLost", message, warning=True, replica=name),
        Transition(JobPhase.RESTARTING, "Restarting", waiting, warning=True),
    ]


def move_master(
    master: ReplicaSnapshot, replicas: Sequence[ReplicaSnapshot], lost_nodes: Collection[str]
) -> list[Action]:
    """Restart the job master beside a replica still running on a node not lost, so the
    survivors reconnect to it; none when nothing survives (the whole job is placed again)."""
    beside = next(
        (
            r
            for r in replicas
            if r.role != MASTER_ROLE and r.phase in LIVE and r.node not in lost_nodes
        ),
        None,
    )
    if beside is None:
        return []
    message = (
        f"{master.name} was lost with its node {master.node}; it restarts on "
        f"{beside.node}, beside {beside.name}"
    )
    return [
        Relocate(master.name, beside.node),
        Event("MasterMoved", message, warning=True, replica=master.name),
    ]
