"""The master's settings, read from the environment the controller launches it with.

Set by the controller: ``TIDEMILL_JOB`` (``namespace/name``), ``TIDEMILL_MASTER_PORT``
(the same port after every restart, so workers reconnect to it), ``TIDEMILL_SERVER``
(the control plane; absent in tests), ``TIDEMILL_ELASTIC_MIN``/``_MAX`` (bounds of the
worker collective), ``TIDEMILL_DATA`` (the job's ``spec.data``, as JSON),
``TIDEMILL_CHECKPOINT`` (where its checkpoints go, see ``api/checkpoint.py``),
``TIDEMILL_PS_ADDRS`` (the job's PS replicas, whose STATS it polls every
``TIDEMILL_PS_STATS_INTERVAL_S``, default 2), ``TIDEMILL_TENSORBOARD_DIR`` (where it
writes the job's TensorBoard event files) and, for tests,
``TIDEMILL_MASTER_STATE_FILE`` (persist to a file instead of the control plane).
Engines whose replicas have their own address (Kubernetes pods) also set
``TIDEMILL_MASTER_HOST`` (the name workers reach it by; default 127.0.0.1) and
``TIDEMILL_MASTER_BIND`` (the address to listen on; default the host).
Deadlines have defaults and may be tuned per job:
``TIDEMILL_ELASTIC_TIMEOUT_S``, ``TIDEMILL_ELASTIC_SETTLE_S``,
``TIDEMILL_ELASTIC_REGISTER_TIMEOUT_S``, ``TIDEMILL_ELASTIC_RECONNECT_TIMEOUT_S``,
``TIDEMILL_ELASTIC_HEARTBEAT_TIMEOUT_S``, ``TIDEMILL_ELASTIC_SILENT_TIMEOUT_S``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from tidemill.api.checkpoint import CheckpointPlan
from tidemill.api.data import DataSpec
from tidemill.api.metrics import TENSORBOARD_VAR
from tidemill.api.ps import PS_ADDRS_VAR
from tidemill.master.group import Rules
from tidemill.peer_proof import job_proof


class MasterConfigError(ValueError):
    """The master's environment is incomplete or inconsistent; the message names each variable."""


@dataclass(frozen=True)
class MasterConfig:
    job: str
    port: int
    rules: Rules
    host: str = "127.0.0.1"
    """the address workers reach this master and its c10d store by"""
    bind_host: str = "127.0.0.1"
    """the address it listens on (``0.0.0.0`` in a pod, whose address is its own)"""
    server: str | None = None
    state_file: str | None = None
    heartbeat_timeout_s: float = 15.0
    silent_timeout_s: float = 10.0
    """How long a new connection may stay silent before its ``register`` (a worker
    sends it at once): one that stays silent longer is closed."""
    tick_s: float = 0.1
    data: DataSpec | None = None
    """The job's ``spec.data`` (``TIDEMILL_DATA``): the master dispatches its shards."""
    checkpoint: CheckpointPlan | None = None
    """The job's checkpoints (``TIDEMILL_CHECKPOINT``): Kafka offsets follow them."""
    ps_addresses: tuple[tuple[str, int], ...] = ()
    """The job's PS replicas (``TIDEMILL_PS_ADDRS``): the master polls their STATS."""
    ps_stats_interval_s: float = 2.0
    tensorboard_dir: str | None = None
    """The job's ``spec.tensorboard.dir``: its metrics go there as event files."""
    metrics_flush_s: float = 2.0
    """How often the workers' metrics go on to the control plane."""
    peer_proof: str | None = None
    """What replicas must send to connect (``TIDEMILL_TOKEN`` proven, see
    :mod:`tidemill.peer_proof`); None: the job has no credential, anyone may."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> MasterConfig:
        """Every problem at once, each naming its variable and the value seen.

        >>> config = MasterConfig.from_env({"TIDEMILL_JOB": "ads/ctr",
        ...     "TIDEMILL_MASTER_PORT": "29400", "TIDEMILL_ELASTIC_MIN": "2",
        ...     "TIDEMILL_ELASTIC_MAX": "8"})
        >>> config.port, config.rules.min_workers, config.rules.max_workers
        (29400, 2, 8)
        """
        problems: list[str] = []

        def number(name: str, default: float, minimum: float) -> float:
            raw = env.get(name, "")
            if raw == "":
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a number")
                return default
            if value < minimum:
                problems.append(f"{name}={raw} must be at least {minimum:g}")
                return default
            return value

        job = env.get("TIDEMILL_JOB", "")
        if job.count("/") != 1 or job.startswith("/") or job.endswith("/"):
            problems.append(f"TIDEMILL_JOB={job!r} must be namespace/name (e.g. ads/ctr)")
        raw_port = env.get("TIDEMILL_MASTER_PORT", "")
        port = int(raw_port) if raw_port.isdigit() else 0
        if not 0 < port < 65536:
            problems.append(
                f"TIDEMILL_MASTER_PORT={raw_port!r} must be a TCP port (1..65535); the "
                "controller picks one per job and reuses it after a restart"
            )
        low = int(number("TIDEMILL_ELASTIC_MIN", 1, 1))
        high = int(number("TIDEMILL_ELASTIC_MAX", max(low, 1), 1))
        if high < low:
            problems.append(
                f"TIDEMILL_ELASTIC_MAX={high} must be at least TIDEMILL_ELASTIC_MIN={low}"
            )
        try:
            checkpoint = CheckpointPlan.from_env(env)
        except ValueError as exc:
            problems.append(str(exc))
            checkpoint = None
        rules = Rules(
            min_workers=low,
            max_workers=max(low, high),
            settle_s=number("TIDEMILL_ELASTIC_SETTLE_S", 0.3, 0),
            timeout_s=number("TIDEMILL_ELASTIC_TIMEOUT_S", 60.0, 0.1),
            register_timeout_s=number("TIDEMILL_ELASTIC_REGISTER_TIMEOUT_S", 30.0, 0.1),
            reconnect_timeout_s=number("TIDEMILL_ELASTIC_RECONNECT_TIMEOUT_S", 15.0, 0.1),
            restores_checkpoints=checkpoint is not None,
        )
        heartbeat = number("TIDEMILL_ELASTIC_HEARTBEAT_TIMEOUT_S", 15.0, 0.5)
        silent = number("TIDEMILL_ELASTIC_SILENT_TIMEOUT_S", 10.0, 0.1)
        data = None
        if env.get("TIDEMILL_DATA"):
            try:
                data = DataSpec.model_validate_json(env["TIDEMILL_DATA"])
            except ValidationError as exc:
                problems.append(f"TIDEMILL_DATA is not a valid spec.data: {exc}")
        ps_addresses = _addresses(env.get(PS_ADDRS_VAR, ""), problems)
        ps_interval = number("TIDEMILL_PS_STATS_INTERVAL_S", 2.0, 0.05)
        if problems:
            raise MasterConfigError("cannot start the job master:\n  " + "\n  ".join(problems))
        host = env.get("TIDEMILL_MASTER_HOST") or "127.0.0.1"
        return cls(
            job=job,
            port=port,
            rules=rules,
            host=host,
            bind_host=env.get("TIDEMILL_MASTER_BIND") or host,
            server=env.get("TIDEMILL_SERVER") or None,
            state_file=env.get("TIDEMILL_MASTER_STATE_FILE") or None,
            heartbeat_timeout_s=heartbeat,
            silent_timeout_s=silent,
            data=data,
            checkpoint=checkpoint,
            ps_addresses=ps_addresses,
            ps_stats_interval_s=ps_interval,
            tensorboard_dir=env.get(TENSORBOARD_VAR) or None,
            peer_proof=job_proof(env),
        )


def _addresses(text: str, problems: list[str]) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` as pairs; each malformed entry becomes a problem."""
    found: list[tuple[str, int]] = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"{PS_ADDRS_VAR}: {entry!r} is not host:port (e.g. 10.0.0.5:7000)")
            continue
        found.append((host.strip("[]"), int(port)))
    return tuple(found)
