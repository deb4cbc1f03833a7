"""Groups replicas whose main threads stand in the same place, and names that place.

Two replicas are in one group when their main threads' frames (function, file, line)
are equal; other threads (heartbeats, loaders) are shown per replica but do not split
groups, since they move on their own. A group is summarised by its innermost frame
outside the Python standard library: ``time.sleep`` or ``selectors.select`` says less
than the caller that waits in it.
"""

from __future__ import annotations

import sysconfig
from collections.abc import Iterable

from tidemill.api.debug import FrameView, ReplicaStacks, StackGroup
from tidemill.engines.replica_env import COLLECTIVE_ROLES

_STDLIB = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib")})


def group_stacks(replicas: list[ReplicaStacks]) -> list[StackGroup]:
    """Groups of ``replicas``, largest first; replicas without stacks are grouped by
    their problem, after those with stacks."""
    members: dict[tuple[object, ...], list[ReplicaStacks]] = {}
    for replica in replicas:
        members.setdefault(_key(replica), []).append(replica)
    groups = [_group(found) for found in members.values()]
    return sorted(groups, key=lambda g: (not g.frames, -len(g.replicas)))


def ranges(numbers: Iterable[int]) -> str:
    """``0-6,8`` for 0, 1, ..., 6, 8.

    >>> ranges([3, 0, 1, 2, 8])
    '0-3,8'
    """
    spans: list[list[int]] = []
    for number in sorted(set(numbers)):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def label(replicas: list[ReplicaStacks]) -> str:
    """``worker 0-6 (ranks 0-6), chief 0 (rank 0)`` style names of a group's members."""
    by_role: dict[str, list[ReplicaStacks]] = {}
    for replica in replicas:
        by_role.setdefault(replica.role, []).append(replica)
    parts = []
    for role, found in by_role.items():
        part = f"{role} {ranges(r.index for r in found)}"
        ranks = [r.rank for r in found if r.rank is not None]
        if role in COLLECTIVE_ROLES and len(ranks) == len(found):
            part += f" ({'ranks' if len(ranks) > 1 else 'rank'} {ranges(ranks)})"
        parts.append(part)
    return ", ".join(parts)


def where(frames: list[FrameView]) -> str:
    """``in read_batch() at train.py:14``: the innermost frame of interest."""
    if not frames:
        return "no Python frame"
    chosen = next((f for f in frames if not f.file.startswith(_STDLIB)), frames[0])
    return f"in {chosen.function}() at {chosen.file.rsplit('/', 1)[-1]}:{chosen.line}"


def _main_frames(replica: ReplicaStacks) -> list[FrameView]:
    main = next((t for t in replica.threads if t.main), None)
    return [] if main is None else main.frames


def _key(replica: ReplicaStacks) -> tuple[object, ...]:
    if replica.problem:
        return ("problem", replica.problem)
    return ("frames", *((f.function, f.file, f.line) for f in _main_frames(replica)))


def _group(replicas: list[ReplicaStacks]) -> StackGroup:
    first = replicas[0]
    frames = [] if first.problem else _main_frames(first)
    return StackGroup(
        replicas=[r.replica for r in replicas],
        label=label(replicas),
        summary=first.problem or where(frames),
        frames=frames,
    )
