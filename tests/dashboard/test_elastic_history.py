"""The elastic history's reading of a job's events, run in the browser on the module the
page uses: each change of the group's size with the event that caused it."""

from __future__ import annotations

from typing import Any

import pytest

from tidemill.server.runner import ServerRunner


def event(reason: str, message: str, time: float, type: str = "Normal") -> dict[str, Any]:
    return {
        "id": int(time),
        "time": time,
        "job": "ads/ctr",
        "type": type,
        "reason": reason,
        "message": message,
        "replica": None,
    }


CASES = {
    "the first epoch is the start, then idle capacity scales it out": (
        [
            event("Scheduled", "placed 2 replica(s) on n1", 1),
            event("EpochStarted", "epoch 1: 2 workers (worker-0, worker-1); from step 0", 2),
            event("ScaledOut", "worker 2→4: added worker-2, worker-3 (idle capacity)", 3),
            event("EpochStarted", "epoch 2: 4 workers (worker-0-3), joined worker-2, worker-3", 4),
        ],
        [(0, 2, "Started"), (2, 4, "ScaledOut")],
    ),
    "a reclaim shrinks it and a lost replica shrinks it again": (
        [
            event("EpochStarted", "epoch 1: 4 workers (worker-0-3); from step 0", 1),
            event("Reclaimed", "queue research takes back its guarantee: 1 cpu", 2, "Warning"),
            event("EpochStarted", "epoch 2: 3 workers (worker-0-2); left worker-3 (left)", 3),
            event("ReplicaLost", "worker-2 was lost", 4, "Warning"),
            event("EpochStarted", "epoch 3: 1 worker (worker-0); left worker-2 (lost)", 5),
        ],
        [(0, 4, "Started"), (4, 3, "Reclaimed"), (3, 1, "ReplicaLost")],
    ),
    "a late replica joins without a controller event": (
        [
            event("EpochStarted", "epoch 1: 1 worker (worker-0); from step 0", 1),
            event("EpochStarted", "epoch 2: 2 workers (worker-0, worker-1), joined worker-1", 2),
        ],
        [(0, 1, "Started"), (1, 2, "Joined")],
    ),
    "preemption takes the whole group, and it forms again when placed": (
        [
            event("EpochStarted", "epoch 1: 2 workers (worker-0, worker-1); from step 0", 1),
            event("Preempted", "preempted by ads/urgent (priority 100)", 2, "Warning"),
            event("Scheduled", "placed 2 replica(s) on n1", 3),
            event("EpochStarted", "epoch 2: 2 workers (worker-0, worker-1); from step 40", 4),
        ],
        [(0, 2, "Started"), (2, 0, "Preempted"), (0, 2, "Scheduled")],
    ),
    "a lost shard with no room left requeues the whole job, which forms again when placed": (
        [
            event("EpochStarted", "epoch 1: 2 workers (worker-0, worker-1); from step 0", 1),
            event("ReplicaLost", "ps-1 was lost with its node n2; it is placed again", 2),
            event("Requeued", "ps-1 lost with its node and no node has room for it now", 3),
            event("Scheduled", "placed 4 replica(s) on n1, n3", 4),
            event("EpochStarted", "epoch 2: 2 workers (worker-0, worker-1); from step 40", 5),
        ],
        [(0, 2, "Started"), (2, 0, "Requeued"), (0, 2, "Scheduled")],
    ),
}


@pytest.mark.parametrize("events, changes", CASES.values(), ids=CASES.keys())
def test_size_changes_name_their_cause(
    page: Any, start_server: Any, events: list[dict[str, Any]], changes: list[tuple[int, int, str]]
) -> None:
    server: ServerRunner = start_server()
    page.goto(f"{server.url}/static/index.html#/cluster")
    found = page.evaluate(
        "async (events) => (await import('/static/elastic.js')).sizeChanges(events)", events
    )
    assert [(c["from"], c["size"], c["reason"]) for c in found] == changes
