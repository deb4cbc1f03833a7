"""``tidemill simulate``: replay a trace on a virtual cluster through several policies.

Needs no server: it reads the trace and the cluster file, replays the trace through
each policy (tidemill's ``schedule`` and the baselines), prints a comparison table and
writes ``summary.json`` and PNG plots into ``--out``. A bad row in either file stops
it with the file, the line and what is wrong (exit 2), like ``tidemill validate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tidemill.cli import units
from tidemill.cli.common import fail, reports_errors, say, stdout_console
from tidemill.cli.exit_codes import EXIT_INVALID

FIRST_SEED = 42
"""The FGD paper's seeds are 42-51."""
POLICY_NAMES = (
    "tidemill",
    "first-fit",
    "best-fit",
    "fifo",
    "tidemill-best-fit",
    "tidemill-fragmentation",
)
"""``tidemill.scheduler.sim.POLICIES`` by name, spelled out so that every other command
starts without importing the scheduler and numpy (a test keeps the two equal)."""
DEFAULT_POLICY_NAMES = POLICY_NAMES[:3]


@reports_errors
def simulate(
    trace: Annotated[
        Path,
        typer.Option(
            "--trace",
            help="Trace: the simple CSV (timestamp,duration,gpus,queue) or an openb pod list.",
        ),
    ],
    cluster: Annotated[
        Path,
        typer.Option(
            "--cluster",
            help="Cluster: a cluster YAML (as for `server`) or an openb node list .csv.",
        ),
    ],
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help=f"Policy to replay ({', '.join(POLICY_NAMES)}); repeat to compare. "
            f"Default: {', '.join(DEFAULT_POLICY_NAMES)}.",
        ),
    ] = None,
    packing: Annotated[
        bool,
        typer.Option(
            "--packing",
            help="Instead of replaying times, fill the cluster as the FGD paper does "
            "(shuffle, top up to 130% GPU demand, never remove) and report GPU allocation.",
        ),
    ] = False,
    seeds: Annotated[
        int,
        typer.Option("--seeds", min=1, max=100, help="--packing: seeds 42, 43, ... to average."),
    ] = 10,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for summary.json and the plots.")
    ] = Path("simulation"),
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots.")] = True,
) -> None:
    """Replay a trace through tidemill's scheduler and baselines on a virtual clock."""
    from tidemill.scheduler.sim import SimInputError, read_cluster, read_policy, read_trace
    from tidemill.scheduler.sim.compare import compare_packing, compare_replays
    from tidemill.scheduler.sim.plots import PlotsUnavailable, write_plots

    names = policy or list(DEFAULT_POLICY_NAMES)
    unknown = [name for name in names if name not in POLICY_NAMES]
    if unknown:
        fail(
            f"--policy: {', '.join(map(repr, unknown))} is not a policy; "
            f"choose from {', '.join(POLICY_NAMES)}",
            code=EXIT_INVALID,
        )
    try:
        state = read_cluster(cluster)
        config = read_policy(cluster)
        jobs = read_trace(trace)
    except SimInputError as exc:
        fail(str(exc), code=EXIT_INVALID)
    if not jobs:
        fail(f"{trace}: holds no jobs; nothing to replay", code=EXIT_INVALID)
    document: dict[str, Any] = {
        "trace": str(trace),
        "cluster": str(cluster),
        "jobs": len(jobs),
        "nodes": len(state.nodes),
        "gpus": sum(n.gpus for n in state.nodes),
    }
    with _progress() as bar:
        tasks = {name: bar.add_task(name, total=None) for name in names}

        def told(name: str, done: int, total: int) -> None:
            bar.update(tasks[name], completed=done, total=total)

        try:
            if packing:
                seed_list = list(range(FIRST_SEED, FIRST_SEED + seeds))
                document["seeds"] = seed_list
                document["packing"] = compare_packing(state, jobs, names, seed_list, told, config)
            else:
                summaries, jcts = compare_replays(state, jobs, names, told, config)
                document["policies"] = summaries
        except SimInputError as exc:
            fail(str(exc), code=EXIT_INVALID)
    out.mkdir(parents=True, exist_ok=True)
    summary = out / "summary.json"
    summary.write_text(json.dumps(document, indent=2) + "\n")
    if packing:
        _packing_table(document["packing"])
    else:
        _replay_table(document["policies"])
    say(f"wrote {summary}")
    if plots and not packing:
        try:
            for path in write_plots(summaries, jcts, out):
                say(f"wrote {path}")
        except PlotsUnavailable as exc:
            say(f"warning: plots skipped: {exc}")


def _progress() -> Progress:
    """A bar per policy on stderr, gone when the replay ends; steps are arrivals and ends."""
    return Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _replay_table(summaries: dict[str, dict[str, Any]]) -> None:
    table = units.plain_table(
        "POLICY", "JCT MEAN/P50/P99", "WAIT MEAN/P99", "GPU", "WORST Q", "MS/CALL", "UNRUN"
    )
    for name, s in summaries.items():
        jct, wait = s["jct_s"] or {}, s["queueing_delay_s"] or {}
        ratio = s["worst_queue_to_mean"]
        table.add_row(
            name,
            "/".join(_seconds(jct.get(k)) for k in ("mean", "median", "p99")),
            "/".join(_seconds(wait.get(k)) for k in ("mean", "p99")),
            f"{s['gpu_allocation']['mean_percent']:.1f}%",
            "-" if ratio is None else f"{s['worst_queue']} {ratio:.2f}x",
            f"{s['scheduler_cpu_ms'].get('mean', 0.0):.2f}",
            str(s["never_started"]),
        )
    stdout_console().print(table)
    say(
        "JCT: arrival to end; WAIT: arrival to start; GPU: mean share allocated over time; "
        "WORST Q: its mean slowdown over all jobs' mean; MS/CALL: scheduler CPU per call; "
        "UNRUN: jobs that never started"
    )


def _packing_table(results: dict[str, dict[str, Any]]) -> None:
    points = list(next(iter(results.values()))["mean_percent"])
    table = units.plain_table("POLICY", *(f"GPU ALLOC @{p} DEMAND" for p in points))
    for name, result in results.items():
        table.add_row(name, *(f"{result['mean_percent'][p]:.2f}%" for p in points))
    stdout_console().print(table)


def _seconds(value: float | None) -> str:
    return "-" if value is None else units.duration(value)
