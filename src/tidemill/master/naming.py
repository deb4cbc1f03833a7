"""Replica names (``role-index``) as people read them in events and logs."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NAME = re.compile(r"^(?P<role>.+)-(?P<index>\d+)$")


def describe_replicas(names: Iterable[str]) -> str:
    """Replica names with runs of consecutive indexes folded.

    >>> describe_replicas(["worker-0", "worker-1", "worker-2", "worker-5", "chief-0"])
    'worker-0..worker-2, worker-5, chief-0'
    """
    parts: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if len(run) >= 3:
            parts.append(f"{run[0][0]}-{run[0][1]}..{run[-1][0]}-{run[-1][1]}")
        else:
            parts.extend(f"{role}-{index}" for role, index in run)
        run.clear()

    for name in names:
        match = _NAME.match(name)
        if match is None:
            flush()
            parts.append(name)
            continue
        role, index = match["role"], int(match["index"])
        if run and (run[-1][0] != role or run[-1][1] + 1 != index):
            flush()
        run.append((role, index))
    flush()
    return ", ".join(parts)


def name_key(name: str) -> tuple[bool, str, int]:
    """chief first, then by role, then by index (worker-2 before worker-10)."""
    match = _NAME.match(name)
    if match is None:
        return (True, name, 0)
    return (match["role"] != "chief", match["role"], int(match["index"]))


def role_of(name: str) -> str:
    match = _NAME.match(name)
    return match["role"] if match else name


def index_of(name: str) -> str:
    match = _NAME.match(name)
    return match["index"] if match else "0"


def epoch_message(
    epoch: int, members: list[str], joined: list[str], left: dict[str, str], start: str
) -> str:
    """The ``EpochStarted`` event's text: who trains, who joined and left (and why),
    and where the state comes from (``start``).

    >>> workers = ["worker-0", "worker-1"]
    >>> epoch_message(3, workers, ["worker-1"], {"worker-2": "lost"}, "from step 40")
    'epoch 3: 2 workers (worker-0, worker-1), joined worker-1; left worker-2 (lost); from step 40'
    """
    count = len(members)
    text = (
        f"epoch {epoch}: {count} worker{'s' if count != 1 else ''} ({describe_replicas(members)})"
    )
    if joined and len(joined) < count:
        text += f", joined {describe_replicas(joined)}"
    if left:
        text += "; left " + ", ".join(f"{name} ({why})" for name, why in sorted(left.items()))
    return f"{text}; {start}"
