"""The Engine protocol: the only way the controller touches processes or pods.

Nothing above ``engines/`` knows which engine runs. ``dry_run`` returns exactly what
``launch`` would start, built by a pure function, so it can be shown and tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one replica."""

    job: str
    """``namespace/name``"""
    job_uid: str
    """the job's uid: logs and replica files are kept per uid, so a new job under an old
    name inherits nothing"""
    launch_id: str
    """unique per launch attempt, chosen by the controller and recorded in the store (the
    launch intent) before ``launch`` is called; ``adopt`` finds the launch by it.
    Letters, digits, ``.``, ``_`` and ``-`` only (it names files)."""
    role: str
    index: int
    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str
    """the folder the command starts in; empty: the engine's default (the server's
    folder locally, the image's on Kubernetes)"""
    node: str
    gpu_ids: tuple[int, ...] = ()
    cpu_ids: tuple[int, ...] = ()
    """CPUs to pin the replica to (those of its GPUs' NUMA node); empty: not pinned"""
    attempt: int = 0
    image: str | None = None
    cpu: float = 0.0
    """cores the scheduler reserved for the replica (the pod's request and limit)"""
    memory_bytes: int = 0
    gpus: float = 0.0
    """whole devices, or the share of one device (below 1)"""
    extended: tuple[tuple[str, int], ...] = ()
    """extended resources (``("rdma/hca", 2)``) the scheduler reserved, by name"""


@dataclass(frozen=True)
class LaunchPlan:
    """What ``dry_run`` shows: the exact argv, env and folder, or a manifest."""

    argv: tuple[str, ...]
    env: dict[str, str]
    working_dir: str
    manifest: dict[str, object] | None = None


@dataclass(frozen=True)
class ReplicaHandle:
    """Enough to find a replica again, also after a control-plane restart.

    Persisted in the store as JSON; ``data`` is engine-specific.
    """

    engine: str
    data: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Observation:
    """What the engine saw. ``running`` False with ``exit_code`` None: lost/unknown."""

    running: bool
    exit_code: int | None = None
    pid: int | None = None
    message: str = ""
    node_lost: bool = False
    """the replica's node is gone: it cannot start there again and must be placed anew"""
    control_plane_ended: bool = False
    """it was stopped because the control plane that ran it ended (a tethered replica,
    see :class:`tidemill.engines.local.LocalEngine`): not a failure of its own"""


class PlacementLost(RuntimeError):
    """A launch was asked for on a node that is gone; the replica must be placed again."""


class LaunchRefused(RuntimeError):
    """The platform could not make the replica now (its API refused or failed the
    request, after its own retries): not the replica's fault, so it is not charged to the
    role's restarts."""


class Engine(Protocol):
    """Start, watch, stop replicas and read their logs."""

    name: str

    def dry_run(self, spec: LaunchSpec) -> LaunchPlan: ...

    def launch(self, spec: LaunchSpec) -> ReplicaHandle: ...

    def adopt(self, spec: LaunchSpec) -> ReplicaHandle | None:
        """The replica an earlier ``launch`` of ``spec.launch_id`` started, or None if it
        started none (e.g. the control plane died between launch and recording it).

        Idempotent; never starts anything. The handle is the one ``launch`` returned, or
        one that observes and stops the same replica.
        """
        ...

    def observe(self, handle: ReplicaHandle) -> Observation: ...

    def terminate(self, handle: ReplicaHandle) -> None:
        """Ask the replica to finish (SIGTERM to its command) and return at once.

        Elastic workers treat this as "leave at the next step boundary"; the caller
        observes the exit and calls ``stop`` if it takes too long.
        """
        ...

    def kill(self, handle: ReplicaHandle) -> None:
        """SIGKILL the replica's whole process tree and return at once (no wait)."""
        ...

    def stop(self, handle: ReplicaHandle, grace_s: float = 5.0) -> None:
        """Stop the replica's whole process tree; returns when it is gone.

        Blocking: for shutdown paths and tests; the controller loop uses ``terminate``
        and ``kill``, which return at once.
        """
        ...

    def log_path(self, handle: ReplicaHandle) -> str | None:
        """A file holding the replica's stdout and stderr, if the engine keeps one."""
        ...

    def forget(self, job: str, job_uid: str) -> None:
        """Remove what the engine keeps of job ``namespace/name`` (uid ``job_uid``) now
        that it is gone from the store (deleted, or past its TTL) and nothing of it runs:
        its logs and launch files, never its checkpoints. Nothing reads them any more."""
        ...

    def replica_host(self, job: str, role: str, index: int, node: str) -> str:
        """The address other replicas reach replica ``role-index`` of ``job``
        (``namespace/name``) by, placed on ``node``: a host of the machine, or a DNS name
        that exists before the replica starts."""
        ...

    def free_port(self, node: str) -> int:
        """A port free on ``node`` now (the replica binds it moments later)."""
        ...

    def close(self) -> None:
        """Release what the engine holds itself (helper processes); replicas keep running."""
        ...
