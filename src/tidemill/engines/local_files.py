"""Where the local engine keeps a launch's files, named from its spec alone.

``adopt`` finds an earlier launch after a restart with nothing but the spec, so every
name comes from the job, its uid and the ``launch_id``. Under the engine's state folder:

- ``logs/<namespace>/<name>/<job uid>/<role>-<index>.log``: stdout and stderr,
  appended across restarts, one header line per attempt; a new job under an old name
  has a new uid, so a log of its own;
- ``replicas/<namespace>/<name>/<job uid>/<role>-<index>.<launch id>.{sup,pid,exit}``:
  the supervisor's pid (written before it starts anything), the command's pid and its
  exit code (see ``_supervise.py``);
- ``... .<launch id>.env``: the environment and folder the command started with
  (readable by the server's user only: it holds the job's credential), for ``tidemill
  exec``;
- ``warm/``: the fork server's socket and log.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tidemill.engines.base import LaunchSpec
from tidemill.engines.warm_start import UID_PLACEHOLDER

FILE_PART = re.compile(r"[A-Za-z0-9_.-]{1,128}")


@dataclass(frozen=True)
class LaunchFiles:
    """Where one launch keeps its files, and the uid its processes carry."""

    uid: str
    """``TIDEMILL_REPLICA_UID`` of every process of the launch"""
    supervisor_file: str
    pid_file: str
    exit_file: str
    log_file: Path

    @property
    def env_file(self) -> str:
        return replica_sibling(self.pid_file, "env")


def replica_sibling(pid_file: str, suffix: str) -> str:
    """Another file of the launch whose pid file is ``pid_file``: old handles, which
    name only the pid, exit and log files, find the newer ones by it."""
    return f"{pid_file.removesuffix('.pid')}.{suffix}"


@dataclass(frozen=True)
class ExitRecord:
    code: int
    reason: str


@dataclass(frozen=True)
class SupervisorRecord:
    """What a supervisor writes about itself before it starts anything."""

    pid: int
    warm_start: bool


def launch_files(state_dir: Path, spec: LaunchSpec) -> LaunchFiles:
    """The files of launch ``spec.launch_id``; a ``ValueError`` naming the field if an
    id cannot name a file."""
    logs, replicas = job_folders(state_dir, spec.job, spec.job_uid)
    launch_id = file_part(spec.launch_id, "launch_id")
    replica = f"{file_part(spec.role, 'role')}-{spec.index}"
    stem = replicas / f"{replica}.{launch_id}"
    return LaunchFiles(
        uid=replica_uid(state_dir, spec),
        supervisor_file=f"{stem}.sup",
        pid_file=f"{stem}.pid",
        exit_file=f"{stem}.exit",
        log_file=logs / f"{replica}.log",
    )


def job_folders(state_dir: Path, job: str, job_uid: str) -> tuple[Path, Path]:
    """The log and replica folders of one job (``namespace/name``) under ``state_dir``:
    every launch of the job keeps its files in these two."""
    namespace, name = split_job(job)
    tail = Path(namespace) / name / file_part(job_uid, "job_uid")
    return state_dir / "logs" / tail, state_dir / "replicas" / tail


def replica_uid(state_dir: Path, spec: LaunchSpec) -> str:
    """``TIDEMILL_REPLICA_UID`` of a launch: the same for every ``adopt`` of it, and
    different for every engine state folder, job and launch."""
    key = "\0".join((str(state_dir), spec.job, spec.job_uid, spec.launch_id))
    uid = hashlib.sha256(key.encode()).hexdigest()[: len(UID_PLACEHOLDER)]
    return uid if uid != UID_PLACEHOLDER else "1" + uid[1:]


def file_part(value: str, field: str) -> str:
    """``value``, checked to be usable as (part of) a file name.

    >>> file_part("../x", "launch_id")
    Traceback (most recent call last):
    ...
    ValueError: launch_id: '../x' cannot name a file; use 1 to 128 letters, digits, '.', '_' or '-'
    """
    if not FILE_PART.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{field}: {value!r} cannot name a file; use 1 to 128 letters, digits, '.', '_' or '-'"
        )
    return value


def split_job(job: str) -> tuple[str, str]:
    parts = job.split("/")
    if len(parts) != 2 or any(p in ("", ".", "..") or os.sep in p for p in parts):
        raise ValueError(f"job must be 'namespace/name', got {job!r}")
    return parts[0], parts[1]


def read_supervisor(path: str) -> SupervisorRecord | None:
    """The supervisor's record; None before it wrote one."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return SupervisorRecord(int(record["supervisor_pid"]), record["warm_start"] is True)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_exit(path: str) -> ExitRecord | None:
    """The exit code and reason the supervisor wrote; None while the command runs."""
    try:
        first, _, rest = Path(path).read_text(encoding="utf-8").partition("\n")
        return ExitRecord(int(first), rest.strip())
    except (OSError, ValueError):
        return None
