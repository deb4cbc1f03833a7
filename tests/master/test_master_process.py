"""The master as a process: real sockets, its own c10d store, a state file, kill -9."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from torch._C._distributed_c10d import TCPStore

from .processes import MasterProcess, Replica, wait_until

Start = Callable[..., MasterProcess]
Connect = Callable[[str], Replica]


def test_registered_workers_get_ranks_a_world_size_and_a_working_store(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=2, MAX=2)
    first = replicas(job.address).register("worker-1")
    second = replicas(job.address).register("worker-0")

    epochs = [first.expect("epoch"), second.expect("epoch")]

    assert [(e["rank"], e["world_size"], e["prefix"]) for e in epochs] == [
        (1, 2, "epoch/1"),
        (0, 2, "epoch/1"),
    ]
    store = TCPStore(epochs[0]["store_host"], epochs[0]["store_port"], timeout=timedelta(seconds=5))
    store.set("probe", "ok")
    assert store.get("probe") == b"ok"
    started = job.wait_for_event("EpochStarted")
    assert started == {
        "type": "Normal",
        "reason": "EpochStarted",
        "message": "epoch 1: 2 workers (worker-0, worker-1); from step 0",
        "replica": None,
    }


def test_a_second_process_registering_as_a_live_replica_is_refused_with_an_event(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=2, SETTLE_S=30)
    original = replicas(job.address).register("worker-0")
    original.expect("registered")

    impostor = replicas(job.address).register("worker-0")
    refused = impostor.expect("refused")

    assert "worker-0 registered twice" in refused["message"]
    assert impostor.receive() is None, "the master closes the refused connection"
    event = job.wait_for_event("DuplicateRegistration")
    assert (event["type"], event["replica"]) == ("Warning", "worker-0")
    original.send(op="heartbeat")
    other = replicas(job.address).register("worker-1")
    assert original.expect("epoch")["members"] == ["worker-0", "worker-1"]
    assert other.expect("epoch")["rank"] == 1


def test_registering_twice_on_one_connection_keeps_the_first_and_says_so(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=1)
    worker = replicas(job.address).register("worker-0")
    worker.expect("epoch")

    worker.register("worker-7")

    event = job.wait_for_event("DuplicateRegistration")
    assert "worker-0" in event["message"] and "worker-7" in event["message"]
    assert job.saved()["members"] == ["worker-0"]


def test_a_connection_that_never_registers_is_closed_with_an_event_and_blocks_nobody(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=2, REGISTER_TIMEOUT_S=0.5)
    silent = replicas(job.address)
    worker = replicas(job.address).register("worker-0")

    assert worker.expect("epoch")["members"] == ["worker-0"]
    event = job.wait_for_event("RegistrationTimeout")
    assert event["replica"] is None
    assert "sent no registration within 0.5 s" in event["message"]
    assert silent.receive() is None


def test_a_replica_that_never_registers_is_named_and_a_late_one_still_joins(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=2, MAX=2, REGISTER_TIMEOUT_S=0.5)
    replicas(job.address).register("worker-0").expect("registered")

    event = job.wait_for_event("RegistrationTimeout")

    assert (event["type"], event["replica"]) == ("Warning", "worker-1")
    assert event["message"].startswith("worker-1 has not registered with the job master within")
    late = replicas(job.address).register("worker-1")
    assert late.expect("epoch")["world_size"] == 2


def test_a_killed_worker_makes_the_master_abort_its_epoch_at_once(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=3)
    workers = [replicas(job.address).register(f"worker-{i}") for i in range(3)]
    for worker in workers:
        worker.expect("epoch")

    lost_at = time.monotonic()
    workers[1].close()
    aborts = [worker.expect("abort") for worker in (workers[0], workers[2])]
    abort_s = time.monotonic() - lost_at

    assert aborts == [{"op": "abort", "epoch": 1}] * 2
    assert abort_s < 1.0, f"the abort took {abort_s:.2f} s"
    for worker in (workers[0], workers[2]):
        worker.send(op="sync", epoch=1, step=10, failed=True)
    assert workers[2].expect("epoch")["members"] == ["worker-0", "worker-2"]
    assert "left worker-1 (lost)" in job.events()[-1]["message"]


def test_a_member_that_never_reaches_the_boundary_is_evicted_and_the_round_goes_on(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=3, TIMEOUT_S=1)
    stuck, healthy = (replicas(job.address).register(f"worker-{i}") for i in range(2))
    for worker in (stuck, healthy):
        worker.expect("epoch")
        worker.send(op="formed", epoch=1)

    joiner = replicas(job.address).register("worker-2")
    healthy.expect("change")
    healthy.send(op="sync", epoch=1, step=5, failed=False)

    assert stuck.expect("evicted", timeout_s=5)["message"].startswith("worker-0 (pid")
    event = job.wait_for_event("RendezvousTimeout")
    assert event["replica"] == "worker-0"
    assert joiner.expect("epoch")["members"] == ["worker-1", "worker-2"]


def test_a_master_killed_with_sigkill_resumes_from_its_state_file_without_disturbing_anyone(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=2, MAX=2)
    workers = [replicas(job.address).register(f"worker-{i}") for i in range(2)]
    epoch = workers[0].expect("epoch")["epoch"]
    workers[1].expect("epoch")
    workers[0].send(op="commit", epoch=epoch, step=30, data={"offset": 1800}, extras={"lr": 0.1})
    wait_until(lambda: (job.saved()["committed"] or {}).get("step") == 30, 5, "the commit saved")

    job.kill()
    job.start()
    back = [replicas(job.address).register(f"worker-{i}", "member", epoch=epoch) for i in (0, 1)]

    resumed = job.wait_for_event("MasterResumed")
    assert resumed["message"] == (
        "resumed epoch 1: worker-0, worker-1 reconnected and train on; last committed step 30"
    )
    assert [m["op"] for m in back[0].quiet(0.5)] == ["registered"], "no new epoch, no abort"
    saved = job.saved()
    assert (saved["epoch"], saved["members"], saved["committed"]["data"]) == (
        1,
        ["worker-0", "worker-1"],
        {"offset": 1800},
    )


def test_a_restarted_master_reforms_without_a_member_that_did_not_reconnect(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=2, RECONNECT_TIMEOUT_S=0.5)
    workers = [replicas(job.address).register(f"worker-{i}") for i in range(2)]
    for worker in workers:
        worker.expect("epoch")

    job.kill()
    job.start()
    survivor = replicas(job.address).register("worker-1", "member", epoch=1)

    assert survivor.expect("abort") == {"op": "abort", "epoch": 1}
    survivor.send(op="sync", epoch=1, step=20, failed=True)
    epoch = survivor.expect("epoch")
    assert (epoch["epoch"], epoch["rank"], epoch["world_size"], epoch["step"]) == (2, 0, 1, 20)
    timeout = job.wait_for_event("RegistrationTimeout")
    assert timeout["replica"] == "worker-0"
    assert "did not reconnect to the restarted master" in timeout["message"]


def test_a_member_without_state_may_report_no_step_when_its_first_epoch_breaks(
    master: Start, replicas: Connect
) -> None:
    job = master(MIN=1, MAX=3)
    workers = [replicas(job.address).register(f"worker-{i}") for i in range(3)]
    for worker in workers:
        worker.expect("epoch")

    workers[1].close()
    for worker in (workers[0], workers[2]):
        worker.expect("abort")
    workers[0].send(op="sync", epoch=1, step=10, failed=True)
    # A newcomer whose first epoch broke before the state reached it holds no step.
    workers[2].send(op="sync", epoch=1, step=None, failed=True)

    reformed = workers[2].expect("epoch")
    assert reformed["members"] == ["worker-0", "worker-2"]
    assert "from step 10" in job.events()[-1]["message"]
