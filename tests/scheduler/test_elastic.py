"""Elastic jobs: start at the minimum, take optional pods only in idle room, grow later."""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from tidemill.scheduler import Placement, PodRequest, schedule

from .builders import (
    backlog,
    bound,
    decide,
    device_shares,
    grown,
    job,
    node,
    pod_names,
    queue,
    running,
    shrunk,
    state_of,
)


def workers(*indexes: int) -> list[str]:
    return [f"worker-{i}" for i in indexes]


@dataclass(frozen=True)
class Start:
    jobs: list[job]
    pods: dict[str, list[str]]
    held: list[running] = field(default_factory=list)
    queues: list[queue] = field(default_factory=list)
    nodes: list[node] = field(default_factory=lambda: [node("n1").gpus(8)])


START_CASES = [
    pytest.param(
        Start(
            held=[running("busy").on("n1", gpu_ids=range(5))],
            jobs=[job("elastic").pods(6).gpus(1).min_pods(3)],
            pods={"elastic": workers(0, 1, 2)},
        ),
        id="an elastic job starts with its minimum when only the minimum fits",
    ),
    pytest.param(
        Start(
            held=[running("busy").on("n1", gpu_ids=range(3))],
            jobs=[job("elastic").pods(6).gpus(1).min_pods(3)],
            pods={"elastic": workers(0, 1, 2, 3, 4)},
        ),
        id="an elastic job starts with every optional pod that fits beyond its minimum",
    ),
    pytest.param(
        Start(
            jobs=[job("elastic").pods(6).gpus(1).min_pods(2)],
            pods={"elastic": workers(0, 1, 2, 3, 4, 5)},
        ),
        id="an elastic job takes no more than it asks even when more is idle",
    ),
    pytest.param(
        Start(
            jobs=[job("elastic").pods(8).gpus(1).min_pods(1), job("gang").gpus(4)],
            pods={"elastic": workers(0, 1, 2, 3), "gang": workers(0)},
        ),
        id="optional pods wait until every pending gang of the cycle is placed",
    ),
    pytest.param(
        Start(
            queues=[queue("default").max_gpu(4)],
            jobs=[job("elastic").pods(6).gpus(1).min_pods(2)],
            pods={"elastic": workers(0, 1, 2, 3)},
        ),
        id="optional pods stay within the queue's max",
    ),
    pytest.param(
        Start(
            held=[running("low").priority(0).on("n1", gpu_ids=range(6))],
            jobs=[job("elastic").priority(10).pods(6).gpus(1).min_pods(2)],
            pods={"elastic": workers(0, 1)},
        ),
        id="optional pods never preempt a lower-priority job",
    ),
    pytest.param(
        Start(
            held=[running("low").priority(0).on("n1", gpu_ids=range(8))],
            jobs=[job("elastic").priority(10).pods(6).gpus(1).min_pods(2)],
            pods={"elastic": workers(0, 1)},
        ),
        id="a gang that preempts gets its minimum and leaves what its victim frees beyond it",
    ),
    pytest.param(
        Start(
            nodes=[node("n1").gpus(4), node("n2").gpus(4)],
            jobs=[job("elastic").pods(6).gpus(2).min_pods(2).plus("ps", 1, cpu=2)],
            pods={"elastic": [*workers(0, 1), "ps-0", *workers(2, 3)]},
        ),
        id="the bind lists the gang in the order asked, then the optional pods that fit",
    ),
]


@pytest.mark.parametrize("case", START_CASES)
def test_an_elastic_job_starts_with_what_fits_between_its_minimum_and_its_ask(
    case: Start,
) -> None:
    decisions = decide(nodes=case.nodes, jobs=case.jobs, running_jobs=case.held, queues=case.queues)
    assert {key: pod_names(decisions, key) for key in bound(decisions)} == case.pods
    assert decisions.pending == {}
    assert max(device_shares(decisions, case.held).values()) == 1.0


def test_an_elastic_gang_preempts_only_for_its_minimum() -> None:
    held = [running("low").priority(0).on("n1", gpu_ids=range(8))]
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[job("elastic").priority(10).pods(6).gpus(1).min_pods(2)],
        running_jobs=held,
    )
    assert [p.victim for p in decisions.preemptions] == ["low"]
    assert pod_names(decisions, "elastic") == workers(0, 1)


PENDING_CASES = [
    pytest.param(
        [node("n1").gpus(8)],
        [running("pinned").on("n1", gpu_ids=range(8)).not_preemptible()],
        "InsufficientGPU",
        "needs 2 worker pods x 1 gpu; largest free block is none: no node has any gpu free",
        id="a waiting elastic job counts only its minimum in its reason",
    ),
    pytest.param(
        [node("n1").gpus(4), node("n2").gpus(4)],
        [
            running("pinned-1").on("n1", gpu_ids=range(3)).not_preemptible(),
            running("pinned-2").on("n2", gpu_ids=range(4)).not_preemptible(),
        ],
        "GangDoesNotFit",
        "1 of 2 pods fit; pod worker-1 needs 1 gpu, largest free block left is none: "
        "no node has any gpu free",
        id="a partly placed elastic gang counts only its required pods",
    ),
]


@pytest.mark.parametrize(("nodes", "held", "code", "message"), PENDING_CASES)
def test_a_waiting_elastic_job_explains_its_minimum(
    nodes: list[node], held: list[running], code: str, message: str
) -> None:
    decisions = decide(
        nodes=nodes, jobs=[job("elastic").pods(6).gpus(1).min_pods(2)], running_jobs=held
    )
    assert decisions.binds == []
    assert (decisions.pending["elastic"].code, decisions.pending["elastic"].message) == (
        code,
        message,
    )


def test_a_job_with_only_optional_pods_is_refused() -> None:
    decisions = decide(nodes=[node("n1").gpus(8)], jobs=[job("x").pods(2).min_pods(0)])
    reason = decisions.pending["x"]
    assert reason.code == "InvalidRequest"
    assert reason.message == (
        "job has 2 optional pods and no required ones; "
        "an elastic role needs minReplicas of at least 1"
    )


@dataclass(frozen=True)
class Growth:
    held: list[running]
    jobs: list[job]
    grown: dict[str, list[str]]
    bound: list[str] = field(default_factory=list)
    queues: list[queue] = field(default_factory=list)
    nodes: list[node] = field(default_factory=lambda: [node("n1").gpus(8)])


def elastic(key: str, on: range, priority: int = 0, queue_name: str = "default") -> running:
    """A running job with one single-gpu worker per device of ``on``, on n1."""
    built = running(key).priority(priority).queue(queue_name)
    for device in on:
        built = built.on("n1", gpu_ids=[device])
    return built


def more(key: str, count: int, first: int, priority: int = 0, queue_name: str = "default") -> job:
    """A growth request: ``count`` more single-gpu workers from index ``first``."""
    return (
        job(key).pods(count).first_index(first).gpus(1).priority(priority).queue(queue_name).grows()
    )


GROWTH_CASES = [
    pytest.param(
        Growth(
            held=[elastic("grower", range(2), 100), elastic("low", range(2, 5), 0).keep(1)],
            jobs=[more("grower", 6, first=2, priority=100)],
            grown={"grower": workers(2, 3, 4)},
        ),
        id="growth fills idle room only, never preempting or shrinking lower-priority jobs",
    ),
    pytest.param(
        Growth(
            held=[elastic("grower", range(2), 100)],
            jobs=[more("grower", 6, first=2, priority=100), job("waiting").gpus(4).priority(0)],
            grown={"grower": workers(2, 3)},
            bound=["waiting"],
        ),
        id="growth comes after every pending job of the cycle, whatever their priorities",
    ),
    pytest.param(
        Growth(
            held=[elastic("grower", range(2))],
            jobs=[job("new").pods(4).gpus(1).min_pods(1).seq(5), more("grower", 6, first=2)],
            grown={"grower": workers(2, 3)},
            bound=["new"],
        ),
        id="a job bound this cycle takes its optional pods before running jobs grow",
    ),
    pytest.param(
        Growth(
            queues=[queue("default").max_gpu(4)],
            held=[elastic("grower", range(2))],
            jobs=[more("grower", 6, first=2)],
            grown={"grower": workers(2, 3)},
        ),
        id="growth stays within the queue's max",
    ),
    pytest.param(
        Growth(
            held=[elastic("grower", range(8))],
            jobs=[more("grower", 2, first=8)],
            grown={},
        ),
        id="a growth request that fits nothing gives no grow",
    ),
    pytest.param(
        Growth(
            queues=[queue("a"), queue("b")],
            held=[elastic("big", range(4), 100, "a"), elastic("small", range(4, 5), 0, "b")],
            jobs=[more("big", 3, 4, 100, "a"), more("small", 3, 1, 0, "b")],
            grown={"small": workers(1, 2, 3)},
        ),
        id="the queue holding the smaller share grows first, whatever the priorities",
    ),
    pytest.param(
        Growth(
            held=[elastic("low", range(3), 0), elastic("high", range(3, 6), 10)],
            jobs=[more("low", 2, first=3, priority=0), more("high", 2, first=3, priority=10)],
            grown={"high": workers(3, 4)},
        ),
        id="within a queue the higher-priority job grows first",
    ),
    pytest.param(
        Growth(
            held=[elastic("grower", range(2))],
            jobs=[more("stranger", 2, first=0), more("grower", 2, first=2).queue("missing")],
            grown={},
        ),
        id="growth requests for jobs not running or in unknown queues are ignored",
    ),
]


@pytest.mark.parametrize("case", GROWTH_CASES)
def test_running_elastic_jobs_grow_into_idle_room_last(case: Growth) -> None:
    decisions = decide(nodes=case.nodes, jobs=case.jobs, running_jobs=case.held, queues=case.queues)
    assert grown(decisions) == case.grown
    assert bound(decisions) == case.bound
    assert decisions.pending == {}
    assert decisions.preemptions == decisions.shrinks == []
    assert max(device_shares(decisions, case.held).values()) <= 1.0


def test_growth_takes_devices_no_one_else_holds() -> None:
    held = [elastic("grower", range(2)), running("shared").on("n1", gpu_ids=[2], share=0.5)]
    decisions = decide(
        nodes=[node("n1").gpus(4)], jobs=[more("grower", 2, first=2)], running_jobs=held
    )
    (grow,) = decisions.grows
    assert [(p.role, p.index, p.gpu_ids) for p in grow.placements] == [("worker", 2, (3,))]


def test_pods_a_running_job_lost_with_their_node_are_placed_before_any_pending_job() -> None:
    """A pod of the running job left a device free with its node; a pending job of the
    same priority, asking for it too, waits: the running job gets back what it held."""
    held = [elastic("ctr", range(7))]
    lost = job("ctr").pods(1).first_index(7).gpus(1).replaces()
    decisions = decide(
        nodes=[node("n1").gpus(8)], jobs=[job("newcomer").gpus(1), lost], running_jobs=held
    )
    assert grown(decisions) == {"ctr": ["worker-7"]}
    assert bound(decisions) == []
    assert decisions.pending["newcomer"].code == "InsufficientGPU"
    assert decisions.preemptions == decisions.shrinks == []


def test_a_job_shrunk_or_stopped_this_cycle_does_not_grow_in_it() -> None:
    held = [
        elastic("shrinking", range(8)).keep(2),
        running("stopping").on("n2", gpu_ids=range(4)),
    ]
    decisions = decide(
        nodes=[node("n1").gpus(8), node("n2").gpus(4), node("idle").gpus(2)],
        jobs=[
            job("urgent-1").gpus(4).priority(10),
            job("urgent-2").gpus(4).priority(10),
            more("shrinking", 2, first=8),
            more("stopping", 1, first=1),
        ],
        running_jobs=held,
    )
    assert bound(decisions) == ["urgent-1", "urgent-2"]
    assert shrunk(decisions) == {"shrinking": workers(7, 6, 5, 4)}
    assert [p.victim for p in decisions.preemptions] == ["stopping"]
    assert decisions.grows == []


def elastic_cluster(seed: int) -> tuple[list[node], list[running], list[job], list[queue]]:
    """Random elastic jobs (some spanning two nodes) beside whole jobs, pending elastic and
    whole gangs, and growth requests for most running elastic jobs."""
    rng = random.Random(seed)
    nodes = [node(f"n{i}").gpus(8) for i in range(8)]
    nodes += [node(f"spare{i}").gpus(4) for i in range(rng.choice([0, 2, 4, 6]))]
    held: list[running] = []
    growth: list[job] = []
    for i in range(8):
        here, spill = f"n{i}", f"n{(i + 1) % 8}"
        priority, queue_name = rng.choice([0, 5, 10]), rng.choice(["ads", "search"])
        size = rng.choice([2, 3, 4])
        built = running(f"e{i}").priority(priority).queue(queue_name).seq(i)
        for device in range(size):
            built = built.on(here, gpu_ids=[device])
        built = built.on(spill, gpu_ids=[7])
        held.append(built.keep(rng.choice([1, 2])))
        if rng.random() < 0.8:
            growth.append(more(f"e{i}", rng.choice([1, 2, 3]), size + 1, priority, queue_name))
        whole = rng.choice([1, 2, 3])
        held.append(
            running(f"w{i}")
            .priority(rng.choice([0, 5, 10]))
            .queue(rng.choice(["ads", "search"]))
            .seq(10 + i)
            .on(here, gpu_ids=range(size, size + whole))
        )
    pending = [
        job(f"p{i}")
        .queue(rng.choice(["ads", "search"]))
        .priority(rng.choice([0, 5, 10, 20]))
        .pods(rng.choice([1, 2, 4]))
        .gpus(rng.choice([1, 2, 4]))
        .min_pods(1)
        for i in range(6)
    ] + [
        job(f"g{i}")
        .queue(rng.choice(["ads", "search"]))
        .priority(rng.choice([0, 10, 20]))
        .pods(rng.choice([1, 2]))
        .gpus(rng.choice([2, 4, 8]))
        for i in range(6)
    ]
    return nodes, held, pending + growth, [queue("ads").weight(2), queue("search").max_gpu(40)]


@pytest.mark.parametrize("seed", range(12))
def test_an_elastic_cycle_keeps_every_promise(seed: int) -> None:
    nodes, held, jobs, queues = elastic_cluster(seed)
    state = state_of(nodes, held, queues)
    requests = backlog(jobs)
    before = copy.deepcopy((state, requests))
    decisions = schedule(state, requests)
    assert (state, requests) == before
    shuffled = list(requests)
    random.Random(seed).shuffle(shuffled)
    assert schedule(state, shuffled) == decisions

    assert max(device_shares(decisions, held).values()) <= 1.0 + 1e-9
    regular = {r.key: r for r in requests if not r.grow}
    asked = {r.key: r for r in requests if r.grow}
    assert sorted([*bound(decisions), *decisions.pending]) == sorted(regular)

    running_by_key = {r.key: r for r in state.running}
    priority_of = {r.key: r.priority for r in requests}
    removed: dict[str, list[tuple[str, int]]] = {}
    for shrink in decisions.shrinks:
        assert running_by_key[shrink.job].priority < priority_of[shrink.preemptor]
        assert shrink.preemptor in bound(decisions)
        removed.setdefault(shrink.job, []).extend(shrink.pods)
    for key, pods in removed.items():
        assert tuple(pods) == running_by_key[key].shrinkable[: len(pods)]
    for stop in decisions.preemptions:
        assert running_by_key[stop.victim].priority < priority_of[stop.preemptor]
        assert (stop.victim, stop.preemptor) not in {
            (s.job, s.preemptor) for s in decisions.shrinks
        }

    touched = set(removed) | {p.victim for p in decisions.preemptions}
    for grow in decisions.grows:
        assert grow.job in asked and grow.job not in touched
        assert_prefix_per_role(asked[grow.job].pods, grow.placements)
    for bind in decisions.binds:
        request = regular[bind.job]
        gang = {(p.role, p.index) for p in request.gang}
        got = [(p.role, p.index) for p in bind.placements]
        assert set(got[: len(gang)]) == gang
        assert_prefix_per_role(request.extras, bind.placements[len(gang) :])


def assert_prefix_per_role(asked: Sequence[PodRequest], placed: Sequence[Placement]) -> None:
    """Optional pods are added per role from the first asked, with no gaps."""
    for role in {p.role for p in placed}:
        wanted = [p.index for p in asked if p.role == role]
        got = [p.index for p in placed if p.role == role]
        assert got == wanted[: len(got)]


@pytest.mark.parametrize(
    ("queues", "held", "code", "message"),
    [
        pytest.param(
            [],
            range(8),
            "InsufficientGPU",
            "cannot add worker-8: it needs 1 gpu; largest free block is none: "
            "no node has any gpu free",
            id="a growth request that fits nothing says which pod and what it lacks",
        ),
        pytest.param(
            [queue("default").max_gpu(2)],
            range(2),
            "QueueAtMax",
            "queue default would hold 3 gpu; its max is 2 gpu",
            id="a growth request stopped by its queue's max names the max",
        ),
    ],
)
def test_an_unmet_growth_request_says_why(
    queues: list[queue], held: range, code: str, message: str
) -> None:
    decisions = decide(
        nodes=[node("n1").gpus(8)],
        jobs=[more("grower", 2, first=len(held))],
        running_jobs=[elastic("grower", held)],
        queues=queues,
    )
    reason = decisions.unmet_grows["grower"]
    assert (reason.code, reason.message) == (code, message)
    assert decisions.pending == {}
