"""What topology packing costs a scheduling cycle.

10,000 nodes of 8 GPUs (500 racks of 20, 10 zones), every other node half held; a
backlog of 300 gangs of 16 pods x 1-4 GPUs. The same cycle runs with no topology asked,
with every gang packed within a rack (required); then gangs of 48 pods, as they are
and with a rack preferred (half of them are wider than any rack's free room, so they
fall back to one zone). The
figure is the time ``schedule()`` takes, best of ``--repeats``; the snapshot is built
once outside it. Prints a table and writes ``benchmarks/results/scheduler_topology.json``.

    python benchmarks/scheduler_topology.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from tidemill.scheduler import (
    ClusterState,
    JobRequest,
    NodeInfo,
    Placement,
    PodRequest,
    QueueInfo,
    RunningJob,
    SchedulerConfig,
    TopologyRequest,
    schedule,
)

NODES = 10_000
RACK_NODES = 20
ZONE_NODES = 1_000
BACKLOG = 300
RESULTS = Path(__file__).parent / "results" / "scheduler_topology.json"


def snapshot() -> ClusterState:
    nodes = tuple(
        NodeInfo(
            f"n{i}",
            cpu_millis=64_000,
            memory_bytes=512 * 2**30,
            gpus=8,
            labels={"rack": f"r{i // RACK_NODES}", "zone": f"z{i // ZONE_NODES}"},
        )
        for i in range(NODES)
    )
    held = tuple(
        RunningJob(
            f"held/{i}",
            "q",
            0,
            i,
            (Placement("worker", 0, f"n{i}", 1_000, 2**30, (0, 1, 2, 3), 1.0),),
        )
        for i in range(1, NODES, 2)
    )
    return ClusterState(nodes, {"q": QueueInfo("q")}, held, topology=("rack", "zone"))


def backlog(packing: TopologyRequest | None, pods: int) -> list[JobRequest]:
    return [
        JobRequest(
            f"q/j{k}",
            "q",
            0,
            k,
            tuple(
                PodRequest("worker", i, 1_000, 2**30, gpu=1 + k % 4, topology=packing)
                for i in range(pods)
            ),
        )
        for k in range(BACKLOG)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    state = snapshot()
    config = SchedulerConfig(preemption=False)
    cases = {
        "no topology": backlog(None, 16),
        "packWithin rack, required": backlog(TopologyRequest("rack", required=True), 16),
        "no topology, 48-pod gangs": backlog(None, 48),
        "packWithin rack, preferred, 48-pod gangs": backlog(TopologyRequest("rack"), 48),
    }
    rows = []
    for name, jobs in cases.items():
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            decisions = schedule(state, jobs, config)
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "case": name,
                "cycle_s": round(min(times), 3),
                "bound": len(decisions.binds),
                "pending": len(decisions.pending),
                "noted": sum(1 for b in decisions.binds if b.note),
            }
        )
    print(f"{'case':<42} {'cycle s':>8} {'bound':>6} {'pending':>8} {'noted':>6}")
    for row in rows:
        print(
            f"{row['case']:<42} {row['cycle_s']:>8.3f} {row['bound']:>6} {row['pending']:>8} "
            f"{row['noted']:>6}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"nodes": NODES, "backlog": BACKLOG, "python": platform.python_version(), "rows": rows},
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
