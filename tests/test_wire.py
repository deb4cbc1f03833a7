"""The wire protocol, both ways: typed on both sides, refused with the field's name."""

from __future__ import annotations

import dataclasses
import doctest
import json
from typing import Any

import pytest

import tidemill.wire
from tidemill.wire import (
    Abort,
    Change,
    Commit,
    DataErrorReport,
    Done,
    Epoch,
    Evicted,
    Finished,
    Formed,
    Heartbeat,
    Insight,
    Lease,
    Leased,
    Leave,
    MasterMessage,
    ProtocolError,
    Refused,
    Register,
    Registered,
    Sync,
    WorkerMessage,
    decode,
    encode,
    parse_master,
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

GRANT = {
    "shard": {"id": "clicks/0", "path": "s3://b/part-0.parquet"},
    "cursor": None,
    "stale": False,
    "index": 0,
    "total": 4,
}
EPOCH = Epoch(
    epoch=5,
    rank=1,
    world_size=2,
    members=("worker-0", "worker-1"),
    store_host="10.0.0.7",
    store_port=29500,
    prefix="epoch/5",
    source_rank=0,
    step=120,
    timeout_s=60.0,
)
EVERY_MASTER_KIND: list[MasterMessage] = [
    Registered("worker-1"),
    Refused("worker-1 registered twice"),
    Change(4),
    Abort(4),
    EPOCH,
    dataclasses.replace(EPOCH, restore=True),
    Evicted("worker-1 did not form the process group"),
    Finished(300),
    Leased(9, grant=GRANT),
    Leased(9, error="no such table", reason="DataSourceNotFound", source="clicks"),
    Leased(9, error="this job has no spec.data"),
]


def test_the_docstring_examples_run() -> None:
    result = doctest.testmod(tidemill.wire)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: m.op)
def test_every_worker_message_survives_the_wire_unchanged(message: WorkerMessage) -> None:
    assert parse_worker(decode(encode(message))) == message


@pytest.mark.parametrize("message", EVERY_MASTER_KIND, ids=lambda m: m.op)
def test_every_master_message_survives_the_wire_unchanged(message: MasterMessage) -> None:
    assert parse_master(decode(encode(message))) == message


def test_a_lease_carries_its_pass_under_the_wire_name() -> None:
    assert b'"pass":2' in encode(Lease(4, 0, 2))


@pytest.mark.parametrize(
    ("message", "wire"),
    [
        (Leased(9, grant=GRANT), {"op": "leased", "id": 9, **GRANT}),
        (
            Leased(9, error="gone", reason="DataSourceNotFound", source="clicks"),
            {
                "op": "leased",
                "id": 9,
                "error": "gone",
                "reason": "DataSourceNotFound",
                "source": "clicks",
            },
        ),
        (Leased(9, error="no spec.data"), {"op": "leased", "id": 9, "error": "no spec.data"}),
        (
            EPOCH,
            {
                "op": "epoch",
                "epoch": 5,
                "rank": 1,
                "world_size": 2,
                "members": ["worker-0", "worker-1"],
                "store_host": "10.0.0.7",
                "store_port": 29500,
                "prefix": "epoch/5",
                "source_rank": 0,
                "step": 120,
                "timeout_s": 60.0,
                "restore": False,
            },
        ),
        (Registered("worker-1"), {"op": "registered", "replica": "worker-1"}),
        (Abort(4), {"op": "abort", "epoch": 4}),
    ],
    ids=["grant", "data-error", "no-data", "epoch", "registered", "abort"],
)
def test_master_messages_keep_the_json_the_workers_always_read(
    message: MasterMessage, wire: dict[str, Any]
) -> None:
    assert json.loads(encode(message)) == wire


def test_a_lease_reply_carries_a_grant_or_an_error_never_both_or_neither() -> None:
    with pytest.raises(ValueError, match="a grant or an error"):
        Leased(9)
    with pytest.raises(ValueError, match="a grant or an error"):
        Leased(9, grant=GRANT, error="gone")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"op": "formed"}', "malformed 'formed' message: 'epoch' is missing"),
        (b'{"op": "commit", "epoch": "x", "step": 1}', "malformed 'commit' message: 'epoch'"),
        (b'{"op": "sync", "epoch": true}', "malformed 'sync' message: 'epoch'"),
        (b'{"op": "sync", "epoch": 2, "failed": "no"}', "malformed 'sync' message: 'failed'"),
        (b'{"op": "register", "replica": 7, "pid": 1, "status": "new"}', "'replica'"),
        (b'{"op": "insight", "stage": 0, "sources": []}', "'sources': expected an object"),
        (b'{"op": "launch"}', "unknown op 'launch'"),
        (b'{"op": "registered"}', "unknown op 'registered'"),
    ],
)
def test_a_malformed_worker_message_is_refused_naming_the_field(line: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_worker(decode(line))


def _epoch(**changes: Any) -> bytes:
    wire = {**json.loads(encode(EPOCH)), **changes}
    return json.dumps({k: v for k, v in wire.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b'{"op": "registered"}', "malformed 'registered' message: 'replica' is missing"),
        (b'{"op": "refused", "message": 3}', "malformed 'refused' message: 'message': expected"),
        (b'{"op": "abort", "epoch": "4"}', "malformed 'abort' message: 'epoch': expected an int"),
        (b'{"op": "change", "epoch": 4.5}', "malformed 'change' message: 'epoch'"),
        (b'{"op": "finished", "step": false}', "malformed 'finished' message: 'step'"),
        (b'{"op": "evicted"}', "malformed 'evicted' message: 'message' is missing"),
        (_epoch(rank=None), "malformed 'epoch' message: 'rank' is missing"),
        (_epoch(members="worker-0"), "malformed 'epoch' message: 'members': expected a list"),
        (_epoch(members=["worker-0", 1]), "malformed 'epoch' message: 'members'"),
        (_epoch(timeout_s="60"), "malformed 'epoch' message: 'timeout_s': expected a number"),
        (_epoch(store_host=None), "malformed 'epoch' message: 'store_host' is missing"),
        (_epoch(restore="yes"), "malformed 'epoch' message: 'restore': expected true or false"),
        (b'{"op": "leased", "shard": null}', "malformed 'leased' message: 'id' is missing"),
        (b'{"op": "leased", "id": 9}', "malformed 'leased' message: neither a grant nor 'error'"),
        (b'{"op": "leased", "id": 9, "error": 5}', "malformed 'leased' message: 'error'"),
        (b'{"op": "leased", "id": 9, "error": "x", "reason": 1}', "'leased' message: 'reason'"),
        (b'{"op": "heartbeat"}', "unknown op 'heartbeat'"),
    ],
)
def test_a_malformed_master_message_is_refused_naming_the_field(line: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        parse_master(decode(line))


def test_an_epoch_timeout_sent_as_an_integer_reads_as_seconds() -> None:
    assert parse_master(decode(_epoch(timeout_s=60))) == EPOCH


def test_an_epoch_from_a_master_that_never_sends_restore_does_not_restore() -> None:
    assert parse_master(decode(_epoch(restore=None))).restore is False
