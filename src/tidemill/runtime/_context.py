"""``tidemill.init()``: join the job's torch.distributed process group, or run alone.

The same script runs under tidemill (one process per replica, env set by the engine),
under torchrun, and on a laptop with no env at all, where it simply runs standalone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING

from tidemill.runtime._env import ReplicaEnv, read_env
from tidemill.runtime._errors import RendezvousError, RuntimeConfigError
from tidemill.runtime._group_release import destroy_default_group, release_retired

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RuntimeContext:
    """Who this process is within its job, and where its tensors should live.

    Example::

        >>> import tidemill
        >>> with tidemill.init(backend="gloo") as ctx:
        ...     print(ctx.rank, ctx.world_size, ctx.is_chief)
        0 1 True
    """

    job: str
    """``namespace/name`` under tidemill; ``local`` when run by hand."""
    role: str
    index: int
    """The replica's index within its role."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    """The process-group backend; None when running alone (no group is formed)."""

    @property
    def is_chief(self) -> bool:
        """Rank 0: the one process that should log, evaluate and save."""
        return self.rank == 0

    def shutdown(self) -> None:
        """Leave the process group so the process exits cleanly; safe to call twice.

        Example::

            >>> import tidemill
            >>> ctx = tidemill.init(backend="gloo")
            >>> ctx.shutdown()
            >>> ctx.shutdown()
        """
        if self.backend is None:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            destroy_default_group(self.backend)

    def __enter__(self) -> RuntimeContext:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.shutdown()


def init(backend: str | None = None, timeout_s: float = 300) -> RuntimeContext:
    """Join this replica to its job, reading RANK, WORLD_SIZE, MASTER_ADDR/PORT, LOCAL_RANK.

    ``backend`` defaults to nccl when CUDA is available and gloo otherwise;
    ``backend="gloo"`` keeps tensors on the CPU. On CUDA the process uses its first
    visible device under tidemill (which hands each replica only its own GPUs) and
    ``cuda:LOCAL_RANK`` elsewhere, as torchrun expects.
    With WORLD_SIZE unset or 1 no process group is formed, so the script also runs alone.
    Raises RuntimeConfigError for an inconsistent environment and RendezvousError when
    the peers are not all reached within ``timeout_s``.

    Example::

        >>> import tidemill
        >>> ctx = tidemill.init()
        >>> ctx.world_size, ctx.device.type in ("cpu", "cuda")
        (1, True)
        >>> ctx.shutdown()
    """
    import torch

    env = read_env(os.environ)
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeConfigError(
            "backend 'nccl' needs CUDA, but torch.cuda.is_available() is False on this "
            "machine; use backend='gloo' or leave backend unset"
        )
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    device = _cuda_device(env) if use_cuda else torch.device("cpu")
    chosen: str | None = None
    if env.distributed:
        chosen = backend or ("nccl" if use_cuda else "gloo")
        _join(env, chosen, timeout_s)
    return RuntimeContext(
        job=env.job,
        role=env.role,
        index=env.index,
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        device=device,
        backend=chosen,
    )


def _cuda_device(env: ReplicaEnv) -> torch.device:
    import torch

    visible = torch.cuda.device_count()
    if env.cuda_index >= visible:
        raise RuntimeConfigError(
            f"LOCAL_RANK={env.local_rank} but this process sees {visible} CUDA device(s) "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); LOCAL_RANK "
            f"must be below {visible}, or pass backend='gloo' to train on the CPU"
        )
    torch.cuda.set_device(env.cuda_index)
    return torch.device("cuda", env.cuda_index)


def _join(env: ReplicaEnv, backend: str, timeout_s: float) -> None:
    import torch.distributed as dist

    release_retired()
    try:
        dist.init_process_group(
            backend,
            init_method=f"tcp://{_host(env.master_addr)}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except RuntimeError as exc:
        cause = str(exc).rstrip(".")
        raise RendezvousError(
            f"rank {env.rank} of {env.world_size} ({env.role} {env.index} of job {env.job}) "
            f"could not form the {backend} process group at MASTER_ADDR={env.master_addr} "
            f"MASTER_PORT={env.master_port} within {timeout_s:g} s: {cause}. Check that all "
            f"{env.world_size} replicas started and that rank 0's address is reachable."
        ) from exc


def _host(addr: str | None) -> str:
    """IPv6 literals need brackets inside a URL."""
    return f"[{addr}]" if addr and ":" in addr else str(addr)
