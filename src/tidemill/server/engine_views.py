"""What the HTTP layer asks of the engine: its health, a replica's log file, stacks, exec.

Engines that keep no log file per replica (Kubernetes) offer ``log_file(handle)``, a file
they keep current from their own log API when asked; engines that cannot be reached
(the Kubernetes API server) offer ``problem()`` for ``/healthz``. Engines that can
read a replica's Python stacks offer ``stacks(handle)``, and those that can run a
command beside it ``exec_command(handle, argv)``.
"""

from __future__ import annotations

from tidemill.api.errors import ConflictError
from tidemill.controller.rows import handle_of
from tidemill.engines.base import Engine
from tidemill.engines.replica_exec import ReplicaCommand
from tidemill.engines.stacks import StackDump, engine_stacks
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


def replica_stacks(engine: Engine, replica: ReplicaRow) -> StackDump:
    """The replica's Python stacks, or why there are none."""
    handle = handle_of(replica.handle)
    if handle is None:
        return StackDump(problem="no stacks: the replica has no process yet")
    return engine_stacks(engine, handle)


def replica_exec(engine: Engine, replica: ReplicaRow, argv: list[str]) -> ReplicaCommand:
    """Start ``argv`` in the replica's environment; ConflictError when this cannot be."""
    start = getattr(engine, "exec_command", None)
    handle = handle_of(replica.handle)
    if start is None:
        raise ConflictError(f"the {engine.name} engine cannot run commands in replicas")
    if handle is None:
        raise ConflictError(f"replica {replica.replica_name} has no process yet")
    command: ReplicaCommand = start(handle, argv)
    return command
