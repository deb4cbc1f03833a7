"""Turns a placed replica into a LaunchSpec and starts it through the engine.

Ports are chosen here: one ``MASTER_PORT`` per job start (the rank-0 rendezvous) and
one per replica for ``TF_CONFIG``. The local engine runs everything on this host.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tidemill.api.job import TrainingJob
from tidemill.api.status import ReplicaPhase
from tidemill.engines.base import Engine, LaunchSpec
from tidemill.engines.replica_env import ReplicaContext, replica_env
from tidemill.store.tables import JobRow, ReplicaRow

LOCAL_HOST = "127.0.0.1"


def free_port(host: str = LOCAL_HOST) -> int:
    """A port nobody listens on right now (the replica binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def local_rank(job: JobRow, replica: ReplicaRow) -> int:
    """Position among the job's collective replicas on the same node, in rank order."""
    order = {"chief": 0, "worker": 1, "ps": 2, "evaluator": 3}
    same_node = sorted(
        (r for r in job.replicas if r.node == replica.node),
        key=lambda r: (order.get(r.role, 9), r.index),
    )
    return next(i for i, r in enumerate(same_node) if r is replica)


class Launcher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def launch_spec(self, job: JobRow, spec: TrainingJob, replica: ReplicaRow) -> LaunchSpec:
        """The exact request for the engine (pure apart from port choice)."""
        if job.master_port is None:
            job.master_port = free_port()
        for member in job.replicas:
            if not member.port:
                member.port = free_port()
        role = spec.spec.roles[replica.role]
        roles = {name: r.replicas for name, r in spec.spec.roles.items()}
        context = ReplicaContext(
            job=job.key,
            mode=spec.spec.mode,
            roles=roles,
            role=replica.role,
            index=replica.index,
            master_addr=LOCAL_HOST,
            master_port=job.master_port,
            addresses={(r.role, r.index): f"{LOCAL_HOST}:{r.port}" for r in job.replicas}
            if spec.spec.mode.value == "ps"
            else {},
            local_rank=local_rank(job, replica),
            gpu_ids=tuple(replica.gpu_ids),
            gpu_share=replica.gpu_share if replica.gpu_share > 0 else 1.0,
            attempt=replica.starts,
        )
        return LaunchSpec(
            job=job.key,
            role=replica.role,
            index=replica.index,
            argv=tuple(role.argv),
            env={**role.env, **replica_env(context)},
            working_dir=role.working_dir or str(Path.cwd()),
            node=replica.node,
            gpu_ids=tuple(replica.gpu_ids),
            attempt=replica.starts,
            image=role.image,
        )

    def launch(self, job: JobRow, spec: TrainingJob, replica: ReplicaRow, now: float) -> None:
        """Start the replica and record its handle, so a restarted server can find it."""
        handle = self.engine.launch(self.launch_spec(job, spec, replica))
        seen = self.engine.observe(handle)
        replica.handle = {"engine": handle.engine, "data": dict(handle.data)}
        replica.log_path = self.engine.log_path(handle)
        replica.pid = seen.pid
        replica.starts += 1
        replica.phase = ReplicaPhase.RUNNING.value
        replica.started_at = now
        replica.finished_at = None
        replica.exit_code = None
        replica.next_start_at = None
        replica.message = ""
