"""How long big gangs wait under sustained load, with and without reservations.

A 48-node cluster of 8 GPUs each runs a stream of small jobs (1, 2 or 4 GPUs, half an
hour on average, each with an activeDeadlineSeconds 1.5 times its real runtime) that
keeps it about 97% busy, plus a 16-GPU gang (two 8-GPU pods, three minutes of work)
every two hours. ``schedule()`` runs once a simulated minute with the time, the
reservations of the last cycle, and what each running job is expected to end by.

Without reservations each GPU that frees is taken by a small job, so a gang waits for
a lull; with them, a gang that waited past the bound gets room held and only jobs that
end in time backfill into it. Prints a table and writes
``benchmarks/results/starvation.json``.

    python benchmarks/starvation.py [--hours 48] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    NodeInfo,
    PodRequest,
    QueueInfo,
    Reservation,
    RunningJob,
    SchedulerConfig,
    schedule,
)

GIB = 2**30
NODES = 48
GPUS_PER_NODE = 8
CYCLE_S = 60.0
GANG_EVERY_S = 2 * 3600.0
GANG_RUNTIME_S = 180.0
SMALL_MEAN_S = 1800.0
LOAD = 0.97
RESULTS = Path(__file__).parent / "results" / "starvation.json"


@dataclass(frozen=True)
class Arrival:
    at: float
    request: JobRequest
    runtime_s: float
    """How long it really runs (its deadline says 1.5 times as much)."""


def arrivals(hours: float, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    sizes = (1, 2, 4)
    mean_gpus = sum(sizes) / len(sizes)
    per_s = LOAD * NODES * GPUS_PER_NODE / (mean_gpus * SMALL_MEAN_S)
    out: list[Arrival] = []
    at, sequence = 0.0, 0
    end = hours * 3600
    while at < end:
        at += rng.expovariate(per_s)
        gpus = rng.choice(sizes)
        runtime = max(60.0, rng.expovariate(1 / SMALL_MEAN_S))
        sequence += 1
        pod = PodRequest(
            "worker", 0, cpu_millis=gpus * 4000, memory_bytes=gpus * 32 * GIB, gpu=gpus
        )
        request = JobRequest(
            f"small-{sequence}", "default", 0, sequence, (pod,), runtime_s=1.5 * runtime
        )
        out.append(Arrival(at, request, runtime))
    gang_at = GANG_EVERY_S
    while gang_at < end:
        sequence += 1
        pods = tuple(
            PodRequest("worker", i, cpu_millis=32_000, memory_bytes=256 * GIB, gpu=8)
            for i in range(2)
        )
        request = JobRequest(
            f"gang-{sequence}", "default", 0, sequence, pods, runtime_s=2 * GANG_RUNTIME_S
        )
        out.append(Arrival(gang_at, request, GANG_RUNTIME_S))
        gang_at += GANG_EVERY_S
    return sorted(out, key=lambda a: a.at)


def simulate(hours: float, seed: int, reserve_after_s: float | None) -> dict[str, float]:
    nodes = tuple(
        NodeInfo(f"n{i}", cpu_millis=64_000, memory_bytes=512 * GIB, gpus=GPUS_PER_NODE)
        for i in range(NODES)
    )
    queues = {"default": QueueInfo("default")}
    config = SchedulerConfig(reserve_after_s=reserve_after_s)
    incoming = arrivals(hours, seed)
    runtime = {a.request.key: a.runtime_s for a in incoming}
    pending: dict[str, JobRequest] = {}
    running: dict[str, tuple[RunningJob, float]] = {}
    reservations: tuple[Reservation, ...] = ()
    waits: dict[str, list[float]] = {"gang": [], "small": []}
    now, next_arrival = 0.0, 0
    end = hours * 3600
    while now < end or any(k.startswith("gang") for k in pending):
        while next_arrival < len(incoming) and incoming[next_arrival].at <= now:
            arrival = incoming[next_arrival]
            pending[arrival.request.key] = replace(arrival.request, waiting_since=arrival.at)
            next_arrival += 1
        for key in [k for k, (_, ends) in running.items() if ends <= now]:
            del running[key]
        state = ClusterState(
            nodes,
            queues,
            tuple(job for job, _ in running.values()),
            now=now,
            reservations=reservations,
        )
        decisions = schedule(state, list(pending.values()), config)
        reservations = tuple(decisions.reservations)
        for bind in decisions.binds:
            job = pending.pop(bind.job)
            waits[job.key.split("-")[0]].append(now - (job.waiting_since or 0.0))
            placed = RunningJob(
                job.key,
                job.queue,
                job.priority,
                job.sequence,
                bind.placements,
                started_at=now,
                expected_end=now + (job.runtime_s or 0.0),
            )
            running[job.key] = (placed, now + runtime[job.key])
        now += CYCLE_S
        if now > 20 * end:
            break
    never = sum(1 for k in pending if k.startswith("gang"))
    return {
        "gangs": len(waits["gang"]) + never,
        "gangs_never_started": never,
        "gang_wait_max_h": max(waits["gang"], default=0.0) / 3600,
        "gang_wait_mean_h": statistics.fmean(waits["gang"]) / 3600 if waits["gang"] else 0.0,
        "small_wait_mean_min": statistics.fmean(waits["small"]) / 60,
        "small_wait_p99_min": _p99(waits["small"]) / 60,
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=48.0, help="simulated hours of arrivals")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = {
        "no reservations": simulate(args.hours, args.seed, None),
        "reserve after 1h": simulate(args.hours, args.seed, 3600.0),
    }
    print(
        f"{'policy':<18} {'gangs':>5} {'never':>5} {'gang max h':>10} {'gang mean h':>11} "
        f"{'small mean min':>14} {'small p99 min':>13}"
    )
    for name, r in rows.items():
        print(
            f"{name:<18} {r['gangs']:>5.0f} {r['gangs_never_started']:>5.0f} "
            f"{r['gang_wait_max_h']:>10.2f} {r['gang_wait_mean_h']:>11.2f} "
            f"{r['small_wait_mean_min']:>14.1f} {r['small_wait_p99_min']:>13.1f}"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"hours": args.hours, "seed": args.seed, **rows}, indent=2))


if __name__ == "__main__":
    main()
