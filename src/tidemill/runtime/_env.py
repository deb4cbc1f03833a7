"""Read the variables tidemill sets for each replica, refusing inconsistent ones.

Pure (a mapping in, a value out) so the rules are checked before torch is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tidemill.runtime._errors import RuntimeConfigError


@dataclass(frozen=True)
class ReplicaEnv:
    job: str
    role: str
    index: int
    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: int | None
    launched_by_tidemill: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda_index(self) -> int:
        """tidemill gives each replica only its own GPUs (CUDA_VISIBLE_DEVICES), so the
        first visible one is its own; under torchrun every process sees all of them."""
        return 0 if self.launched_by_tidemill else self.local_rank


def read_env(env: Mapping[str, str]) -> ReplicaEnv:
    """Parse the launch environment; without WORLD_SIZE the process runs alone.

    Every problem is reported at once, each naming its variable and the value seen.
    """
    problems: list[str] = []

    def integer(name: str, default: int, minimum: int) -> int:
        raw = env.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            problems.append(f"{name}={raw!r} is not a whole number")
            return default
        if value < minimum:
            problems.append(f"{name}={value} must be at least {minimum}")
            return default
        return value

    world_size = integer("WORLD_SIZE", 1, 1)
    rank = integer("RANK", 0, 0)
    local_rank = integer("LOCAL_RANK", 0, 0)
    index = integer("TIDEMILL_INDEX", rank, 0)
    if rank >= world_size:
        problems.append(
            f"RANK={rank} must be below WORLD_SIZE={world_size} (ranks run 0..{world_size - 1})"
        )
    master_addr = env.get("MASTER_ADDR") or None
    master_port: int | None = None
    if world_size > 1:
        if not env.get("RANK"):
            problems.append(
                f"RANK is not set but WORLD_SIZE={world_size}; each replica needs its own "
                f"RANK in 0..{world_size - 1}"
            )
        if master_addr is None:
            problems.append(
                f"MASTER_ADDR is not set but WORLD_SIZE={world_size}; set it to rank 0's "
                "host (e.g. 127.0.0.1)"
            )
        master_port = _port(env.get("MASTER_PORT"), world_size, problems)
    if problems:
        raise RuntimeConfigError(
            "cannot join the job, the environment is inconsistent:\n  " + "\n  ".join(problems)
        )
    return ReplicaEnv(
        job=env.get("TIDEMILL_JOB") or "local",
        role=env.get("TIDEMILL_ROLE") or "worker",
        index=index,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        master_addr=master_addr,
        master_port=master_port,
        launched_by_tidemill=bool(env.get("TIDEMILL_JOB")),
    )


def _port(raw: str | None, world_size: int, problems: list[str]) -> int | None:
    if not raw:
        problems.append(
            f"MASTER_PORT is not set but WORLD_SIZE={world_size}; set it to a free TCP port "
            "on rank 0's host (e.g. 29500)"
        )
        return None
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        problems.append(f"MASTER_PORT={raw!r} is not a TCP port number (1..65535)")
        return None
    return int(raw)
