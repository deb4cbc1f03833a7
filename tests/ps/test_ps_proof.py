"""A PS replica started with the job's proof answers only connections that prove it."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest

from tidemill.master.ps_poller import PSStatsPoller
from tidemill.peer_proof import job_proof
from tidemill.ps import OptimizerConfig, PSClient, PSConfig, PSServer, PSServerError, TableConfig
from tidemill.ps import _connections as ps_connections
from tidemill.ps._wire import ErrorCode, Header, Op, recv_header, recv_text, send_frames

CONFIG = PSConfig((TableConfig("t", 4, OptimizerConfig("sgd", lr=1.0), 0.0, 1),))
PROOF = job_proof({"TIDEMILL_TOKEN": "the-jobs-own-credential"})


@pytest.fixture
def guarded() -> Iterator[PSServer]:
    with PSServer(CONFIG, index=0, proof=PROOF) as running:
        yield running


def first_answer(address: tuple[str, int], frames: list[tuple[Header, list[bytes]]]) -> Header:
    """Send ``frames`` on a fresh connection; the first answer, after which the replica
    must have closed the connection."""
    with socket.create_connection(address, timeout=5) as sock:
        send_frames(sock, frames)
        answer = recv_header(sock, 1 << 20)
        assert answer is not None
        message = recv_text(sock, answer)
        assert answer.op == Op.ERROR and answer.flags == ErrorCode.UNPROVEN, message
        assert sock.recv(1) == b"", "the replica closes an unproven connection"
        return answer


def test_a_client_without_the_jobs_proof_is_refused_one_with_it_trains(
    guarded: PSServer,
) -> None:
    for proof, why in ((None, "sent no proof"), (job_proof({"TIDEMILL_TOKEN": "x"}), "wrong")):
        with pytest.raises(PSServerError, match=why) as refused:
            PSClient(CONFIG, [guarded.address], proof=proof, same_host_socket=False)
        assert "PS replica 0 takes connections only from its own job's replicas" in str(
            refused.value
        )
    with PSClient(CONFIG, [guarded.address], proof=PROOF) as member:
        assert member.pull("t", [7])[0].tolist() == [0.0] * 4  # rows are made on a pull
        member.push("t", [7], np.ones((1, 4), np.float32))
        member.advance()
        assert member.pull("t", [7])[0].tolist() == [-1.0] * 4
    assert guarded.stats()["tables"]["t"]["pushed_rows"] == 1


def test_frames_before_a_proving_hello_are_refused_and_the_connection_closed(
    guarded: PSServer,
) -> None:
    ids = np.array([1, 2], np.int64)
    pull = Header(Op.PULL, request_id=1, table=0, rows=2, payload_bytes=ids.nbytes)
    first_answer(guarded.address, [(pull, [ids.tobytes()])])
    first_answer(guarded.address, [(Header(Op.STATS, request_id=1), [])])
    first_answer(guarded.address, [(Header(Op.SHUTDOWN, request_id=1), [])])
    not_json = Header(Op.HELLO, request_id=1, payload_bytes=3)
    first_answer(guarded.address, [(not_json, [b"{x:"])])
    assert not guarded.wait(0.1), "the SHUTDOWN of a stranger stopped nothing"
    with PSClient(CONFIG, [guarded.address], proof=PROOF) as member:
        assert member.pull("t", [3]).shape == (1, 4)


def test_the_masters_stats_poll_proves_the_job_or_is_refused(guarded: PSServer) -> None:
    member = asyncio.run(PSStatsPoller([guarded.address], 2.0, proof=PROOF).poll_once())
    stranger = asyncio.run(PSStatsPoller([guarded.address], 2.0).poll_once())

    assert [shard.reachable for shard in member.shards] == [True]
    assert [shard.reachable for shard in stranger.shards] == [False]
    assert "refused HELLO" in (stranger.shards[0].error or ""), stranger.shards[0]


def test_a_replica_without_a_proof_takes_any_peer() -> None:
    with PSServer(CONFIG, index=0) as open_replica:
        with socket.create_connection(open_replica.address, timeout=5) as sock:
            send_frames(sock, [(Header(Op.STATS, request_id=2), [])])
            answer = recv_header(sock, 1 << 20)
            assert answer is not None and answer.op == Op.OK
        with PSClient(CONFIG, [open_replica.address], proof=PROOF) as client:
            assert client.pull("t", [1]).shape == (1, 4)


def test_a_stranger_that_connects_and_stays_silent_is_let_go(
    guarded: PSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ps_connections, "PROVE_WITHIN_S", 0.3)
    with socket.create_connection(guarded.address, timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(1) == b"", "the replica closes a connection that never says HELLO"
        assert time.monotonic() - started < 3
    with PSClient(CONFIG, [guarded.address], proof=PROOF) as member:
        time.sleep(0.6)  # a proven connection has no deadline
        assert member.pull("t", [5]).shape == (1, 4)


def test_a_flood_of_silent_strangers_is_turned_away_and_the_jobs_client_goes_on(
    guarded: PSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ps_connections, "MAX_UNPROVEN", 2)
    monkeypatch.setattr(ps_connections, "PROVE_WITHIN_S", 1.5)
    with PSClient(CONFIG, [guarded.address], proof=PROOF) as member:
        silent = [socket.create_connection(guarded.address, timeout=5) for _ in range(2)]
        time.sleep(0.2)  # both accepted and counted
        with socket.create_connection(guarded.address, timeout=5) as third:
            started = time.monotonic()
            assert third.recv(1) == b"", "a connection beyond the cap is closed"
            assert time.monotonic() - started < 1.0, "at once, not at the deadline"
        assert member.pull("t", [9]).shape == (1, 4), "a proven client is not held up"
        for sock in silent:
            assert sock.recv(1) == b""  # let go at the deadline
            sock.close()
    with PSClient(CONFIG, [guarded.address], proof=PROOF) as later:
        assert later.pull("t", [9]).shape == (1, 4)
