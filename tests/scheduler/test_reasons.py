"""Every pending job gets a stable code and a message with the numbers to act on."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tidemill.scheduler import Code, Decisions

from .builders import decide, job, node, queue, running


@dataclass(frozen=True)
class Case:
    nodes: list[node]
    jobs: list[job]
    code: str
    message: str
    held: list[running] = field(default_factory=list)
    queues: list[queue] = field(default_factory=list)
    strict_fifo: bool = False
    subject: str = "waiting"
    levels: tuple[str, ...] = ()
    now: float | None = None


REASON_CASES = [
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8), node("n2").gpus(8), node("n3").gpus(8)],
            held=[
                running("a").on("n1", gpu_ids=range(4)),
                running("b").on("n2", gpu_ids=range(5)),
                running("c").on("n3", gpu_ids=[0, 1]),
            ],
            jobs=[job("waiting").pods(2).gpus(8)],
            code="InsufficientGPU",
            message="needs 2 worker pods x 8 gpu; largest free block is 6 gpu on n3",
        ),
        id="insufficient gpu names the pods, the ask and the largest free block",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(2)],
            held=[running("a").on("n1", gpu_ids=[0], share=0.75).on("n1", [1], share=0.6)],
            jobs=[job("waiting").gpus(0.5)],
            code="InsufficientGPU",
            message=(
                "needs 1 worker pod x 0.5 gpu (shared); "
                "largest free block is 0.4 gpu on one device on n1"
            ),
        ),
        id="insufficient shared gpu reports the freest single device",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").cpu(16), node("n2").cpu(16)],
            held=[running("a").on("n1", cpu=12), running("b").on("n2", cpu=10)],
            jobs=[job("waiting").cpu(8)],
            code="InsufficientCPU",
            message="needs 1 worker pod x 8 cpu; largest free block is 6 cpu on n2",
        ),
        id="insufficient cpu gives the most free cores on one node",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").memory(64)],
            held=[running("a").on("n1", memory=48)],
            jobs=[job("waiting").memory(32)],
            code="InsufficientMemory",
            message="needs 1 worker pod x 32Gi memory; largest free block is 16Gi memory on n1",
        ),
        id="insufficient memory is written in the units of job files",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8).cpu(8), node("n2").gpus(8).cpu(64)],
            held=[running("a").on("n2", gpu_ids=range(6))],
            jobs=[job("waiting").gpus(4).cpu(16)],
            code="InsufficientGPU",
            message=(
                "needs 1 worker pod x 4 gpu; largest free block is 2 gpu on n2 "
                "among nodes with enough cpu and memory"
            ),
        ),
        id="the short resource is judged on nodes that have enough of the others",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8), node("n2").gpus(8)],
            held=[running("a").on("n2", gpu_ids=range(4))],
            jobs=[job("waiting").pods(3).gpus(8)],
            code="GangDoesNotFit",
            message=(
                "1 of 3 pods fit; pod worker-1 needs 8 gpu, largest free block left is 4 gpu on n2"
            ),
        ),
        id="a gang that partly fits says how many pods fit and what stopped the next",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8), node("n2").gpus(4)],
            jobs=[job("waiting").gpus(16)],
            code="NoNodeLargeEnough",
            message="pod worker-0 asks 16 gpu; the largest node has 8 gpu (n1)",
        ),
        id="a pod bigger than every node says so with the largest node",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers("rdma/hca", 4), node("n2").offers("rdma/hca", 4)],
            held=[
                running("a").on("n1", extended={"rdma/hca": 3}),
                running("b").on("n2", extended={"rdma/hca": 4}),
            ],
            jobs=[job("waiting").pods(2).extended("rdma/hca", 2)],
            code="InsufficientExtendedResource",
            message="needs 2 worker pods x 2 rdma/hca; largest free block is 1 rdma/hca on n1",
        ),
        id="insufficient extended resource names the ask per pod and the most free on one node",
    ),
    pytest.param(
        Case(
            nodes=[
                node("n1").offers("example.com/fpga", 2),
                node("n2").offers("example.com/fpga", 1),
            ],
            jobs=[job("waiting").pods(2).extended("example.com/fpga", 2)],
            code="GangDoesNotFit",
            message=(
                "1 of 2 pods fit; pod worker-1 needs 2 example.com/fpga, "
                "largest free block left is 1 example.com/fpga on n2"
            ),
        ),
        id="a gang that partly fits on extended resources says what stopped the next pod",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").offers("rdma/hca", 1), node("n2")],
            jobs=[job("waiting").extended("rdma/hca", 2).extended("example.com/fpga", 1)],
            code="NoNodeLargeEnough",
            message=(
                "pod worker-0 asks 1 example.com/fpga; the largest node has 0 example.com/fpga "
                "(n1); pod worker-0 asks 2 rdma/hca; the largest node has 1 rdma/hca (n1)"
            ),
        ),
        id="an extended resource no node offers enough of names the largest offer",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8).cpu(32), node("n2").cpu(128)],
            jobs=[job("waiting").gpus(1).cpu(64)],
            code="NoNodeLargeEnough",
            message=(
                "pod worker-0 asks 64 cpu, 1 gpu, 1Gi memory; "
                "no single schedulable node has all of that at once"
            ),
        ),
        id="a pod whose resources exist only on different nodes is too large as a whole",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8).cordoned()],
            jobs=[job("waiting").gpus(1)],
            code="NoNodeLargeEnough",
            message="pod worker-0 asks 1 cpu, 1 gpu, 1Gi memory; no node is schedulable",
        ),
        id="a cluster with every node cordoned says no node is schedulable",
    ),
    pytest.param(
        Case(
            nodes=[
                node("n1").gpus(8).model("a100"),
                node("n2").gpus(8).model("h100"),
                node("n3").gpus(8).model("h100"),
            ],
            jobs=[job("waiting").gpus(1).model("t4")],
            code="NoMatchingGPUModel",
            message="pod worker-0 asks gpu model t4; schedulable nodes offer a100 (1 node), "
            "h100 (2 nodes)",
        ),
        id="an unknown gpu model lists the models on offer",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(16)],
            held=[running("a").queue("ads").on("n1", gpu_ids=range(4))],
            queues=[queue("ads").max_gpu(8)],
            jobs=[job("waiting").queue("ads").gpus(8)],
            code="QueueAtMax",
            message="queue ads would hold 12 gpu; its max is 8 gpu",
        ),
        id="a queue max says what the queue would hold and its limit",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(16)],
            queues=[queue("ads").max_gpu(8).max_cpu(4)],
            jobs=[job("waiting").queue("ads").gpus(10).cpu(6)],
            code="QueueAtMax",
            message="queue ads would hold 6 cpu, 10 gpu; its max is 4 cpu, 8 gpu",
        ),
        id="every exceeded max is listed in resource order",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8)],
            queues=[queue("ads"), queue("search")],
            jobs=[job("waiting").queue("adz")],
            code="UnknownQueue",
            message="queue 'adz' does not exist; known queues: ads, search. "
            "Set spec.queue to one of them or add the queue to the cluster file",
        ),
        id="an unknown queue lists the known ones and what to change",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8)],
            jobs=[job("head").gpus(16).priority(5), job("waiting").gpus(1)],
            strict_fifo=True,
            code="BlockedByQueueHead",
            message="queue default admits jobs strictly in order and its head head is pending "
            "(NoNodeLargeEnough)",
        ),
        id="under strict fifo the jobs behind a stuck head name it and its code",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8)],
            jobs=[job("waiting").gpus(1.5)],
            code="InvalidRequest",
            message="pod worker-0 asks 1.5 gpu; a pod takes whole GPUs (1, 2, ...) "
            "or one shared fraction below 1",
        ),
        id="a gpu count that is neither whole nor a fraction is refused with the rule",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8)],
            held=[running("a").priority(0).on("n1", gpu_ids=range(8)).not_preemptible()],
            jobs=[job("waiting").gpus(2).priority(10)],
            code="InsufficientGPU",
            message="needs 1 worker pod x 2 gpu; largest free block is none: "
            "no node has any gpu free",
        ),
        id="a job with no preemption candidates gets the plain reason",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8), node("n2").gpus(8)],
            held=[
                running("a").priority(0).on("n1", gpu_ids=range(4)),
                running("b").priority(0).on("n2", gpu_ids=range(8)).not_preemptible(),
            ],
            jobs=[job("waiting").pods(2).gpus(8).priority(10)],
            code="InsufficientGPU",
            message="needs 2 worker pods x 8 gpu; largest free block is 4 gpu on n1; "
            "preempting lower-priority jobs would not make room",
        ),
        id="a job that preemption cannot help says so",
    ),
    pytest.param(
        Case(
            nodes=[
                node("n1").gpus(8).label("rack", "r1"),
                node("n2").gpus(8).label("rack", "r1"),
                node("n3").gpus(8).label("rack", "r2"),
                node("n4").gpus(8).label("rack", "r2"),
            ],
            held=[
                running("a").on("n1", gpu_ids=range(8)).on("n2", gpu_ids=[0, 1]),
                running("b").on("n3", gpu_ids=range(4)),
            ],
            jobs=[job("waiting").pods(8).gpus(2).pack("rack", required=True)],
            levels=("rack",),
            code="TopologyDoesNotFit",
            message="needs 16 gpu (8 worker x 2 gpu) within one rack; "
            "the largest free rack block is 12 gpu on r2",
        ),
        id="a required packing no rack holds now names the largest free rack block",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8).label("rack", "r1"), node("n2").gpus(8).label("rack", "r2")],
            jobs=[job("waiting").pods(8).gpus(2).pack("rack", required=True)],
            levels=("rack",),
            code="TopologyDomainTooSmall",
            message="needs 16 gpu (8 worker x 2 gpu) within one rack; the largest rack has "
            "8 gpu in all (r1): set topology.required: false or packWithin a larger level, "
            "or ask for less",
        ),
        id="a required packing larger than any rack even when empty says waiting will not help",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8).label("zone", "z1")],
            jobs=[job("waiting").gpus(2).pack("rack", required=True)],
            levels=("rack", "zone"),
            code="NoTopologyDomain",
            message="pod worker-0 must be packed within one rack; no schedulable node carries "
            "the label rack",
        ),
        id="a required packing at a level no node is labelled with names the label",
    ),
    pytest.param(
        Case(
            nodes=[node("n1").gpus(8), node("n2").gpus(8)],
            held=[
                running("a").on("n1", gpu_ids=range(4)).ends(9_000),
                running("b").on("n2", gpu_ids=range(8)).ends(12_600),
            ],
            jobs=[job("waiting").pods(2).gpus(8).waiting_since(0)],
            now=7_200,
            code="Reserved",
            message="waited 2h, past the 1h bound: 2 cpu, 16 gpu, 2Gi memory held for it on "
            "n1, n2 as it frees; expected to start at 1970-01-01 03:30:00 UTC; only jobs that "
            "end before then may use that room (needs 2 worker pods x 8 gpu; largest free "
            "block is 4 gpu on n1)",
        ),
        id="a job that waited past the bound says what is held for it and when it should start",
    ),
]


@pytest.mark.parametrize("case", REASON_CASES)
def test_pending_reason(case: Case) -> None:
    decisions = decide(
        nodes=case.nodes,
        jobs=case.jobs,
        running_jobs=case.held,
        queues=case.queues,
        strict_fifo=case.strict_fifo,
        levels=case.levels,
        now=case.now,
    )
    reason = decisions.pending[case.subject]
    assert (reason.code, reason.message) == (case.code, case.message)


def test_every_code_is_exercised_by_a_reason_case() -> None:
    covered = {case.code for p in REASON_CASES for case in p.values if isinstance(case, Case)}
    assert covered == {code.value for code in Code}


def test_every_pending_job_has_a_reason_and_every_job_is_decided() -> None:
    decisions: Decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job(f"j{i}").gpus(g) for i, g in enumerate([4, 8, 2, 2, 1, 16, 0.5])],
    )
    decided = {b.job for b in decisions.binds} | set(decisions.pending)
    assert decided == {f"j{i}" for i in range(7)}
    assert all(r.code and any(ch.isdigit() for ch in r.message) for r in decisions.pending.values())
