"""How long a new Python replica takes to start: cold interpreter vs warm fork server.

Measures the time from ``LocalEngine.launch()`` to the first line a replica prints,
for a script that imports torch (as a training worker does) and then prints. Cold:
a fresh interpreter under the supervisor. Warm: a fork of the engine's fork server,
which imported torch once (a first, cold launch starts it; the time until it serves is
reported separately). Single launches run one after another; a burst launches several
at once, as a scale-out does, and counts until the last one has printed.

Prints a table and writes ``benchmarks/results/replica_start.json``.

    python benchmarks/replica_start.py [--repeats 7] [--burst 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from tidemill.engines.base import LaunchSpec, ReplicaHandle
from tidemill.engines.local import LocalEngine

RESULTS = Path(__file__).parent / "results" / "replica_start.json"
SCRIPT = "import torch\nprint('first line', torch.__version__, flush=True)\n"
FIRST_LINE = "first line"
TIMEOUT_S = 120.0
POLL_S = 0.001


@dataclass
class Runner:
    engine: LocalEngine
    work_dir: Path
    launched: int = 0

    def launch(self) -> ReplicaHandle:
        self.launched += 1
        spec = LaunchSpec(
            job="bench/replica-start",
            job_uid="bench",
            launch_id=uuid.uuid4().hex,
            role="worker",
            index=self.launched,
            argv=("python", "first_line.py"),
            env={},
            working_dir=str(self.work_dir),
            node="local",
        )
        return self.engine.launch(spec)

    def seconds_to_first_lines(self, count: int) -> float:
        """Launch ``count`` replicas at once; seconds until every one has printed."""
        started = time.perf_counter()
        handles = [self.launch() for _ in range(count)]
        waiting = {str(self.engine.log_path(h)) for h in handles}
        while waiting:
            waiting = {log for log in waiting if FIRST_LINE not in Path(log).read_text()}
            if time.perf_counter() - started > TIMEOUT_S:
                raise RuntimeError(f"no first line after {TIMEOUT_S:g}s in {sorted(waiting)}")
            time.sleep(POLL_S)
        elapsed = time.perf_counter() - started
        for handle in handles:
            while (seen := self.engine.observe(handle)).running:
                time.sleep(POLL_S)
            if seen.exit_code != 0:
                raise RuntimeError(f"replica failed; see {self.engine.log_path(handle)}")
        return elapsed


def summary(mode: str, kind: str, samples: list[float]) -> dict[str, object]:
    return {
        "mode": mode,
        "launch": kind,
        "repeats": len(samples),
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--burst", type=int, default=4, help="replicas launched at once")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tidemill-bench-") as tmp:
        work = Path(tmp, "work")
        work.mkdir()
        (work / "first_line.py").write_text(SCRIPT)
        cold = Runner(LocalEngine(Path(tmp, "cold"), warm_start=False), work)
        warm_engine = LocalEngine(Path(tmp, "warm"))
        warm = Runner(warm_engine, work)
        try:
            started = time.perf_counter()
            warm.seconds_to_first_lines(1)  # starts cold, and starts the fork server
            if warm_engine.fork_server is None:
                raise RuntimeError("warm start is off: unset TIDEMILL_WARM_START")
            warm_engine.fork_server.wait_ready(TIMEOUT_S)
            server_start_s = time.perf_counter() - started
            results = []
            for mode, runner in (("cold", cold), ("warm", warm)):
                singles = [runner.seconds_to_first_lines(1) for _ in range(args.repeats)]
                results.append(summary(mode, "single", singles))
                bursts = [runner.seconds_to_first_lines(args.burst) for _ in range(3)]
                results.append(summary(mode, f"burst of {args.burst}", bursts))
        finally:
            warm_engine.close()

    print(f"launch() to first line of `{SCRIPT.splitlines()[0]}; print(...)`")
    print(f"fork server serving {server_start_s:.3f} s after the first launch started it")
    print(f"{'mode':<6} {'launch':<12} {'median s':>9} {'min s':>8} {'max s':>8}")
    for row in results:
        print(
            f"{row['mode']:<6} {row['launch']:<12} {row['median_s']:>9.3f} "
            f"{row['min_s']:>8.3f} {row['max_s']:>8.3f}"
        )
    by = {(str(r["mode"]), str(r["launch"])): float(str(r["median_s"])) for r in results}
    speedup = by[("cold", "single")] / by[("warm", "single")]
    print(f"warm start is {speedup:.0f}x faster for a single replica")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "replica_start",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "script": SCRIPT,
        "fork_server_start_s": round(server_start_s, 4),
        "results": results,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
