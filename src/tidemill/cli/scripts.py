"""Warn about a job whose command runs a relative script that is not where it will run.

A replica starts in its role's ``workingDir`` (relative to the job file; the job file's
folder by default), so ``command: [python, train.py]`` next to a job file in another
folder fails only once the job runs. ``tidemill validate`` and ``tidemill run`` say so
beforehand. A warning, not an error: the file may be created before the job starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path, PurePath

from tidemill.api.job import TrainingJob

INTERPRETER = re.compile(r"^(python[0-9.]*|bash|sh|zsh|dash|perl|ruby|node|Rscript)$")
"""Programs whose first argument that is not an option is the script they run."""
OPTIONS_WITH_VALUE = frozenset({"-X", "-W", "-Q", "--check-hash-based-pycs"})
"""Interpreter options that take the next argument as their value."""
INLINE_CODE = ("-c", "-m", "-e", "--command", "--eval")
"""Options after which the code is in the argument list, not in a file."""


def script_of(argv: Sequence[str]) -> str | None:
    """The file ``argv`` runs, if it names one: ``python -u train.py`` gives ``train.py``.

    >>> script_of(["python", "-m", "pkg.main"]) is None
    True
    >>> script_of(["./bin/train.sh", "--fast"])
    './bin/train.sh'
    """
    if not argv:
        return None
    program = argv[0]
    if not INTERPRETER.match(PurePath(program).name):
        return program if "/" in program else None
    skip_next = False
    for arg in argv[1:]:
        if skip_next:
            skip_next = False
        elif arg.startswith(INLINE_CODE):
            return None
        elif arg in OPTIONS_WITH_VALUE:
            skip_next = True
        elif not arg.startswith("-"):
            return arg
    return None


def missing_scripts(job: TrainingJob) -> list[str]:
    """One ``spec.roles.ROLE.command: ...`` line per role whose relative script is missing.

    ``job`` comes from :func:`tidemill.api.loader.load_job_file`, which has resolved
    every ``workingDir`` to an absolute folder.
    """
    warnings = []
    for name, role in job.spec.roles.items():
        script = script_of([*role.command, *role.args])
        if script is None or PurePath(script).is_absolute():
            continue
        folder = Path(role.working_dir or ".")
        if not (folder / script).exists():
            warnings.append(
                f"spec.roles.{name}.command: runs {script}, which does not exist in {folder} "
                "(replicas start in workingDir, which is relative to the job file; "
                "the job file's folder by default)"
            )
    return warnings


__all__ = ["missing_scripts", "script_of"]
