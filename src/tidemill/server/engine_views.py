"""What the HTTP layer asks of the engine: its health, and a replica's log file.

Engines that keep no log file per replica (Kubernetes) offer ``log_file(handle)``, a file
they keep current from their own log API when asked; engines that cannot be reached
(the Kubernetes API server) offer ``problem()`` for ``/healthz``.
"""

from __future__ import annotations

from tidemill.controller.rows import handle_of
from tidemill.engines.base import Engine
from tidemill.store.tables import ReplicaRow


def engine_problem(engine: Engine) -> str | None:
    """Why the engine cannot do its work now, or None."""
    probe = getattr(engine, "problem", None)
    return None if probe is None else probe()


def replica_log(engine: Engine, replica: ReplicaRow) -> str | None:
    """The file holding the replica's output, if there is one."""
    if replica.log_path:
        return str(replica.log_path)
    log_file = getattr(engine, "log_file", None)
    handle = handle_of(replica.handle)
    if log_file is None or handle is None:
        return None
    path: str = log_file(handle)
    return path
