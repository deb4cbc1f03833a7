"""The stacks of a replica that hung, kept before the controller kills it.

A worker the job master gave up on (no heartbeat: native code holding the GIL, a
deadlock) is killed, and its restart policy replaces it; without its stacks nobody
learns where it hung. So before the SIGKILL its threads are
read (py-spy, else its own faulthandler dump: see :mod:`tidemill.engines.stacks`) and
put at the end of its log, where ``tidemill logs`` shows them, and in the server's log.
This runs on a thread of its own: py-spy may take seconds, and the controller loop
does not wait for it.
"""

from __future__ import annotations

import logging
import threading

from tidemill.engines.base import Engine, ReplicaHandle
from tidemill.engines.stacks import StackDump, engine_stacks

log = logging.getLogger(__name__)

SERVER_LOG_LIMIT = 64 << 10
"""Characters of a dump the server's log takes (a replica's threads are its own doing;
the server's log is shared)."""


def kill_with_stacks(engine: Engine, name: str, handle: ReplicaHandle) -> threading.Thread:
    """Read the stacks of replica ``name`` into its log, then SIGKILL it (in the background)."""
    thread = threading.Thread(
        target=_stacks_then_kill, args=(engine, name, handle), name=f"stacks-{name}", daemon=True
    )
    thread.start()
    return thread


def _stacks_then_kill(engine: Engine, name: str, handle: ReplicaHandle) -> None:
    try:
        dump = _keep_stacks(engine, name, handle)
        text = dump.text or dump.problem
        if len(text) > SERVER_LOG_LIMIT:
            text = text[:SERVER_LOG_LIMIT] + f"\n(cut at {SERVER_LOG_LIMIT} characters)"
        log.warning(
            "%s hung; its stacks before the kill (%s):\n%s", name, dump.source or "none", text
        )
    except Exception:
        log.exception("reading the stacks of %s before its kill failed", name)
    finally:
        try:
            engine.kill(handle)
        except Exception:
            log.exception("killing %s failed; the next cycle observes it", name)


def _keep_stacks(engine: Engine, name: str, handle: ReplicaHandle) -> StackDump:
    """The replica's stacks, also appended to its log (a faulthandler dump writes itself
    there; py-spy's is written after the heading)."""
    log_file = engine.log_path(handle)
    if log_file is not None:
        _append(log_file, f"===== tidemill: {name} hung; its stacks before the kill =====\n")
    dump = engine_stacks(engine, handle)
    if log_file is not None and dump.source != "faulthandler":
        _append(log_file, (dump.text or dump.problem).rstrip("\n") + "\n")
    return dump


def _append(path: str, text: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(text)
