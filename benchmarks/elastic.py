"""Elastic resize and recovery: tidemill in place vs torchrun's restart, one run, one script.

Both sides train benchmarks/elastic_train.py (a small MLP, fixed global batch split
across the ranks, ~20-50 ms a step, one thread per rank, gloo) on this machine. Each
round starts a fresh side at 2 workers and puts it through the same events; the sides
alternate round by round, so both meet the same background load:

- ``scale_out_2_to_4``: request -> first step completed at world size 4;
- ``kill_worker``: kill -9 of one worker at world size 4 -> first step completed by a
  group formed after the kill (any size: tidemill's survivors go on at 3, torchrun
  restarts all 4);
- ``kill_back_to_4``: the same kill -> first step at world size 4 again (tidemill: a
  replacement joined; torchrun: the same as ``kill_worker``);
- ``scale_in_4_to_2``: request -> first step completed at world size 2.

tidemill: a real ``tidemill server``, an elastic job (minReplicas 2, maxReplicas 4),
``POST /jobs/{name}/scale``, pids from the API; its defaults (settle 0.3 s, restart
backoff 1 s). torchrun: ``--nnodes=2:4`` agents with c10d rendezvous at its fastest
reasonable settings (see benchmarks/elastic_sides.py); scale-out starts two agents,
scale-in SIGTERMs two, the kill hits an agent's worker, which resumes from the
checkpoint rank 0 writes every ``--commit-every`` steps (tidemill commits in memory
at the same interval).

Each figure is a median. Next to it: the stall (from the old group's last completed
step to the new group's first: how long training stood still), the steps trained
twice (rolled back to the last commit or checkpoint), and where the time went, from
each process's log lines, in seconds after the request or the kill: ``stopped`` (the
old group's last step), ``born`` (the last new process started), ``built`` (it has
imported torch and built its model and optimizer), ``declared`` (tidemill: the job
master announced the epoch), ``formed`` (the last rank entered the group: process
group built, state received), ``first_step``. ``new_process_s`` (born -> built) is
the cold start of a Python process with torch that both sides pay whenever a process
is added; ``after_built_s`` (built -> first step) is what is left.
Prints a table and writes benchmarks/results/elastic.json.

    python benchmarks/elastic.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from elastic_sides import (
    TORCHRUN_ENV,
    TORCHRUN_MONITOR_S,
    TORCHRUN_RDZV_CONF,
    Tidemill,
    Torchrun,
    sweep,
)

RESULTS = Path(__file__).parent / "results" / "elastic.json"
SCENARIOS = ("scale_out_2_to_4", "scale_in_4_to_2", "kill_worker", "kill_back_to_4")
GOAL_RATIO = 10.0
STEADY_STEPS = 6
"""Steps every rank must complete at the expected size before the next event."""
EVENT_TIMEOUT_S = 90.0
QUIET_S = 0.3
"""Between events, after the group is steady: nothing happens (step times are taken)."""
GROUP_LOOKBACK_S = 20.0
ORDER_MARGIN_S = 5.0


class Side(Protocol):
    name: str

    def start(self, world: int) -> None: ...
    def ready(self, world: int) -> bool: ...
    def scale(self, world: int) -> float: ...
    def kill_worker(self, victim: int) -> float: ...
    def describe(self) -> str: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Line:
    """One line of a process's log (see benchmarks/elastic_train.py)."""

    event: str
    t: float
    pid: int
    step: int = -1
    world: int = 0
    rank: int = -1
    gen: int = -1

    @property
    def group(self) -> tuple[int, int]:
        return (self.pid, self.gen)


FIELDS = tuple(Line.__dataclass_fields__)


class Events:
    """Every process's JSON lines under one folder, read incrementally."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.lines: list[Line] = []
        self._offsets: dict[Path, int] = {}

    def refresh(self) -> None:
        fresh: list[Line] = []
        for path in sorted(self.folder.glob("*.jsonl")):
            with path.open("rb") as file:
                file.seek(self._offsets.get(path, 0))
                chunk = file.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = self._offsets.get(path, 0) + end
            for raw in chunk[:end].splitlines():
                fields = json.loads(raw)
                fresh.append(Line(**{k: fields[k] for k in FIELDS if k in fields}))
        fresh.sort(key=lambda line: line.t)
        self.lines.extend(fresh)

    def after(self, t: float, event: str | None = None) -> list[Line]:
        """Lines later than ``t``, oldest first. Reads back from the newest line only as
        far as ``t`` (less a margin: batches from different files interleave), so that
        polling costs the window, not the whole run, on a CPU the training needs."""
        found: list[Line] = []
        for line in reversed(self.lines):
            if line.t < t - ORDER_MARGIN_S:
                break
            if line.t > t and (event is None or line.event == event):
                found.append(line)
        found.reverse()
        return found

    def steady(self, world: int, since: float) -> bool:
        """The newest step is at ``world`` and every rank completed enough steps at it."""
        steps = self.after(since, "step")
        if not steps or max(steps, key=lambda x: x.t).world != world:
            return False
        ranks: dict[int, set[int]] = defaultdict(set)
        for line in steps:
            if line.world == world:
                ranks[line.step].add(line.rank)
        return sum(len(r) == world for r in ranks.values()) >= STEADY_STEPS

    def step_ms(self, world: int, since: float) -> float | None:
        """Median time between consecutive steps of one rank at ``world`` since ``since``."""
        by_pid: dict[tuple[int, int], list[float]] = defaultdict(list)
        for line in self.after(since, "step"):
            if line.world == world:
                by_pid[line.group].append(line.t)
        gaps = [b - a for ts in by_pid.values() for a, b in itertools.pairwise(ts)]
        return 1000 * statistics.median(gaps) if gaps else None


@dataclass
class Outcome:
    """One event on one side; times in seconds after the request (or the kill)."""

    seconds: float
    stall_s: float
    steps_redone: int
    world_after: int
    phases: dict[str, float] = field(default_factory=dict)


def wait(
    predicate: Callable[[], object],
    what: str,
    explain: Callable[[], str],
    timeout_s: float = EVENT_TIMEOUT_S,
) -> Any:
    """Poll ``predicate`` until it is truthy; on time-out say what was awaited and how
    things stand (``explain``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}\n{explain()}")


def groups_before(events: Events, t0: float) -> set[tuple[int, int]]:
    """The (pid, gen) groups that trained shortly before ``t0``: an older one is over."""
    events.refresh()
    return {x.group for x in events.after(t0 - GROUP_LOOKBACK_S) if x.t <= t0}


def first_resumed_step(
    events: Events, t0: float, world: int | None, old: set[tuple[int, int]]
) -> Line | None:
    """The first step after ``t0`` by a group formed after ``t0`` (a (pid, gen) pair not
    in ``old``), at ``world`` when given."""
    events.refresh()
    for line in events.after(t0, "step"):
        if line.group not in old and world in (None, line.world):
            return line
    return None


def outcome(events: Events, t0: float, first: Line, declared: float | None) -> Outcome:
    """Where the time between ``t0`` and ``first`` went, from the processes' lines."""
    enters = [x for x in events.after(t0, "enter") if x.world == first.world and x.t <= first.t]
    group = enters[-first.world :]
    pids = {x.pid for x in group}
    began = min(x.t for x in group)
    before = [x for x in events.after(t0 - GROUP_LOOKBACK_S, "step") if x.t < began]
    stopped = max(before, key=lambda x: x.t) if before else None
    phases: dict[str, float] = {}
    for name, event in (("born", "start"), ("built", "built")):
        marks = [x.t for x in events.after(t0, event) if x.pid in pids]
        if marks:
            phases[name] = max(marks) - t0
    if declared is not None:
        phases["declared"] = declared - t0
    phases["formed"] = max(x.t for x in group) - t0
    phases["first_step"] = first.t - t0
    if stopped is not None:
        phases["stopped"] = stopped.t - t0
    return Outcome(
        seconds=round(first.t - t0, 3),
        stall_s=round(first.t - (stopped.t if stopped else t0), 3),
        steps_redone=max(0, stopped.step - first.step + 1) if stopped else 0,
        world_after=first.world,
        phases={k: round(v, 3) for k, v in phases.items()},
    )


class Record:
    """Every outcome and steady step time of one side, over all rounds."""

    def __init__(self) -> None:
        self.outcomes: dict[str, list[Outcome]] = defaultdict(list)
        self.step_ms: dict[int, list[float]] = defaultdict(list)


class Round:
    """One round on a fresh side: start at 2, scale out, kill -9, scale in."""

    def __init__(self, side: Side, events: Events, record: Record) -> None:
        self.side = side
        self.events = events
        self.record = record

    def run(self, victim: int) -> None:
        self.side.start(2)
        self.settle(2, since=0.0)
        self.measure("scale_out_2_to_4", self.side.scale(4), world=4)
        killed = self.side.kill_worker(victim)
        self.measure("kill_worker", killed, world=None)
        self.measure("kill_back_to_4", killed, world=4)
        self.measure("scale_in_4_to_2", self.side.scale(2), world=2)

    def measure(self, scenario: str, t0: float, world: int | None) -> None:
        """Wait for the first step of a group formed after ``t0`` (at ``world``) and
        record how long it took; then, given ``world``, wait until it is steady."""
        old = groups_before(self.events, t0)
        first: Line = wait(
            lambda: first_resumed_step(self.events, t0, world, old),
            f"{self.side.name}: the first step after {scenario}",
            self.side.describe,
        )
        declared = None
        if isinstance(self.side, Tidemill):
            declared = self.side.epoch_declared(first.gen)
        self.record.outcomes[scenario].append(outcome(self.events, t0, first, declared))
        if world is not None:
            self.settle(world, since=first.t)

    def settle(self, world: int, since: float) -> None:
        """Wait until ``world`` ranks train steadily and the side shows ``world`` workers."""

        def steady() -> bool:
            self.events.refresh()
            return self.events.steady(world, since) and self.side.ready(world)

        what = f"{self.side.name} to train steadily at world size {world}"
        wait(steady, what, self.side.describe)
        quiet = time.time()
        time.sleep(QUIET_S)
        self.events.refresh()
        ms = self.events.step_ms(world, quiet)
        if ms is not None:
            self.record.step_ms[world].append(ms)


def run_round(
    kind: type[Tidemill] | type[Torchrun],
    folder: Path,
    args: argparse.Namespace,
    round_: int,
    record: Record,
) -> None:
    """One round of ``kind`` in a folder of its own; every process it started is gone after."""
    side_dir = folder / f"{kind.name}-{round_}"
    log_dir = side_dir / "log"
    log_dir.mkdir(parents=True)
    train_args = ["--batch", str(args.batch), "--commit-every", str(args.commit_every)]
    side = kind(side_dir, log_dir, train_args)
    started = time.monotonic()
    try:
        Round(side, Events(log_dir), record).run(victim=1 + round_ % 3)
    finally:
        side.close()
        sweep(str(side_dir))
    print(
        f"  {kind.name} round {round_ + 1}/{args.rounds} done in "
        f"{time.monotonic() - started:.0f} s",
        flush=True,
    )


def summarise(records: dict[str, Record], args: argparse.Namespace) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    for scenario in SCENARIOS:
        entry: dict[str, Any] = {}
        for name, record in records.items():
            runs = record.outcomes.get(scenario, [])
            if not runs:
                continue
            entry[name] = {
                "median_s": round(statistics.median(r.seconds for r in runs), 3),
                "stall_median_s": round(statistics.median(r.stall_s for r in runs), 3),
                "steps_redone_median": statistics.median(r.steps_redone for r in runs),
                "phases_median_s": median_phases(runs),
                **cold_start(runs),
                "runs": [asdict(r) for r in runs],
            }
        if "tidemill" in entry and "torchrun" in entry:
            ratio = entry["torchrun"]["median_s"] / entry["tidemill"]["median_s"]
            entry["ratio_torchrun_over_tidemill"] = round(ratio, 2)
            entry["goal_met"] = ratio >= GOAL_RATIO
        scenarios[scenario] = entry
    return {
        "scenarios": scenarios,
        "goal": f"tidemill at least {GOAL_RATIO:g}x faster than torchrun in every scenario",
        "step_ms_median": {
            name: {str(w): round(statistics.median(v), 1) for w, v in b.step_ms.items()}
            for name, b in records.items()
        },
        "settings": {
            "rounds": args.rounds,
            "global_batch": args.batch,
            "commit_every_steps": args.commit_every,
            "tidemill": "defaults: settle 0.3 s, restartBackoffSeconds 1, workers cpu 0.1",
            "torchrun": {
                "nnodes": "2:4",
                "nproc_per_node": 1,
                "rdzv_backend": "c10d",
                "rdzv_conf": TORCHRUN_RDZV_CONF,
                "monitor_interval_s": TORCHRUN_MONITOR_S,
                "env": TORCHRUN_ENV,
                "max_restarts": 100,
            },
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "backend": "gloo",
            "load_average_1m_at_end": round(os.getloadavg()[0], 2),
        },
    }


def cold_start(runs: list[Outcome]) -> dict[str, float]:
    """Medians of born -> built and built -> first step, where a process was added."""
    added = [r.phases for r in runs if "born" in r.phases and "built" in r.phases]
    if not added:
        return {}
    return {
        "new_process_s": round(statistics.median(p["built"] - p["born"] for p in added), 3),
        "after_built_s": round(statistics.median(p["first_step"] - p["built"] for p in added), 3),
    }


def median_phases(runs: list[Outcome]) -> dict[str, float]:
    names = {k for r in runs for k in r.phases}
    return {
        k: round(statistics.median(r.phases[k] for r in runs if k in r.phases), 3)
        for k in sorted(
            names, key=lambda k: statistics.median(r.phases[k] for r in runs if k in r.phases)
        )
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"\n{'scenario':<20}{'tidemill s':>12}{'torchrun s':>12}{'ratio':>8}"
        f"{'stall tm s':>12}{'stall tr s':>12}"
    )
    for scenario, entry in summary["scenarios"].items():
        tm, tr = entry.get("tidemill"), entry.get("torchrun")
        cells = [
            f"{tm['median_s']:.2f}" if tm else "-",
            f"{tr['median_s']:.2f}" if tr else "-",
            f"{entry['ratio_torchrun_over_tidemill']:.1f}x" if tr and tm else "-",
            f"{tm['stall_median_s']:.2f}" if tm else "-",
            f"{tr['stall_median_s']:.2f}" if tr else "-",
        ]
        print(
            f"{scenario:<20}{cells[0]:>12}{cells[1]:>12}{cells[2]:>8}{cells[3]:>12}{cells[4]:>12}"
        )
    for scenario, entry in summary["scenarios"].items():
        for name in ("tidemill", "torchrun"):
            if name in entry:
                side = entry[name]
                phases = ", ".join(f"{k} {v:.2f}" for k, v in side["phases_median_s"].items())
                extra = f"; steps redone {side['steps_redone_median']:g}"
                if "new_process_s" in side:
                    extra += (
                        f"; new process {side['new_process_s']:.2f} s, then "
                        f"{side['after_built_s']:.2f} s"
                    )
                print(f"  {scenario} {name}: {phases}{extra}")
    print(f"step ms (median, by world size): {summary['step_ms_median']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024, help="global batch size")
    parser.add_argument("--commit-every", type=int, default=10)
    parser.add_argument("--only", choices=("tidemill", "torchrun"), default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="tidemill-elastic-bench-"))
    started = time.monotonic()
    load_at_start = round(os.getloadavg()[0], 2)
    kinds = [kind for kind in (Tidemill, Torchrun) if args.only in (None, kind.name)]
    records = {kind.name: Record() for kind in kinds}
    print(
        f"{args.rounds} rounds of scale-out 2->4, kill -9 of a worker, scale-in 4->2; "
        f"{' and '.join(records)} alternating, on a fresh side each round",
        flush=True,
    )
    failed = True
    try:
        for round_ in range(args.rounds):
            for kind in kinds:
                run_round(kind, folder, args, round_, records[kind.name])
        failed = False
    finally:
        sweep(str(folder))
        if args.keep or failed:
            print(f"run folder kept (logs of every process): {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    summary = summarise(records, args)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    summary["machine"]["load_average_1m_at_start"] = load_at_start
    print_table(summary)
    if args.only is None:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
