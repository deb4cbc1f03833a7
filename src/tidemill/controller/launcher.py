"""Turns a placed replica into the exact ``LaunchSpec`` for the engine: a pure function
of the job's snapshot, taken after its launch intent and ports were recorded, so the
same spec can be rebuilt to adopt that launch after a restart.

Ports are the engine's (``engine.free_port(node)``), chosen by the applier before the
intent is written: one ``MASTER_PORT`` per job start (the rank-0 rendezvous), one per
replica for ``TF_CONFIG``, one for the job master. Addresses are the engine's
(``engine.replica_host``): the machine locally, a stable DNS name on Kubernetes.

A job with ``spec.data`` hands its plan to the master and the chief and workers as
``TIDEMILL_DATA``: compact JSON in job-file form, read back with
``DataSpec.model_validate_json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

from tidemill.api.checkpoint import CheckpointPlan, job_checkpoint_plan
from tidemill.api.job import RoleSpec, TrainingJob
from tidemill.api.metrics import TENSORBOARD_VAR
from tidemill.api.ps import PS_ADDRS_VAR, PS_SERVER_MODULE
from tidemill.controller.elastic import MASTER_ROLE, is_elastic, needs_master
from tidemill.controller.model import JobSnapshot, ReplicaSnapshot
from tidemill.engines.base import LaunchSpec
from tidemill.engines.replica_env import COLLECTIVE_ROLES, ReplicaContext, replica_env
from tidemill.peer_proof import TOKEN_VAR
from tidemill.scheduler.numa import cpu_set
from tidemill.scheduler.types import NumaNode

DATA_VAR = "TIDEMILL_DATA"
DATA_ROLES = (MASTER_ROLE, "chief", "worker")
"""Roles that get ``TIDEMILL_DATA``: the master leases shards, the collective reads them."""
JOB_MASTER_PORT = "job-master"
MASTER_PORT = "rendezvous"
"""Port slots of a job (besides one per replica, named by the replica)."""


def local_rank(job: JobSnapshot, replica: ReplicaSnapshot) -> int:
    """Position among the job's collective replicas on the same node, in rank order."""
    order = {"chief": 0, "worker": 1, "ps": 2, "evaluator": 3}
    same_node = sorted(
        (r for r in job.replicas if r.node == replica.node),
        key=lambda r: (order.get(r.role, 9), r.index),
    )
    return next(i for i, r in enumerate(same_node) if r.name == replica.name)


def rank0(replicas: Sequence[ReplicaSnapshot]) -> ReplicaSnapshot | None:
    """Rank 0 (the chief, else worker 0), whose host is ``MASTER_ADDR``."""
    collective = sorted(
        (r for r in replicas if r.role in COLLECTIVE_ROLES),
        key=lambda r: (COLLECTIVE_ROLES.index(r.role), r.index),
    )
    return collective[0] if collective else None


def rank0_node(replicas: Sequence[ReplicaSnapshot]) -> str | None:
    """The node of rank 0 (see :func:`rank0`)."""
    first = rank0(replicas)
    return first.node if first else None


def port_needs(job: JobSnapshot, spec: TrainingJob, launching: Sequence[str]) -> dict[str, str]:
    """Port slot -> node, for the ports the launches of ``launching`` need and the job
    has not got yet: the job master's, the rendezvous, and one per replica."""
    needs: dict[str, str] = {}
    master = next((r for r in job.replicas if r.role == MASTER_ROLE), None)
    if needs_master(spec) and job.job_master_port is None and master is not None:
        needs[JOB_MASTER_PORT] = master.node
    workers = [r for r in job.replicas if r.role != MASTER_ROLE]
    if not any(r.role != MASTER_ROLE for r in job.replicas if r.name in launching):
        return needs
    if job.master_port is None:
        needs[MASTER_PORT] = rank0_node(workers) or workers[0].node
    for replica in workers:
        if not replica.port:
            needs[replica.name] = replica.node
    return needs


def role_sizes(job: JobSnapshot) -> dict[str, int]:
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


PS_ENV_ROLES = (MASTER_ROLE, "ps", "chief", "worker", "evaluator")
"""Roles told the PS server's tables: the servers, their clients, and the job master."""


def ps_env(spec: TrainingJob, role: str) -> dict[str, str]:
    """The PS server's tables as ``TIDEMILL_PS``, when the ps role runs tidemill's."""
    server = spec.ps_server
    if server is None or role not in PS_ENV_ROLES:
        return {}
    return server.to_env()


def replica_argv(role: RoleSpec) -> tuple[str, ...]:
    """The user's command, or ``python -m tidemill.ps`` for a ps role with tables."""
    if role.runs_ps_server:
        return (sys.executable, "-m", PS_SERVER_MODULE)
    return tuple(role.argv)


ReplicaHost = Callable[[str, str, int, str], str]
"""(job key, role, index, node) -> the address others reach that replica by
(``Engine.replica_host``)."""


class Launcher:
    """Builds launch specs; replica addresses and the job token are the only inputs
    besides the job's snapshot."""

    def __init__(
        self,
        replica_host: ReplicaHost,
        server_url: str | None = None,
        job_token: Callable[[str], str] | None = None,
        checkpoint_root: str | None = None,
        numa: Mapping[str, tuple[NumaNode, ...]] | None = None,
    ) -> None:
        """``numa``: the declared NUMA layout of each node that has one, by node name;
        a replica with GPUs there is pinned to their NUMA node's CPUs."""
        self.replica_host = replica_host
        self.numa = numa or {}
        self.server_url = server_url
        self.job_token = job_token
        self.checkpoint_root = checkpoint_root

    def checkpoint_plan(self, key: str, uid: str, spec: TrainingJob) -> CheckpointPlan | None:
        """Job ``key``'s checkpoints: only a job with a master restores and commits them."""
        if not needs_master(spec):
            return None
        return job_checkpoint_plan(spec.spec.checkpoint, key, uid, self.checkpoint_root)

    def checkpoint_env(self, job: JobSnapshot, spec: TrainingJob) -> dict[str, str]:
        plan = self.checkpoint_plan(job.key, job.uid, spec)
        return {} if plan is None else plan.to_env()

    def credential_env(self, job: JobSnapshot) -> dict[str, str]:
        return {} if self.job_token is None else {TOKEN_VAR: self.job_token(job.uid)}

    def launch_spec(
        self, job: JobSnapshot, spec: TrainingJob, replica: ReplicaSnapshot
    ) -> LaunchSpec:
        """The exact request for the engine; the same for the same snapshot."""
        if replica.launch_id is None:
            raise ValueError(f"{job.key} {replica.name}: no launch intent recorded")
        if replica.role == MASTER_ROLE:
            return self._master_spec(job, spec, replica, replica.launch_id)
        if job.master_port is None:
            raise ValueError(f"{job.key}: no rendezvous port recorded")
        role = spec.spec.roles[replica.role]

        def host(r: ReplicaSnapshot) -> str:
            return self.replica_host(job.key, r.role, r.index, r.node)

        master = next((r for r in job.replicas if r.role == MASTER_ROLE), None)
        context = ReplicaContext(
            job=job.key,
            mode=spec.spec.mode,
            roles=role_sizes(job),
            role=replica.role,
            index=replica.index,
            master_addr=host(rank0(job.replicas) or replica),
            master_port=job.master_port,
            addresses={
                (r.role, r.index): f"{host(r)}:{r.port}"
                for r in job.replicas
                if r.role != MASTER_ROLE
            }
            if spec.spec.mode.value == "ps"
            else {},
            tidemill_master_addr=None
            if job.job_master_port is None or master is None
            else f"{host(master)}:{job.job_master_port}",
            local_rank=local_rank(job, replica),
            gpu_ids=replica.gpu_ids,
            gpu_share=replica.gpu_share if replica.gpu_share > 0 else 1.0,
            attempt=_attempt(replica),
        )
        return LaunchSpec(
            job=job.key,
            job_uid=job.uid,
            launch_id=replica.launch_id,
            role=replica.role,
            index=replica.index,
            argv=replica_argv(role),
            env={
                **role.env,
                **replica_env(context),
                **elastic_env(spec),
                **data_env(spec, replica.role),
                **ps_env(spec, replica.role),
                **self.checkpoint_env(job, spec),
                **self.credential_env(job),
            },
            working_dir=role.working_dir or "",
            node=replica.node,
            gpu_ids=replica.gpu_ids,
            cpu_ids=cpu_set(self.numa.get(replica.node, ()), replica.gpu_ids, role.resources.cpu),
            attempt=_attempt(replica),
            image=role.image,
            cpu=role.resources.cpu,
            memory_bytes=role.resources.memory,
            gpus=role.resources.gpu,
            extended=tuple(sorted(role.resources.extended.items())),
        )

    def _ps_addresses(self, job: JobSnapshot, spec: TrainingJob) -> dict[str, str]:
        """``TIDEMILL_PS_ADDRS`` for the job master, which polls tidemill's PS replicas'
        STATS: once every replica of the ps role has its port (the launches record them
        together), as the replicas themselves get it."""
        size = role_sizes(job).get("ps", 0)
        servers = {r.index: r for r in job.replicas if r.role == "ps" and r.port}
        if spec.ps_server is None or size == 0 or any(i not in servers for i in range(size)):
            return {}
        addresses = [
            f"{self.replica_host(job.key, r.role, r.index, r.node)}:{r.port}"
            for r in (servers[index] for index in range(size))
        ]
        return {PS_ADDRS_VAR: ",".join(addresses)}

    def _master_spec(
        self, job: JobSnapshot, spec: TrainingJob, replica: ReplicaSnapshot, launch_id: str
    ) -> LaunchSpec:
        """tidemill's own per-job master: membership, epochs, committed progress."""
        if job.job_master_port is None:
            raise ValueError(f"{job.key}: no job master port recorded")
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
            **ps_env(spec, MASTER_ROLE),
            **self._ps_addresses(job, spec),
            **self.checkpoint_env(job, spec),
            **self.credential_env(job),
        }
        if spec.spec.tensorboard is not None:
            env[TENSORBOARD_VAR] = spec.spec.tensorboard.dir
        if self.server_url is not None:
            env["TIDEMILL_SERVER"] = self.server_url
        first_role = next(iter(spec.spec.roles.values()))
        return LaunchSpec(
            job=job.key,
            job_uid=job.uid,
            launch_id=launch_id,
            role=MASTER_ROLE,
            index=0,
            argv=(sys.executable, "-m", "tidemill.master"),
            env=env,
            working_dir=first_role.working_dir or "",
            node=replica.node,
            attempt=_attempt(replica),
            image=first_role.image,
        )


def _attempt(replica: ReplicaSnapshot) -> int:
    """Launches begun before this one (``starts`` counts this one from its intent on)."""
    return max(0, replica.starts - 1)
