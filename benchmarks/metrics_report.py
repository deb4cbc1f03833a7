"""What ``tidemill.runtime.report`` costs a training step, side by side in one run.

A real job master process (state in a file) and one elastic worker process. The worker
trains a fixed CPU step (a float32 matmul chain sized to ``--step-ms``) in alternating
blocks of ``--block`` steps: without reports, then with ``--per-step`` reports of three
scalars per step (at a 20 ms step, one a step is 50 reports/s), round after round, so
both arms see the same machine (on a shared machine the arms still differ by its noise:
the time spent inside ``report()`` itself is measured too, and is the floor). The
master receives every batch, rate-limits, writes TensorBoard event files and hands the
reports on (to a file). Goal: under 1% at 50 reports/s per rank. Prints a table and
writes benchmarks/results/metrics_report.json.

    python benchmarks/metrics_report.py [--step-ms 20] [--rounds 100] [--block 10]
        [--per-step 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tidemill.engines.local import free_port

RESULTS = Path(__file__).parent / "results" / "metrics_report.json"
WORKER = r"""
import json, sys, time
import torch
import tidemill.runtime as rt
from tidemill.runtime import ElasticState, elastic

step_ms, rounds, block, per_step = float(sys.argv[1]), *map(int, sys.argv[2:5])
torch.set_num_threads(1)
a = torch.randn(192, 192)

def work(n):
    x = a
    for _ in range(n):
        x = torch.tanh(x @ a)
    return float(x[0, 0])

work(200)
start = time.perf_counter(); work(500); per_matmul = (time.perf_counter() - start) / 500
repeats = max(1, round(step_ms / 1000 / per_matmul))
model = torch.nn.Linear(1, 1)
state = ElasticState(model)
times = {"off": [], "on": [], "in_report": []}

@elastic(state)
def train(ctx):
    last = time.perf_counter()
    for _ in ctx.steps(until=2 * rounds * block):
        arm = "on" if (state.step // block) % 2 else "off"
        value = work(repeats)
        if arm == "on":
            called = time.perf_counter()
            for k in range(per_step):
                rt.report(state.step, loss=value, accuracy=0.5, lr=0.01 * k)
            times["in_report"].append(time.perf_counter() - called)
        state.step += 1
        now = time.perf_counter()
        times[arm].append(now - last)
        last = now

train()
print("RESULT " + json.dumps(times))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--per-step", type=int, default=1, help="report() calls per step")
    args = parser.parse_args()
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDEMILL_")}
    with tempfile.TemporaryDirectory() as folder:
        master_env = {
            **base,
            "TIDEMILL_JOB": "bench/metrics",
            "TIDEMILL_MASTER_PORT": str(port),
            "TIDEMILL_ELASTIC_MIN": "1",
            "TIDEMILL_ELASTIC_MAX": "1",
            "TIDEMILL_MASTER_STATE_FILE": str(Path(folder) / "master.json"),
            "TIDEMILL_TENSORBOARD_DIR": str(Path(folder) / "tb"),
        }
        master = subprocess.Popen(
            [sys.executable, "-m", "tidemill.master"],
            env=master_env,
            stderr=subprocess.DEVNULL,
        )
        worker_env = {
            **base,
            "TIDEMILL_JOB": "bench/metrics",
            "TIDEMILL_ROLE": "worker",
            "TIDEMILL_INDEX": "0",
            "TIDEMILL_ELASTIC": "1",
            "TIDEMILL_MASTER_ADDR": f"127.0.0.1:{port}",
        }
        try:
            argv = [str(args.step_ms), str(args.rounds), str(args.block), str(args.per_step)]
            done = subprocess.run(
                [sys.executable, "-c", WORKER, *argv],
                env=worker_env,
                capture_output=True,
                text=True,
                timeout=1800,
                check=False,
            )
            time.sleep(2.5)  # the master's last forward of the reports
        finally:
            master.terminate()
            master.wait(timeout=30)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit(f"the worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
        times = json.loads(lines[0].removeprefix("RESULT "))
        metrics_file = Path(folder) / "master.json.metrics"
        forwarded = sum(1 for _ in metrics_file.open()) if metrics_file.exists() else 0
    # The first block of each arm warms up.
    off, on = times["off"][args.block :], times["on"][args.block :]
    in_report = times["in_report"][args.block :]
    in_report_ms = statistics.fmean(in_report) * 1000
    median_call_us = statistics.median(in_report) / args.per_step * 1e6
    off_ms, on_ms = statistics.median(off) * 1000, statistics.median(on) * 1000
    off_mean, on_mean = statistics.fmean(off) * 1000, statistics.fmean(on) * 1000
    rate = args.per_step / (on_mean / 1000)
    result = {
        "step_ms_target": args.step_ms,
        "steps_per_arm": len(off),
        "reports_per_step": args.per_step,
        "reports_per_s_per_rank": round(rate, 1),
        "median_step_ms_without": round(off_ms, 3),
        "median_step_ms_with": round(on_ms, 3),
        "mean_step_ms_without": round(off_mean, 3),
        "mean_step_ms_with": round(on_mean, 3),
        "overhead_median_percent": round((on_ms - off_ms) / off_ms * 100, 2),
        "overhead_mean_percent": round((on_mean - off_mean) / off_mean * 100, 2),
        "ms_in_report_per_step": round(in_report_ms, 4),
        "median_us_per_report_call": round(median_call_us, 2),
        "in_report_percent_of_step": round(in_report_ms / off_mean * 100, 3),
        "reports_forwarded_by_master": forwarded,
        "goal": "overhead under 1% at 50 reports/s per rank",
    }
    print(f"{'':24}{'without':>10}{'with':>10}")
    print(f"{'median step (ms)':24}{off_ms:>10.3f}{on_ms:>10.3f}")
    print(f"{'mean step (ms)':24}{off_mean:>10.3f}{on_mean:>10.3f}")
    print(
        f"reports/s per rank: {rate:.1f}; overhead: median "
        f"{result['overhead_median_percent']:+.2f}%, mean {result['overhead_mean_percent']:+.2f}%; "
        f"reports the master forwarded: {forwarded}"
    )
    print(
        f"time inside report() per step: {in_report_ms * 1000:.1f} us mean "
        f"({result['in_report_percent_of_step']:.3f}% of a step); one call, median: "
        f"{median_call_us:.1f} us"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
