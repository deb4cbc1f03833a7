"""The environment a replica starts with: tidemill's variables and the framework ones.

Training code already reads ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` (torch.distributed)
or ``TF_CONFIG`` (TensorFlow); giving it those means a script written for torchrun or
a TFJob runs unchanged. Built by a pure function so both engines (and ``dry_run``)
agree on it and tests can pin it.

Rank layout:

- **chief and worker** form the training collective. The chief is rank 0 and workers
  follow (worker ``i`` is rank ``i + 1``); with no chief, worker ``i`` is rank ``i``.
  ``WORLD_SIZE`` is chiefs + workers. They get ``MASTER_ADDR``/``MASTER_PORT``.
- **ps and evaluator** are outside the collective. ``RANK``/``WORLD_SIZE`` are their
  index and the size of their own role, so code can shard by them; they get no
  ``MASTER_ADDR``/``MASTER_PORT``, so an ``init_process_group("env://")`` in the wrong
  role fails loudly instead of joining (and breaking) the workers' rendezvous.
- **master** (tidemill's per-job master) gets only tidemill's variables.

``TF_CONFIG`` is written when replica addresses are given (the controller gives them
for ``ps`` mode) and every chief, worker and ps index has one: the cluster lists those
replicas; an evaluator is not in the cluster but still gets its ``task``. A replica
started while an elastic worker lost with its node leaves a hole gets none (no cluster
spec with a hole is right). With addresses, ``TIDEMILL_PS_ADDRS`` lists the ps replicas
in index order (tidemill's PS client and servers read it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidemill.api.job import Mode
from tidemill.api.ps import PS_ADDRS_VAR

COLLECTIVE_ROLES = ("chief", "worker")
"""Roles that share ``RANK``/``WORLD_SIZE`` and the torch.distributed rendezvous."""
TF_CLUSTER_ROLES = ("chief", "worker", "ps")
"""Roles listed in ``TF_CONFIG['cluster']``, in TensorFlow's order."""
MASTER_ROLE = "master"


@dataclass(frozen=True)
class ReplicaContext:
    """Where one replica sits in its job: the input of :func:`replica_env`."""

    job: str
    """``namespace/name``"""
    mode: Mode
    roles: Mapping[str, int]
    """replica count of every role of the job (ignored for the ``master`` role)"""
    role: str
    index: int
    master_addr: str
    """host of the rank-0 replica (the chief, else worker 0)"""
    master_port: int
    addresses: Mapping[tuple[str, int], str] = field(default_factory=dict)
    """``host:port`` of every chief/worker/ps replica, keyed by (role, index); for TF_CONFIG"""
    tidemill_master_addr: str | None = None
    """``host:port`` of the job's tidemill master"""
    local_rank: int = 0
    """this replica's position among the job's replicas on its node"""
    gpu_ids: tuple[int, ...] = ()
    gpu_share: float = 1.0
    """fraction of the one device in ``gpu_ids`` this replica may use (below 1: shared)"""
    attempt: int = 0
    """how many times this replica was restarted before this start"""


def world_size(roles: Mapping[str, int], role: str = "worker") -> int:
    """``WORLD_SIZE`` seen by ``role``: chief + workers, or the size of its own role.

    >>> world_size({"chief": 1, "worker": 3, "ps": 2})
    4
    >>> world_size({"chief": 1, "worker": 3, "ps": 2}, "ps")
    2
    """
    if role in COLLECTIVE_ROLES:
        return sum(roles.get(name, 0) for name in COLLECTIVE_ROLES)
    return roles.get(role, 0)


def rank_of(roles: Mapping[str, int], role: str, index: int) -> int:
    """``RANK`` of replica ``index`` of ``role`` (see the module docstring for the layout).

    >>> rank_of({"chief": 1, "worker": 3}, "worker", 0)
    1
    >>> rank_of({"worker": 3}, "worker", 0)
    0
    """
    if role == "worker":
        return roles.get("chief", 0) + index
    return index


def replica_env(ctx: ReplicaContext) -> dict[str, str]:
    """The variables one replica gets, on top of the server's environment and the role's env.

    >>> env = replica_env(ReplicaContext(job="ads/ctr", mode=Mode.ALLREDUCE,
    ...     roles={"worker": 2}, role="worker", index=1, master_addr="10.0.0.1",
    ...     master_port=29500))
    >>> env["RANK"], env["WORLD_SIZE"], env["CUDA_VISIBLE_DEVICES"]
    ('1', '2', '')
    """
    _check(ctx)
    env = {
        "TIDEMILL_JOB": ctx.job,
        "TIDEMILL_ROLE": ctx.role,
        "TIDEMILL_INDEX": str(ctx.index),
        "TIDEMILL_ATTEMPT": str(ctx.attempt),
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": ",".join(str(gpu) for gpu in ctx.gpu_ids),
    }
    if ctx.tidemill_master_addr is not None:
        env["TIDEMILL_MASTER_ADDR"] = ctx.tidemill_master_addr
    if ctx.gpu_share < 1:
        env["TIDEMILL_GPU_SHARE"] = f"{ctx.gpu_share:g}"
    if ctx.role == MASTER_ROLE:
        return env
    env["RANK"] = str(rank_of(ctx.roles, ctx.role, ctx.index))
    env["WORLD_SIZE"] = str(world_size(ctx.roles, ctx.role))
    env["LOCAL_RANK"] = str(ctx.local_rank)
    if ctx.role in COLLECTIVE_ROLES:
        env["MASTER_ADDR"] = ctx.master_addr
        env["MASTER_PORT"] = str(ctx.master_port)
    if ctx.addresses:
        if not _holes(ctx.roles, ctx.addresses):
            tf = tf_config(ctx.roles, ctx.role, ctx.index, ctx.addresses)
            env["TF_CONFIG"] = json.dumps(tf)
        servers = [ctx.addresses[("ps", i)] for i in range(ctx.roles.get("ps", 0))]
        if servers:
            env[PS_ADDRS_VAR] = ",".join(servers)
    return env


def tf_config(
    roles: Mapping[str, int],
    role: str,
    index: int,
    addresses: Mapping[tuple[str, int], str],
) -> dict[str, object]:
    """TensorFlow's ``TF_CONFIG`` for one replica.

    >>> tf_config({"worker": 1, "ps": 1}, "ps", 0,
    ...           {("worker", 0): "h1:2222", ("ps", 0): "h2:2222"})
    {'cluster': {'worker': ['h1:2222'], 'ps': ['h2:2222']}, 'task': {'type': 'ps', 'index': 0}}
    """
    missing = _holes(roles, addresses)
    if missing:
        raise ValueError(
            f"TF_CONFIG needs the host:port of every chief, worker and ps replica; "
            f"missing {', '.join(missing)} (given: {sorted(addresses)})"
        )
    cluster = {
        name: [addresses[(name, i)] for i in range(roles[name])]
        for name in TF_CLUSTER_ROLES
        if roles.get(name, 0) > 0
    }
    return {"cluster": cluster, "task": {"type": role, "index": index}}


def _holes(roles: Mapping[str, int], addresses: Mapping[tuple[str, int], str]) -> list[str]:
    """The chief, worker and ps indexes below their role's size with no replica: an
    elastic worker lost with its node leaves one until its replacement is placed."""
    wanted = [(name, i) for name in TF_CLUSTER_ROLES for i in range(roles.get(name, 0))]
    return [f"{name}-{i}" for name, i in wanted if (name, i) not in addresses]


def _check(ctx: ReplicaContext) -> None:
    if ctx.index < 0:
        raise ValueError(f"replica index must be 0 or more, got {ctx.index}")
    if ctx.role == MASTER_ROLE:
        if ctx.index != 0:
            raise ValueError(f"a job has one master (index 0), got index {ctx.index}")
    elif ctx.index >= ctx.roles.get(ctx.role, 0):
        raise ValueError(
            f"{ctx.role}-{ctx.index} is not a replica of job {ctx.job}: roles are "
            f"{dict(ctx.roles)} (index must be below the role's replica count)"
        )
    if not 0 < ctx.gpu_share <= 1:
        raise ValueError(f"gpu_share must be in (0, 1], got {ctx.gpu_share}")
    if ctx.gpu_share < 1 and len(ctx.gpu_ids) != 1:
        raise ValueError(
            f"a shared GPU (gpu_share={ctx.gpu_share:g}) needs exactly one device in "
            f"gpu_ids, got {list(ctx.gpu_ids)}"
        )
