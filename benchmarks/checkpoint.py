"""Checkpoint stall and restore: synchronous torch.save, DCP async_save and tidemill, one run.

For each state size (model parameters plus Adam's two moments, float32, CPU), a loop
of fixed-cost compute steps (matrix products; on one thread by default, so the other
core is free for background writing, as a GPU job's host cores are; all cores with
``--compute-threads 2``, as CPU training) checkpoints with each side:

- ``torch.save``: synchronous ``torch.save({"model": ..., "optimizer": ...})`` on the
  training thread (no fsync, as scripts do it);
- ``dcp.async_save``: DCP's own asynchronous save (``FileSystemWriter``, ``no_dist``),
  called directly; it stages a CPU copy before returning, then writes on a thread;
- ``elastic commit``: ``ElasticState.commit()`` alone, which the elastic runtime does
  anyway at every commit. It copies buffers at once and parameters and optimizer
  state on a thread that the optimizer's next ``step()`` waits for; the stand-in steps
  call no optimizer, so each one ends with that same wait (``state.committed``);
- ``tidemill``: ``commit()``, whose listener calls ``CheckpointWriter.submit()`` as
  the runtime's does (the commit lies in shared memory; the writer process maps it and
  does the DCP save, fsync, CRC-32 as written, manifest and rotation). One untimed
  save first starts the writer process, as a job's first checkpoint does once.

The stall per checkpoint is read off a timeline of steps, each timed alone: a
checkpoint's window starts with the checkpoint call and runs until the side's work
is done (``torch.save`` returned, ``async_save``'s future or tidemill's write done,
the commit's copy done), plus :data:`TAIL_STEPS` more steps for what lingers; the
stall is the window's wall time less what its steps take at the clean pace, the mean
step of :data:`CLEAN_STEPS` steps right before the window and as many right after
(so drift of a shared machine cancels, and steps the checkpoint cannot touch add no
noise). Between windows, untimed, ``os.sync()`` writes dirty pages back (this leaves
torch.save's own writeback uncounted, in its favour). A run has as many checkpoints as
fill ``--run-s`` seconds (at least 3); sides alternate round by round; each figure is
the median over all checkpoints of all rounds. tidemill's stall is reported in total
and over an elastic commit alone (the difference of the two medians).

``held`` is the part of the stall spent inside the checkpoint call itself (the copy
for ``commit`` and ``async_save``, the whole write for ``torch.save``).

Restore to the first step, each in a fresh process with the model and a fresh
optimizer built, after the state was written (page cache warm for both), on the same
compute threads as the steps: ``CheckpointStore.load_newest`` (read: checks,
checksums, DCP load) + ``ElasticState.adopt`` (apply: into the model and optimizer,
keeping the elastic rollback copy) versus ``torch.load`` (read) +
``load_state_dict`` of model and optimizer (apply); then, on both sides, one training
step (forward and backward of a batch of 64, ``optimizer.step()``). The restore time
is to the end of that step: tidemill's optimizer copy runs in the background during
forward and backward and its ``step()`` waits for it, so only the whole counts.

Prints a table with ratios against torch.save and writes
``benchmarks/results/checkpoint.json``; ``--restore-only`` measures restore alone and
only prints. Works in a temporary directory under /tmp.

    python benchmarks/checkpoint.py [--sizes-mb 100,1000] [--rounds 3] [--run-s 30]
        [--restore-rounds 5] [--compute-threads 1] [--restore-only]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from tidemill.checkpoint import CheckpointStore, CheckpointWriter
from tidemill.runtime import ElasticState

RESULTS = Path(__file__).parent / "results" / "checkpoint.json"
GOAL_STALL_RATIO = 0.05
"""The issue's goal: a checkpoint stalls training less than 5% of a synchronous torch.save."""
WIDTH = 1024
"""Hidden size of the model's square layers; the layer count sets the state size."""
WORK = 384
"""Side of the matrices of one compute step (a few tens of ms on one thread)."""
WORK_PRODUCTS = 8
FIRST_STEP_BATCH = 64
"""Rows of the batch of the first training step after a restore."""
SIDES = ("torch.save", "dcp.async_save", "elastic commit", "tidemill")
CLEAN_STEPS = 60
"""Steps timed before and after each checkpoint's window, for the clean pace."""
TAIL_STEPS = 10
"""Steps counted in a window after the side's work is done."""


def build(state_mb: int, *, stepped: bool = True) -> ElasticState:
    """A model of square layers with Adam: after one step, 3 float32 copies of the
    parameters; unstepped (a fresh process about to restore), the parameters only."""
    torch.manual_seed(0)
    layers = max(1, round(state_mb * 1e6 / 12 / (WIDTH * WIDTH + WIDTH)))
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if stepped:
        for parameter in model.parameters():
            parameter.grad = torch.full_like(parameter, 1e-3)
        optimizer.step()
    return ElasticState(model, optimizer, extras={"epoch": 0}, data={"offset": 0})


def state_bytes(state: ElasticState) -> int:
    assert state.optimizer is not None
    params = sum(p.numel() * p.element_size() for p in state.model.parameters())
    return 3 * params


class Compute:
    """One training step's stand-in: fixed matrix products, same cost every step."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(1)
        self.a = torch.randn(WORK, WORK, generator=generator)
        self.b = torch.randn(WORK, WORK, generator=generator) / WORK

    def step(self) -> None:
        x = self.a
        for _ in range(WORK_PRODUCTS):
            x = torch.tanh(x @ self.b)


@dataclass
class Side:
    """What a side does at a checkpoint, whether that checkpoint's work still runs, and
    what the optimizer's step would wait for at the end of each step."""

    checkpoint: Callable[[int], None]
    busy: Callable[[], bool]
    close: Callable[[], None]
    after_step: Callable[[], object] = lambda: None


def side(name: str, state: ElasticState, folder: Path) -> Side:
    folder.mkdir(parents=True, exist_ok=True)
    assert state.optimizer is not None
    optimizer = state.optimizer
    if name == "torch.save":

        def save(i: int) -> None:
            state_dict = {"model": state.model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state_dict, folder / "checkpoint.pt")

        return Side(save, lambda: False, lambda: None)
    if name == "dcp.async_save":
        pending: list[Any] = []

        def async_save(i: int) -> None:
            for future in pending:
                future.result()
            state_dict = {"model": state.model.state_dict(), "optimizer": optimizer.state_dict()}
            writer = dcp.FileSystemWriter(str(folder / f"step-{i}"))
            pending[:] = [dcp.async_save(state_dict, storage_writer=writer, no_dist=True)]

        def busy() -> bool:
            return any(not future.done() for future in pending)

        def wait() -> None:
            for future in pending:
                future.result()

        return Side(async_save, busy, wait)  # closing waits for the last write
    if name == "elastic commit":
        stepped = [True]

        def commit(i: int) -> None:
            state.step = i
            state.commit()
            stepped[0] = False

        def copied() -> None:
            state.committed  # noqa: B018 - waits for the copy, as optimizer.step() does
            stepped[0] = True

        # The first step after a commit ends with the wait for its copy: then it is done.
        return Side(commit, lambda: not stepped[0], lambda: None, copied)
    failures: list[str] = []
    writer = CheckpointWriter(
        CheckpointStore(str(folder), keep=1),
        "bench",
        on_saved=lambda manifest: None,
        on_failed=lambda step, error: failures.append(error),
    )

    # As the runtime's checkpointer does: each commit goes to the writer from a commit
    # listener, before its background copy is done (the writer thread waits for it).
    listener = state.add_commit_listener(writer.submit)
    state.commit()  # warm-up, untimed: a job's writer is already running
    writer.flush(timeout_s=600)

    def submit(i: int) -> None:
        state.step = i
        state.commit()

    def busy() -> bool:
        if failures:
            raise RuntimeError(f"tidemill checkpoint failed: {failures}")
        return writer.busy

    def close() -> None:
        listener.remove()
        writer.close(timeout_s=60)

    return Side(submit, busy, close, commit_copied(state))


def commit_copied(state: ElasticState) -> Callable[[], object]:
    """The wait ``optimizer.step()`` makes for the last commit's background copy (the
    stand-in steps never call it; reading ``committed`` waits for the same copy)."""
    return lambda: state.committed


def loop(compute: Compute, checkpoints: int, chosen: Side) -> tuple[list[float], list[float]]:
    """Stall and time held of each of ``checkpoints`` checkpoints, from a timeline of
    steps: clean steps, the checkpoint's window, clean steps, for each."""
    stalls: list[float] = []
    held: list[float] = []

    def clean() -> list[float]:
        return [timed_step(compute, chosen) for _ in range(CLEAN_STEPS)]

    for index in range(checkpoints):
        before = clean()
        started = time.perf_counter()
        chosen.checkpoint(index + 1)
        held.append(time.perf_counter() - started)
        window = []
        while chosen.busy():
            window.append(timed_step(compute, chosen))
        window += [timed_step(compute, chosen) for _ in range(TAIL_STEPS)]
        took = time.perf_counter() - started
        pace = statistics.fmean(before + clean())
        stalls.append(took - pace * len(window))
        os.sync()
    return stalls, held


def timed_step(compute: Compute, chosen: Side) -> float:
    started = time.perf_counter()
    compute.step()
    chosen.after_step()
    return time.perf_counter() - started


def settle(folder: Path) -> None:
    """Write back dirty pages and remove what a run wrote, so no run pays for another."""
    shutil.rmtree(folder, ignore_errors=True)
    os.sync()


def measure_stall(state_mb: int, rounds: int, run_s: float, root: Path) -> dict[str, Any]:
    state = build(state_mb)
    compute = Compute()
    for _ in range(5):
        compute.step()
    step_s = _timed(lambda: [compute.step() for _ in range(20)]) / 20
    write_steps, write_s = probe_write(state, compute, root / "probe")
    timeline_steps = 2 * CLEAN_STEPS + write_steps + TAIL_STEPS
    checkpoints = max(3, math.ceil(run_s / (timeline_steps * step_s)))

    samples: dict[str, list[float]] = {name: [] for name in SIDES}
    held: dict[str, list[float]] = {name: [] for name in SIDES}
    for round_index in range(rounds):
        order = SIDES if round_index % 2 == 0 else tuple(reversed(SIDES))
        for name in order:
            folder = root / f"{name}-{round_index}"
            chosen = side(name, state, folder)
            stalls, helds = loop(compute, checkpoints, chosen)
            chosen.close()
            settle(folder)
            samples[name] += stalls
            held[name] += helds
    reference = statistics.median(samples["torch.save"])
    rows = [
        {
            "side": name,
            "stall_s": round(statistics.median(values), 4),
            "held_s": round(statistics.median(held[name]), 4),
            "stall_samples_s": [round(v, 4) for v in values],
            "ratio_to_torch_save": round(statistics.median(values) / reference, 4),
        }
        for name, values in samples.items()
    ]
    added = statistics.median(samples["tidemill"]) - statistics.median(samples["elastic commit"])
    rows.append(
        {
            "side": "tidemill over elastic commit",
            "stall_s": round(added, 4),
            "held_s": None,
            "stall_samples_s": [],
            "ratio_to_torch_save": round(added / reference, 4),
        }
    )
    return {
        "state_mb": round(state_bytes(state) / 1e6, 1),
        "step_s": round(step_s, 4),
        "tidemill_write_s": round(write_s, 3),
        "write_steps": write_steps,
        "checkpoints_per_run": checkpoints,
        "stall": rows,
    }


def probe_write(state: ElasticState, compute: Compute, folder: Path) -> tuple[int, float]:
    """Steps and seconds one tidemill checkpoint takes to write while steps run."""
    writer = CheckpointWriter(CheckpointStore(str(folder)), None, lambda m: None, print)
    listener = state.add_commit_listener(writer.submit)
    state.commit()  # starts the writer process
    writer.flush(timeout_s=600)
    state.step += 1
    started = time.perf_counter()
    state.commit()
    steps = 0
    while writer.busy:
        compute.step()
        steps += 1
    write_s = time.perf_counter() - started
    listener.remove()
    writer.close(timeout_s=60)
    settle(folder)
    return steps, write_s


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def restore_worker(how: str, location: str, state_mb: int) -> None:
    """In a fresh process: build the model and optimizer, then time the restore through
    the end of the first training step."""
    state = build(state_mb, stepped=False)
    assert state.optimizer is not None
    batch = torch.randn(FIRST_STEP_BATCH, WIDTH, generator=torch.Generator().manual_seed(2))
    started = time.perf_counter()
    if how == "torch.load":
        saved = torch.load(location, weights_only=False)
        read_s = time.perf_counter() - started
        state.model.load_state_dict(saved["model"])
        state.optimizer.load_state_dict(saved["optimizer"])
    else:
        loaded = CheckpointStore(location).load_newest(state.model, state.optimizer)
        if loaded.committed is None:
            raise RuntimeError(f"nothing loaded from {location}: {loaded.skipped}")
        read_s = time.perf_counter() - started
        state.adopt(loaded.committed)
    applied_s = time.perf_counter() - started
    state.model(batch).square().mean().backward()
    state.optimizer.step()
    total_s = time.perf_counter() - started
    report = {"restore_s": total_s, "read_s": read_s, "apply_s": applied_s - read_s}
    print(json.dumps({**report, "first_step_s": total_s - applied_s}))


def measure_restore(state_mb: int, rounds: int, threads: int, root: Path) -> dict[str, Any]:
    state = build(state_mb)
    assert state.optimizer is not None
    state.commit()
    measured_mb = round(state_bytes(state) / 1e6, 1)
    folder = root / "restore"
    folder.mkdir(parents=True, exist_ok=True)
    saved = {"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()}
    torch.save(saved, folder / "checkpoint.pt")
    CheckpointStore(str(folder / "tidemill")).save(state.committed)
    del state, saved
    os.sync()
    places = {"torch.load": str(folder / "checkpoint.pt"), "tidemill": str(folder / "tidemill")}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in places}
    for round_index in range(rounds):
        order = list(places) if round_index % 2 == 0 else list(reversed(places))
        for name in order:
            argv = [sys.executable, __file__, "--restore-worker", name, places[name]]
            done = subprocess.run(
                [*argv, str(state_mb), str(threads)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"restore worker {name} failed:\n{done.stderr}")
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    settle(folder)
    reference = statistics.median(run["restore_s"] for run in runs["torch.load"])
    rows = []
    for name, samples in runs.items():
        restore_s = statistics.median(run["restore_s"] for run in samples)
        rows.append(
            {
                "side": name,
                "restore_s": round(restore_s, 4),
                "read_s": round(statistics.median(run["read_s"] for run in samples), 4),
                "apply_s": round(statistics.median(run["apply_s"] for run in samples), 4),
                "first_step_s": round(statistics.median(run["first_step_s"] for run in samples), 4),
                "samples_s": [round(run["restore_s"], 4) for run in samples],
                "ratio_to_torch_load": round(restore_s / reference, 4),
            }
        )
    return {"state_mb": measured_mb, "restore": rows}


def print_size(result: dict[str, Any]) -> None:
    if "stall" not in result:
        print(f"\nstate {result['state_mb']} MB")
    else:
        print(
            f"\nstate {result['state_mb']} MB: step {result['step_s'] * 1000:.1f} ms,"
            f" {result['checkpoints_per_run']} checkpoints per side and round, tidemill write"
            f" {result['tidemill_write_s']} s ({result['write_steps']} steps)"
        )
        print(f"{'side':<30} {'stall s':>9} {'held s':>8} {'vs torch.save':>14}")
        for row in result["stall"]:
            held = "" if row["held_s"] is None else f"{row['held_s']:.4f}"
            print(
                f"{row['side']:<30} {row['stall_s']:>9.4f} {held:>8} "
                f"{row['ratio_to_torch_save']:>13.1%}"
            )
    print(
        f"{'restore to first step':<30} {'total s':>9} {'read s':>8} {'apply s':>8}"
        f" {'step s':>8} {'vs torch.load':>14}"
    )
    for row in result["restore"]:
        print(
            f"{row['side']:<30} {row['restore_s']:>9.3f} {row['read_s']:>8.3f} "
            f"{row['apply_s']:>8.3f} {row['first_step_s']:>8.3f}"
            f" {row['ratio_to_torch_load']:>13.2f}x"
        )


def verdict(results: list[dict[str, Any]]) -> dict[str, bool]:
    def stall_of(result: dict[str, Any], name: str) -> float:
        return float(next(r for r in result["stall"] if r["side"] == name)["ratio_to_torch_save"])

    def restore_of(result: dict[str, Any]) -> float:
        return float(
            next(r for r in result["restore"] if r["side"] == "tidemill")["ratio_to_torch_load"]
        )

    goals = {"restore_no_slower_than_torch_load": all(restore_of(r) <= 1.0 for r in results)}
    if all("stall" in r for r in results):
        goals = {
            "stall_total_under_5pct": all(
                stall_of(r, "tidemill") < GOAL_STALL_RATIO for r in results
            ),
            "stall_over_commit_under_5pct": all(
                stall_of(r, "tidemill over elastic commit") < GOAL_STALL_RATIO for r in results
            ),
            **goals,
        }
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="100,1000", help="state sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the stall loops")
    parser.add_argument("--restore-rounds", type=int, default=5)
    parser.add_argument(
        "--run-s", type=float, default=30.0, help="least seconds of steps per side and round"
    )
    parser.add_argument(
        "--compute-threads",
        type=int,
        default=1,
        help="torch threads of the compute steps (1: the other cores are free, as a GPU"
        " node's host cores are; all cores: CPU training)",
    )
    parser.add_argument(
        "--restore-only",
        action="store_true",
        help="measure restore alone (no stall loops); prints, writes no results file",
    )
    parser.add_argument("--restore-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.restore_worker:
        how, location, state_mb, threads = args.restore_worker
        torch.set_num_threads(int(threads))
        restore_worker(how, location, int(state_mb))
        return
    torch.set_num_threads(args.compute_threads)
    # DCP's single-process notice, printed at every direct async_save of the baseline.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")

    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="tidemill-bench-checkpoint-", dir="/tmp") as tmp:
        for state_mb in (int(size) for size in args.sizes_mb.split(",")):
            result: dict[str, Any] = {}
            if not args.restore_only:
                result = measure_stall(state_mb, args.rounds, args.run_s, Path(tmp))
            result.update(
                measure_restore(state_mb, args.restore_rounds, args.compute_threads, Path(tmp))
            )
            results.append(result)
            print_size(result)
    goals = verdict(results)
    shown = (f"{name} {'met' if met else 'NOT met'}" for name, met in goals.items())
    print("\ngoals: " + ", ".join(shown))
    if args.restore_only:
        print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
        return
    report = {
        "benchmark": "checkpoint",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "compute_threads": args.compute_threads,
        "rounds": args.rounds,
        "restore_rounds": args.restore_rounds,
        "run_s": args.run_s,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "goals": goals,
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
