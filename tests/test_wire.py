"""The worker → master messages: typed on both sides, refused with the field's name."""

from __future__ import annotations

import doctest

import pytest

import tidemill.wire
from tidemill.wire import (
    Commit,
    DataErrorReport,
    Done,
    Formed,
    Heartbeat,
    Insight,
    Lease,
    Leave,
    ProtocolError,
    Register,
    Sync,
    WorkerMessage,
    decode,
    encode,
    parse_worker,
)

EVERY_KIND: list[WorkerMessage] = [
    Register("worker-0", 41, "ready", epoch=3, step=20, data={"tidemill.data": {"stage": 0}}),
    Heartbeat(),
    Sync(3, None, failed=True, data={"offset": 1}),
    Formed(4),
    Commit(4, 30, data={"offset": 2}, extras={"epoch": 1}),
    Leave(),
    Done(40),
    Lease(4, 0, 2, source="clicks", view={"stage": 0}, id=9),
    Insight(0, {"clicks": {"rows": 5}}),
    DataErrorReport("SourceNotFound", "clicks: no such table"),
]


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(tidemill.wire)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: m.op)
def test_every_worker_message_survives_the_wire_unchanged(message: WorkerMessage) -> None:
    assert parse_worker(decode(encode(message))) == message


def test_a_lease_carries_its_pass_under_the_wire_name() -> None:
    assert b'"pass":2' in encode(Lease(4, 0, 2))


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"op": "formed"}', "malformed 'formed' message: 'epoch' is missing"),
        (b'{"op": "commit", "epoch": "x", "step": 1}', "malformed 'commit' message: 'epoch'"),
        (b'{"op": "sync", "epoch": true}', "malformed 'sync' message: 'epoch'"),
        (b'{"op": "insight", "stage": 0, "sources": []}', "'sources': expected an object"),
        (b'{"op": "launch"}', "unknown op 'launch'"),
    ],
)
def test_a_malformed_message_is_refused_naming_the_field(line: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_worker(decode(line))
