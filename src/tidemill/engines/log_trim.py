"""Replica logs on the server's disk stay within a size, as kubelet keeps container logs.

A replica writes straight into its log file (its stdout and stderr are the file, opened
to append), so a job that prints in a loop would fill the disk that holds the control
plane's store, and every tenant's writes would fail until an operator deleted the file.
The engine looks at each running replica's log whenever it observes the replica: past
``max_bytes`` the last ``kept_bytes`` are copied to ``<log>.1`` (replacing an older
copy) and the file is emptied (logrotate's ``copytruncate``: the writers append, so
they go on at its new end). A line the replica writes between the copy and the
truncation is lost; the note that starts the emptied file says what went where, and
the server's log streams, which read the file by offset, start again at its beginning.
The Kubernetes engine trims its mirrors of pod logs (``STATE_DIR/pod-logs/``) the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

LOG_MAX_BYTES = 1 << 30
"""How large a replica's log may grow before it is trimmed (a long run's log of a few
hundred MiB is whole; a loop that prints without end is not)."""
LOG_KEPT_BYTES = 64 << 20
"""How much of its end a trim keeps, in ``<log>.1``."""


def older_log(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def trim_log(log: Path, max_bytes: int = LOG_MAX_BYTES, kept_bytes: int = LOG_KEPT_BYTES) -> int:
    """Trim ``log`` when it passed ``max_bytes`` (see the module); the bytes dropped, 0
    when it was small enough or could not be read."""
    try:
        size = log.stat().st_size
        if size <= max_bytes:
            return 0
        older = older_log(log)
        partial = older.with_name(older.name + ".tmp")
        with log.open("rb") as source, partial.open("wb") as copy:
            source.seek(max(0, size - kept_bytes))
            kept = _whole_lines(source.read(kept_bytes), cut=size > kept_bytes)
            copy.write(kept)
        os.replace(partial, older)
        os.truncate(log, 0)
        dropped = size - len(kept)
        note = (
            f"[tidemill: this log passed {max_bytes} bytes; its last {len(kept)} "
            f"bytes are in {older.name}, the {dropped} before them were dropped]\n"
        )
        with log.open("ab") as appended:
            appended.write(note.encode())
    except OSError:
        return 0
    return dropped


def _whole_lines(tail: bytes, cut: bool) -> bytes:
    """``tail`` from its first whole line when it was ``cut`` from a longer log (a tail
    without a line break is kept whole)."""
    if not cut:
        return tail
    start = tail.find(b"\n") + 1
    return tail[start:] if 0 < start < len(tail) else tail


__all__ = ["LOG_KEPT_BYTES", "LOG_MAX_BYTES", "older_log", "trim_log"]
