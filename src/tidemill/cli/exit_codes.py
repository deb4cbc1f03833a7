"""The ``tidemill`` command's exit codes, in a module that imports nothing, so the
console script can use them before the commands' own modules have loaded."""

EXIT_FAILURE = 1
"""A command failed: the job failed, or the server refused the request or could not
be reached."""
EXIT_INVALID = 2
"""The input is invalid (a job file, an option); nothing was started."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT), after what the command started was stopped."""
