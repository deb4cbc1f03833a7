"""Submit-time checks of ``spec.checkpoint``: what can be known before the job runs.

A ``dir`` that does not parse, names a protocol fsspec cannot serve, or (on the local
engine, whose replicas share this machine's folders) cannot be written is refused with
its field path; a ``resumeFrom`` must hold a checkpoint that can be restored. What can
only be known while training (a full disk, expired credentials) becomes a Warning
event and training goes on.
"""

from __future__ import annotations

from tidemill.api.errors import FieldError, SpecError
from tidemill.api.job import TrainingJob

DIR_PATH = "spec.checkpoint.dir"
RESUME_PATH = "spec.checkpoint.resumeFrom"


def check_checkpoint(job: TrainingJob, local_folders: bool) -> None:
    """Raise :class:`SpecError` naming each checkpoint field that cannot work.

    ``local_folders``: the engine's replicas write this machine's folders (local engine).
    """
    spec = job.spec.checkpoint
    if spec is None:
        return
    from tidemill.checkpoint import parse_checkpoint_url, resumable_problem, writable_problem

    problems: list[FieldError] = []
    if spec.dir is not None:
        try:
            url = parse_checkpoint_url(spec.dir)
        except ValueError as exc:
            problems.append(FieldError(DIR_PATH, str(exc)))
        else:
            problem = writable_problem(url) if local_folders else None
            if problem is not None:
                problems.append(FieldError(DIR_PATH, problem))
    if spec.resume_from is not None:
        try:
            source = parse_checkpoint_url(spec.resume_from)
        except ValueError as exc:
            problems.append(FieldError(RESUME_PATH, str(exc)))
        else:
            problem = resumable_problem(source)
            if problem is not None:
                problems.append(FieldError(RESUME_PATH, problem))
    if problems:
        raise SpecError(problems)
