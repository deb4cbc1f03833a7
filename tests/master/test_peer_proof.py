"""A master started with the job's credential takes only replicas that prove it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tidemill.master.server import LOGGED_REFUSALS
from tidemill.peer_proof import job_proof

from .processes import MasterProcess, Replica

CREDENTIAL = {"TIDEMILL_TOKEN": "the-jobs-own-credential"}


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[MasterProcess]:
    process = MasterProcess(
        tmp_path, {**CREDENTIAL, "TIDEMILL_ELASTIC_MIN": "1", "TIDEMILL_ELASTIC_SETTLE_S": "0.2"}
    )
    process.start()
    yield process
    process.kill()


def test_a_replica_without_the_jobs_proof_is_refused_and_one_with_it_joins(
    guarded: MasterProcess,
) -> None:
    strangers = [
        Replica(guarded.address).register("worker-0"),
        Replica(guarded.address).register("worker-0", proof=job_proof({"TIDEMILL_TOKEN": "x"})),
        Replica(guarded.address).register("worker-0", proof=["not", "text"]),
    ]
    refusals = []
    for stranger in strangers:
        refusals.append(stranger.expect("refused")["message"])
        assert stranger.receive() is None, "the master closes a refused connection"
        stranger.close()
    assert "no proof of the job's credential (TIDEMILL_TOKEN)" in refusals[0]
    assert "a wrong proof" in refusals[1]
    assert refusals[0].startswith("the job master of tests/elastic takes connections only")

    member = Replica(guarded.address).register("worker-0", proof=job_proof(CREDENTIAL))
    member.expect("registered")
    assert member.expect("epoch")["members"] == ["worker-0"]
    member.close()


def test_strangers_knocking_neither_stall_the_master_nor_fill_its_log(
    guarded: MasterProcess,
) -> None:
    knocks = LOGGED_REFUSALS + 40
    for _ in range(knocks):
        stranger = Replica(guarded.address).register("worker-0")
        stranger.expect("refused")
        stranger.close()

    member = Replica(guarded.address).register("worker-0", proof=job_proof(CREDENTIAL))
    member.expect("registered")
    member.close()
    log = (guarded.folder / "master.1.log").read_text()
    logged = [line for line in log.splitlines() if "takes connections only" in line]
    assert len(logged) == LOGGED_REFUSALS, logged[-3:]
    assert not [e for e in guarded.events() if e["reason"] == "DuplicateRegistration"]
