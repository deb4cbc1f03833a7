"""Turns a placed replica into a LaunchSpec and starts it through the engine.

Ports are chosen here: one ``MASTER_PORT`` per job start (the rank-0 rendezvous) and
one per replica for ``TF_CONFIG``. The local engine runs everything on this host.

A job with ``spec.data`` hands its plan to the master and the chief and workers as
``TIDEMILL_DATA``: compact JSON in job-file form, read back with
``DataSpec.model_validate_json``.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from pathlib import Path

from tidemill.api.job import TrainingJob
from tidemill.api.status import ReplicaPhase
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, needs_master
from tidemill.engines.base import Engine, LaunchSpec
from tidemill.engines.replica_env import ReplicaContext, replica_env
from tidemill.store.tables import JobRow, ReplicaRow

LOCAL_HOST = "127.0.0.1"
DATA_VAR = "TIDEMILL_DATA"
TOKEN_VAR = "TIDEMILL_TOKEN"
"""The job's own credential: lets its master and replicas write that job's state."""
DATA_ROLES = (MASTER_ROLE, "chief", "worker")
"""Roles that get ``TIDEMILL_DATA``: the master leases shards, the collective reads them."""


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


def role_sizes(job: JobRow) -> dict[str, int]:
    """Replica count per role as indexes go (gaps count), the master left out."""
    sizes: dict[str, int] = {}
    for r in job.replicas:
        if r.role != MASTER_ROLE:
            sizes[r.role] = max(sizes.get(r.role, 0), r.index + 1)
    return sizes


def collective_bounds(spec: TrainingJob) -> tuple[int, int]:
    """Smallest and largest world size of the chief+worker collective."""
    roles = [r for name, r in spec.spec.roles.items() if name in ("chief", "worker")]
    return sum(r.min_bound for r in roles), sum(r.max_bound for r in roles)


def elastic_env(spec: TrainingJob) -> dict[str, str]:
    """Tells the runtime to take its ranks from the job master, not from RANK."""
    return {"TIDEMILL_ELASTIC": "1"} if is_elastic(spec) else {}


def data_env(spec: TrainingJob, role: str) -> dict[str, str]:
    """``spec.data`` as ``TIDEMILL_DATA`` for the roles in :data:`DATA_ROLES`."""
    data = spec.spec.data
    if data is None or role not in DATA_ROLES:
        return {}
    return {DATA_VAR: data.model_dump_json(by_alias=True, exclude_none=True)}


class Launcher:
    def __init__(
        self,
        engine: Engine,
        server_url: str | None = None,
        job_token: Callable[[str], str] | None = None,
    ) -> None:
        self.engine = engine
        self.server_url = server_url
        self.job_token = job_token

    def credential_env(self, job: JobRow) -> dict[str, str]:
        return {} if self.job_token is None else {TOKEN_VAR: self.job_token(job.uid)}

    def launch_spec(self, job: JobRow, spec: TrainingJob, replica: ReplicaRow) -> LaunchSpec:
        """The exact request for the engine (pure apart from port choice)."""
        if needs_master(spec) and job.job_master_port is None:
            job.job_master_port = free_port()
        if replica.role == MASTER_ROLE:
            return self._master_spec(job, spec, replica)
        if job.master_port is None:
            job.master_port = free_port()
        for member in job.replicas:
            if not member.port:
                member.port = free_port()
        role = spec.spec.roles[replica.role]
        roles = role_sizes(job)
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
            tidemill_master_addr=None
            if job.job_master_port is None
            else f"{LOCAL_HOST}:{job.job_master_port}",
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
            env={
                **role.env,
                **replica_env(context),
                **elastic_env(spec),
                **data_env(spec, replica.role),
                **self.credential_env(job),
            },
            working_dir=role.working_dir or str(Path.cwd()),
            node=replica.node,
            gpu_ids=tuple(replica.gpu_ids),
            attempt=replica.starts,
            image=role.image,
        )

    def _master_spec(self, job: JobRow, spec: TrainingJob, replica: ReplicaRow) -> LaunchSpec:
        """tidemill's own per-job master: membership, epochs, committed progress."""
        low, high = collective_bounds(spec)
        env = {
            "TIDEMILL_JOB": job.key,
            "TIDEMILL_ROLE": MASTER_ROLE,
            "TIDEMILL_INDEX": "0",
            "TIDEMILL_MASTER_PORT": str(job.job_master_port),
            "TIDEMILL_ELASTIC_MIN": str(low),
            "TIDEMILL_ELASTIC_MAX": str(high),
            "PYTHONUNBUFFERED": "1",
            **data_env(spec, MASTER_ROLE),
            **self.credential_env(job),
        }
        if self.server_url is not None:
            env["TIDEMILL_SERVER"] = self.server_url
        first_role = next(iter(spec.spec.roles.values()))
        return LaunchSpec(
            job=job.key,
            role=MASTER_ROLE,
            index=0,
            argv=(sys.executable, "-m", "tidemill.master"),
            env=env,
            working_dir=first_role.working_dir or str(Path.cwd()),
            node=replica.node,
            attempt=replica.starts,
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
