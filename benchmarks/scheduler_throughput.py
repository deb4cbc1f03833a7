"""How many scheduling decisions per second ``schedule()`` makes on large virtual clusters.

Each cluster has nodes of 8 GPUs, 64 cores and 512Gi; about half of it is held by a mix
of running jobs (whole-GPU gangs, shared-GPU pods, CPU-only pods, several priorities).
The backlog is gang jobs of 1-8 pods, whole and fractional GPUs, across several queues,
more than the free half can hold, so every cycle binds, preempts and explains.

The elastic mix fills three quarters of every node instead (elastic jobs have grown
into idle room): half the running multi-GPU jobs are elastic, single-GPU workers
shrinkable down to one. A third of the backlog is elastic (half its pods optional),
and a third of the running elastic jobs ask to grow by 1-4 workers, so cycles also
shrink, add optional pods and grow.

A decision is a job bound or given a pending reason.

Steady cycles (issue goal 7a): 10,000 nodes with 10,000 pods running, and a history of
cycles in each of which 10 pods arrive, the last cycle's binds start and as many pods
exit. Every cycle is decided from scratch (``schedule``) and from the last cycle's memo
(``schedule_incremental``) on the same snapshot, side by side; the decisions must be
equal. "room" has free room and mixed priorities; "full" has every node taken by one
8-GPU pod, all at one priority, so arrivals wait and no preemption is possible.

Placement throughput: one cycle at 10,000 nodes placing a backlog of 20,000 pods of
mixed shapes (whole GPUs, shared GPUs, CPU only) that nearly all fit: pods placed per
second.

Prints the tables and writes ``benchmarks/results/scheduler_throughput.json``.

    python benchmarks/scheduler_throughput.py [--repeats 3] [--cycles 200]
        [--only steady|placement|cycle ...] [--max-nodes N]

``--only`` runs those parts alone and ``--max-nodes`` skips the big-cycle clusters larger
than N (to iterate on the 1,000-node ones); the JSON keeps what earlier runs wrote for
the rest.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from tidemill.scheduler import (
    ClusterState,
    Decisions,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    RunningJob,
    SchedulerConfig,
    schedule,
    schedule_incremental,
)
from tidemill.scheduler.types import Scoring

GIB = 2**30
GPUS_PER_NODE = 8
CPU_MILLIS_PER_NODE = 64_000
MEMORY_PER_NODE = 512 * GIB
QUEUES = ("ads", "search", "cv", "nlp", "research")
RESULTS = Path(__file__).parent / "results" / "scheduler_throughput.json"


@dataclass(frozen=True)
class Scenario:
    nodes: int
    backlog: int
    elastic: bool = False
    seed: int = 7

    @property
    def mix(self) -> str:
        return "elastic" if self.elastic else "gang"


SCENARIOS = (
    Scenario(nodes=1_000, backlog=1_000),
    Scenario(nodes=10_000, backlog=5_000),
    Scenario(nodes=1_000, backlog=1_000, elastic=True),
    Scenario(nodes=10_000, backlog=5_000, elastic=True),
)


def pod_shape(rng: random.Random) -> tuple[int, float, int]:
    """(pods, gpu per pod, cpu millis per pod) drawn from a mix seen on training clusters."""
    kind = rng.random()
    if kind < 0.45:
        gpu = float(rng.choice((1, 2, 4, 8)))
        return rng.choice((1, 2, 4, 8)), gpu, int(gpu) * 6_000
    if kind < 0.75:
        return rng.choice((1, 2, 4)), rng.choice((0.25, 0.5)), 2_000
    return rng.choice((1, 2, 4, 8)), 0.0, rng.choice((2_000, 4_000, 8_000))


def build_cluster(scenario: Scenario) -> ClusterState:
    """Nodes, queues and running jobs filling half of every node (elastic mix: three quarters)."""
    rng = random.Random(scenario.seed)
    nodes = tuple(
        NodeInfo(
            name=f"node-{i:05d}",
            cpu_millis=CPU_MILLIS_PER_NODE,
            memory_bytes=MEMORY_PER_NODE,
            gpus=GPUS_PER_NODE,
            gpu_model="h100" if i % 4 else "a100",
        )
        for i in range(scenario.nodes)
    )
    queues = {
        name: QueueInfo(name=name, weight=float(w), max_gpu=None if name != "research" else 800.0)
        for name, w in zip(QUEUES, (3, 2, 2, 2, 1), strict=True)
    }
    fill = GPUS_PER_NODE * 3 // 4 if scenario.elastic else GPUS_PER_NODE // 2
    running: list[RunningJob] = []
    for i, node in enumerate(nodes):
        gpus_used = 0
        while gpus_used < fill:
            whole = rng.random() < 0.7
            count = min(rng.choice((1, 2, 4)), fill - gpus_used) if whole else 1
            devices = tuple(range(gpus_used, gpus_used + count))
            gpus_used += count
            share = 1.0 if whole else rng.choice((0.25, 0.5))
            shrinkable: tuple[tuple[str, int], ...] = ()
            if scenario.elastic and whole and count > 1 and rng.random() < 0.5:
                placements = tuple(
                    Placement("worker", w, node.name, 4_000, 32 * GIB, (device,), 1.0)
                    for w, device in enumerate(devices)
                )
                shrinkable = tuple(("worker", w) for w in range(len(devices) - 1, 0, -1))
            else:
                placements = (
                    Placement(
                        role="worker",
                        index=0,
                        node=node.name,
                        cpu_millis=4_000 * count,
                        memory_bytes=32 * GIB * count,
                        gpu_ids=devices,
                        gpu_share=share,
                    ),
                )
            running.append(
                RunningJob(
                    key=f"run-{i}-{gpus_used}",
                    queue=rng.choice(QUEUES),
                    priority=rng.choice((0, 0, 10, 50)),
                    sequence=len(running),
                    placements=placements,
                    preemptible=rng.random() < 0.9,
                    shrinkable=shrinkable,
                )
            )
    return ClusterState(nodes=nodes, queues=queues, running=tuple(running))


def build_growth(scenario: Scenario, state: ClusterState) -> list[JobRequest]:
    """Requests for 1-4 more single-GPU workers from a third of the running elastic jobs."""
    rng = random.Random(scenario.seed + 2)
    requests = []
    for job in state.running:
        if not job.shrinkable or rng.random() >= 0.33:
            continue
        first = len(job.placements)
        more = rng.choice((1, 2, 4))
        pods = tuple(
            PodRequest("worker", first + k, 4_000, 32 * GIB, gpu=1.0, optional=True)
            for k in range(more)
        )
        requests.append(JobRequest(job.key, job.queue, job.priority, job.sequence, pods, grow=True))
    return requests


def build_backlog(scenario: Scenario) -> list[JobRequest]:
    rng = random.Random(scenario.seed + 1)
    jobs = []
    for i in range(scenario.backlog):
        pods, gpu, cpu = pod_shape(rng)
        model = rng.choice((None, None, None, "h100", "a100"))
        required = pods
        if scenario.elastic and pods > 1 and rng.random() < 0.33:
            required = pods // 2
        jobs.append(
            JobRequest(
                key=f"job-{i:05d}",
                queue=rng.choice(QUEUES),
                priority=rng.choice((0, 10, 50, 100)),
                sequence=i,
                pods=tuple(
                    PodRequest(
                        role="worker",
                        index=p,
                        cpu_millis=cpu,
                        memory_bytes=8 * GIB * max(1, int(gpu)),
                        gpu=gpu,
                        gpu_model=model,
                        optional=p >= required,
                    )
                    for p in range(pods)
                ),
            )
        )
    return jobs


def measure(scenario: Scenario, repeats: int) -> dict[str, object]:
    state = build_cluster(scenario)
    backlog = build_backlog(scenario)
    growth = build_growth(scenario, state) if scenario.elastic else []
    requests = backlog + growth
    config = SchedulerConfig(preemption=True)
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    decisions = Decisions()
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        decisions = schedule(state, requests, config)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    decided = len(decisions.binds) + len(decisions.pending)
    mean_s = statistics.fmean(seconds)
    return {
        "mix": scenario.mix,
        "nodes": scenario.nodes,
        "running_jobs": len(state.running),
        "elastic_running": sum(1 for job in state.running if job.shrinkable),
        "backlog_jobs": len(backlog),
        "backlog_pods": sum(len(job.pods) for job in backlog),
        "growth_requests": len(growth),
        "bound": len(decisions.binds),
        "bound_pods": sum(len(bind.placements) for bind in decisions.binds),
        "pending": len(decisions.pending),
        "preempted": len(decisions.preemptions),
        "shrunk": len(decisions.shrinks),
        "grown": len(decisions.grows),
        "repeats": repeats,
        "mean_ms_per_cycle": round(mean_s * 1000, 1),
        "min_ms_per_cycle": round(min(seconds) * 1000, 1),
        "mean_cpu_ms_per_cycle": round(statistics.fmean(cpu_seconds) * 1000, 1),
        "decisions_per_s": round(decided / mean_s, 1),
    }


STEADY_NODES = 10_000
STEADY_PODS = 10_000
ARRIVAL_PODS = 10


def steady_cluster(full: bool, rng: random.Random) -> tuple[tuple[NodeInfo, ...], list[RunningJob]]:
    """10,000 nodes and 10,000 single-pod jobs: one 8-GPU pod per node (``full``), or
    1-GPU pods spread at random, at mixed priorities."""
    nodes = tuple(
        NodeInfo(f"node-{i:05d}", CPU_MILLIS_PER_NODE, MEMORY_PER_NODE, GPUS_PER_NODE)
        for i in range(STEADY_NODES)
    )
    used = [0] * STEADY_NODES
    running = []
    for k in range(STEADY_PODS):
        gpus = GPUS_PER_NODE if full else 1
        row = k if full else rng.randrange(STEADY_NODES)
        while used[row] + gpus > GPUS_PER_NODE:
            row = rng.randrange(STEADY_NODES)
        devices = tuple(range(used[row], used[row] + gpus))
        used[row] += gpus
        placement = Placement("worker", 0, nodes[row].name, 4_000 * gpus, 32 * GIB, devices, 1.0)
        priority = 0 if full else rng.choice((0, 10, 50))
        running.append(RunningJob(f"run-{k}", rng.choice(QUEUES), priority, k, (placement,)))
    return nodes, running


def arrival(rng: random.Random, cycle: int, priority: int | None) -> list[JobRequest]:
    """Jobs of 1, 2 or 4 pods, 10 pods in all, whole or shared GPUs."""
    jobs: list[JobRequest] = []
    left = ARRIVAL_PODS
    while left:
        count = min(left, rng.choice((1, 2, 4)))
        left -= count
        gpu = rng.choice((1.0, 1.0, 2.0, 0.5))
        pods = tuple(PodRequest("worker", p, 2_000, 8 * GIB, gpu=gpu) for p in range(count))
        chosen = rng.choice((0, 10, 50, 100)) if priority is None else priority
        key = f"arrival-{cycle}-{len(jobs)}"
        jobs.append(JobRequest(key, rng.choice(QUEUES), chosen, 10**6 + cycle, pods))
    return jobs


def measure_steady(full: bool, cycles: int, scoring: Scoring) -> dict[str, object]:
    """Per-cycle latency of a 10-pod arrival, from scratch and from the memo."""
    rng = random.Random(11)
    nodes, jobs = steady_cluster(full, rng)
    queues = {name: QueueInfo(name=name) for name in QUEUES}
    running = {job.key: job for job in jobs}
    config = SchedulerConfig(preemption=True, scoring=scoring)
    memo = schedule_incremental(ClusterState(nodes, queues, tuple(jobs)), [], config)[1]
    fresh_s: list[float] = []
    carried_s: list[float] = []
    carried_cpu_s: list[float] = []
    bound = 0
    for cycle in range(cycles):
        state = ClusterState(nodes, queues, tuple(running.values()))
        pending = arrival(rng, cycle, 0 if full else None)
        started = time.perf_counter()
        fresh = schedule(state, pending, config)
        fresh_s.append(time.perf_counter() - started)
        started, cpu_started = time.perf_counter(), time.process_time()
        carried, memo = schedule_incremental(state, pending, config, memo)
        carried_s.append(time.perf_counter() - started)
        carried_cpu_s.append(time.process_time() - cpu_started)
        if carried != fresh:
            raise SystemExit(f"cycle {cycle}: the memo's decisions differ from a fresh build's")
        asked = {job.key: job for job in pending}
        for bind in fresh.binds:
            job = asked[bind.job]
            running[job.key] = RunningJob(
                job.key, job.queue, job.priority, job.sequence, bind.placements
            )
            bound += len(bind.placements)
        for victim in fresh.preemptions:
            del running[victim.victim]
        exits = ARRIVAL_PODS if not full else 1
        for key in rng.sample(sorted(running), exits):
            gone = running.pop(key)
            if full:  # another 8-GPU pod takes the node at once: the cluster stays full
                running[f"{key}-next"] = RunningJob(
                    f"{key}-next", gone.queue, 0, gone.sequence, gone.placements
                )
    return {
        "cluster": "full" if full else "room",
        "scoring": scoring,
        "nodes": STEADY_NODES,
        "running_pods": STEADY_PODS,
        "arrival_pods": ARRIVAL_PODS,
        "cycles": cycles,
        "pods_bound": bound,
        "from_scratch_ms": _latency_ms(fresh_s),
        "incremental_ms": _latency_ms(carried_s),
        "incremental_cpu_ms": _latency_ms(carried_cpu_s),
        "speedup_mean": round(statistics.fmean(fresh_s) / statistics.fmean(carried_s), 1),
    }


def _latency_ms(seconds: list[float]) -> dict[str, float]:
    ranked = sorted(seconds)
    p99 = ranked[min(len(ranked) - 1, round(0.99 * (len(ranked) - 1)))]
    return {
        "mean": round(statistics.fmean(seconds) * 1000, 2),
        "p50": round(statistics.median(seconds) * 1000, 2),
        "p99": round(p99 * 1000, 2),
        "max": round(ranked[-1] * 1000, 2),
    }


def measure_placement(repeats: int, scoring: Scoring) -> dict[str, object]:
    """Pods placed per second in one cycle at 10,000 nodes, the memo warm."""
    rng = random.Random(13)
    nodes, jobs = steady_cluster(False, rng)
    queues = {name: QueueInfo(name=name) for name in QUEUES}
    state = ClusterState(nodes, queues, tuple(jobs))
    backlog: list[JobRequest] = []
    pods = 0
    while pods < 2 * STEADY_PODS:
        count, gpu, cpu = pod_shape(rng)
        request = tuple(PodRequest("worker", p, cpu, 8 * GIB, gpu=gpu) for p in range(count))
        key = f"job-{len(backlog):05d}"
        backlog.append(JobRequest(key, rng.choice(QUEUES), 0, len(backlog), request))
        pods += count
    config = SchedulerConfig(preemption=True, scoring=scoring)
    memo = schedule_incremental(state, [], config)[1]
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    decisions = Decisions()
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        decisions, memo = schedule_incremental(state, backlog, config, memo)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    placed = sum(len(bind.placements) for bind in decisions.binds)
    best_s = min(seconds)
    return {
        "scoring": scoring,
        "nodes": STEADY_NODES,
        "running_pods": STEADY_PODS,
        "backlog_pods": pods,
        "pods_placed": placed,
        "pending_jobs": len(decisions.pending),
        "repeats": repeats,
        "mean_ms_per_cycle": round(statistics.fmean(seconds) * 1000, 1),
        "min_ms_per_cycle": round(best_s * 1000, 1),
        "pods_per_s": round(placed / statistics.fmean(seconds), 1),
        "pods_per_cpu_s": round(placed / statistics.fmean(cpu_seconds), 1),
    }


PARTS = ("steady", "placement", "cycle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed cycles per cluster size")
    parser.add_argument("--cycles", type=int, default=200, help="steady cycles per cluster")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=PARTS,
        help="the parts to run (all by default)",
    )
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=None,
        help="skip big-cycle clusters with more nodes than this",
    )
    args = parser.parse_args()
    scorings: tuple[Scoring, ...] = get_args(Scoring)
    steady: list[dict[str, object]] = []
    placement: list[dict[str, object]] = []
    rows: list[dict[str, object]] = []
    if "steady" in args.only:
        steady = [
            measure_steady(full, args.cycles, sc) for sc in scorings for full in (False, True)
        ]
        _print_steady(steady)
    if "placement" in args.only:
        placement = [measure_placement(args.repeats, scoring) for scoring in scorings]
        _print_placement(placement)
    if "cycle" in args.only:
        wanted = [s for s in SCENARIOS if args.max_nodes is None or s.nodes <= args.max_nodes]
        rows = [measure(scenario, args.repeats) for scenario in wanted]
        _print_cycles(rows)
    _write(steady, placement, rows)


def _print_steady(steady: list[dict[str, object]]) -> None:
    print(
        f"{'scoring':>13} {'cluster':>7} {'cycles':>6} {'bound':>6} {'scratch p50':>11} "
        f"{'p99':>7} {'memo p50':>8} {'p99':>7} {'max':>7} {'cpu p99':>7} {'speedup':>7}   "
        "(ms per 10-pod arrival, "
        f"{STEADY_NODES:,} nodes, {STEADY_PODS:,} pods running)"
    )
    for row in steady:
        fresh, carried, cpu = (
            row["from_scratch_ms"],
            row["incremental_ms"],
            row["incremental_cpu_ms"],
        )
        assert isinstance(fresh, dict) and isinstance(carried, dict) and isinstance(cpu, dict)
        print(
            f"{row['scoring']:>13} {row['cluster']:>7} {row['cycles']:>6} {row['pods_bound']:>6} "
            f"{fresh['p50']:>11} {fresh['p99']:>7} {carried['p50']:>8} {carried['p99']:>7} "
            f"{carried['max']:>7} {cpu['p99']:>7} {row['speedup_mean']:>6}x"
        )


def _print_placement(placement: list[dict[str, object]]) -> None:
    for placed in placement:
        print(
            f"placement ({placed['scoring']}): {placed['pods_placed']:,} of "
            f"{placed['backlog_pods']:,} pods placed in {placed['mean_ms_per_cycle']} ms at "
            f"{STEADY_NODES:,} nodes: {placed['pods_per_s']:,} pods/s "
            f"({placed['pods_per_cpu_s']:,} per CPU second)"
        )


def _print_cycles(rows: list[dict[str, object]]) -> None:
    header = (
        f"{'mix':>7} {'nodes':>7} {'running':>8} {'backlog':>8} {'bound':>6} {'pending':>8} "
        f"{'preempted':>9} {'shrunk':>7} {'grown':>6} {'ms/cycle':>9} {'cpu ms':>7} "
        f"{'decisions/s':>12}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['mix']:>7} {row['nodes']:>7} {row['running_jobs']:>8} "
            f"{row['backlog_jobs']:>8} {row['bound']:>6} {row['pending']:>8} "
            f"{row['preempted']:>9} {row['shrunk']:>7} {row['grown']:>6} "
            f"{row['mean_ms_per_cycle']:>9} {row['mean_cpu_ms_per_cycle']:>7} "
            f"{row['decisions_per_s']:>12}"
        )


def _write(
    steady: list[dict[str, object]],
    placement: list[dict[str, object]],
    rows: list[dict[str, object]],
) -> None:
    """Write what ran over what an earlier run wrote, row by row."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    report.update(
        benchmark="scheduler_throughput",
        python=platform.python_version(),
        machine=platform.machine(),
    )
    for part, fresh, key in (
        ("results", rows, ("mix", "nodes")),
        ("steady", steady, ("scoring", "cluster")),
        ("placement", placement, ("scoring",)),
    ):
        kept = {tuple(row[k] for k in key): row for row in report.get(part, [])}
        kept.update({tuple(row[k] for k in key): row for row in fresh})
        report[part] = list(kept.values())
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
