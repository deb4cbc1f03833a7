"""``tidemill run --state-dir DIR``: a job the state already holds is resumed, not refused.

A ``run`` killed outright (``kill -9``, the OOM killer, a reboot) leaves its job
unfinished in its state folder, its replicas stopped by their tether (see
:class:`tidemill.engines.local.LocalEngine`). Running the same job file on the same
folder again takes that job over: the embedded server starts its replicas again
(uncharged), and they restore the job's newest checkpoint. A job of that name that has
ended or was submitted with another spec is refused, naming why, before the server
starts (so a refused run starts nothing); one still being deleted is let go first.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidemill.api.job import TrainingJob
from tidemill.api.status import JobPhase
from tidemill.store.store import Store

SHOWN_DIFFERENCES = 8


class CannotResume(Exception):
    """The state holds a job of this name that this file cannot take over."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.differences = differences or []

    def lines(self) -> list[str]:
        """The differing fields, as lines under the message."""
        shown = self.differences[:SHOWN_DIFFERENCES]
        more = len(self.differences) - len(shown)
        return [f"  {path}" for path in shown] + ([f"  ... and {more} more"] if more else [])


class Takeover(Enum):
    """What ``run`` does with the job file, given the state it runs on."""

    SUBMIT = "submit"
    """no job of its name: submit it"""
    RESUME = "resume"
    """the same job, unfinished: follow it (the server starts its replicas again)"""
    SUBMIT_AFTER_DELETION = "submit after deletion"
    """a job of its name is being deleted (an earlier run stopped before its processes
    were gone): the server finishes that first, then the file is submitted"""


def takeover(store: Store, job: TrainingJob, state_dir: Path) -> Takeover:
    """What to do with ``job`` on the state ``store`` holds; raises
    :class:`CannotResume` when the state holds a job of its name this file cannot take."""
    namespace, name = job.metadata.namespace, job.metadata.name
    with store.transaction() as tx:
        row = tx.job(namespace, name)
        if row is None:
            return Takeover.SUBMIT
        if row.deleted_at is not None:
            return Takeover.SUBMIT_AFTER_DELETION
        phase, stored = JobPhase(row.phase), dict(row.spec)
    key = f"{namespace}/{name}"
    again = "give another --state-dir or metadata.name to run it again"
    if phase.is_terminal:
        raise CannotResume(
            f"job {key} in {state_dir} has already ended ({phase}); `tidemill run` "
            f"resumes only an unfinished job: {again}"
        )
    try:
        held = TrainingJob.model_validate(stored).to_document()
    except ValidationError as exc:  # stored by a tidemill that accepted other fields
        raise CannotResume(
            f"job {key} in {state_dir} is unfinished ({phase}) but its stored spec is no "
            f"longer valid ({exc.error_count()} problem(s)), so it cannot be resumed: {again}"
        ) from None
    differences = differing_paths(held, job.to_document())
    if differences:
        raise CannotResume(
            f"job {key} in {state_dir} is unfinished ({phase}) but was submitted with "
            f"another spec, so this file cannot resume it: run the file it was submitted "
            f"from to resume it, or {again}. It differs in:",
            differences,
        )
    return Takeover.RESUME


def differing_paths(stored: Any, wanted: Any, path: str = "") -> list[str]:
    """Where two job documents differ, as dotted paths (``spec.roles.worker.args``).

    >>> differing_paths({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1]}, "d": 0})
    ['a.b', 'd']
    """
    if isinstance(stored, dict) and isinstance(wanted, dict):
        found: list[str] = []
        for key in sorted({*stored, *wanted}, key=str):
            inner = f"{path}.{key}" if path else str(key)
            found += differing_paths(stored.get(key), wanted.get(key), inner)
        return found
    return [] if stored == wanted else [path or "(the whole document)"]
