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

A decision is a job bound or given a pending reason. Prints a table and writes
``benchmarks/results/scheduler_throughput.json``.

    python benchmarks/scheduler_throughput.py [--repeats 3]
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
)

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
    decisions = Decisions()
    for _ in range(repeats):
        started = time.perf_counter()
        decisions = schedule(state, requests, config)
        seconds.append(time.perf_counter() - started)
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
        "decisions_per_s": round(decided / mean_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed cycles per cluster size")
    args = parser.parse_args()
    rows = [measure(scenario, args.repeats) for scenario in SCENARIOS]
    header = (
        f"{'mix':>7} {'nodes':>7} {'running':>8} {'backlog':>8} {'bound':>6} {'pending':>8} "
        f"{'preempted':>9} {'shrunk':>7} {'grown':>6} {'ms/cycle':>9} {'decisions/s':>12}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['mix']:>7} {row['nodes']:>7} {row['running_jobs']:>8} "
            f"{row['backlog_jobs']:>8} {row['bound']:>6} {row['pending']:>8} "
            f"{row['preempted']:>9} {row['shrunk']:>7} {row['grown']:>6} "
            f"{row['mean_ms_per_cycle']:>9} {row['decisions_per_s']:>12}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "scheduler_throughput",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": rows,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
