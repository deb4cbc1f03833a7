"""The one error the simulator raises for bad input: which file, which line, what is wrong."""

from __future__ import annotations


class SimInputError(ValueError):
    """A trace or cluster file the simulator cannot use.

    ``line`` is the file's line number (the header is line 1), or None when the whole
    file is at fault (unreadable, empty).
    """

    def __init__(self, source: str, line: int | None, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {message}")
