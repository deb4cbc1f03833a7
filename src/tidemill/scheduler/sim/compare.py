"""Several policies over one trace and cluster, side by side: what ``tidemill simulate`` writes."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from tidemill.scheduler import ClusterState, SchedulerConfig
from tidemill.scheduler.sim.metrics import summarize
from tidemill.scheduler.sim.packing import DEMAND_POINTS, allocation_at_demand
from tidemill.scheduler.sim.policies import with_config
from tidemill.scheduler.sim.replay import replay
from tidemill.scheduler.sim.trace import TraceJob

PolicyProgress = Callable[[str, int, int], None]
"""Told (policy, steps done, steps in all) as each policy's run goes."""


def compare_replays(
    cluster: ClusterState,
    trace: Sequence[TraceJob],
    policies: Sequence[str],
    progress: PolicyProgress | None = None,
    config: SchedulerConfig | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]]]:
    """Each policy's summary, and each policy's job completion times (for a CDF);
    ``tidemill`` schedules by ``config`` when given (else the default)."""
    chosen = with_config(config)
    summaries: dict[str, dict[str, Any]] = {}
    jcts: dict[str, list[float]] = {}
    for name in policies:
        told = None if progress is None else _for(progress, name)
        record = replay(cluster, trace, chosen[name], told)
        summaries[name] = summarize(record)
        jcts[name] = [o.completion_s for o in record.outcomes if o.completion_s is not None]
    return summaries, jcts


def compare_packing(
    cluster: ClusterState,
    pods: Sequence[TraceJob],
    policies: Sequence[str],
    seeds: Sequence[int],
    progress: PolicyProgress | None = None,
    config: SchedulerConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """Per policy, GPU allocation % at each demand point (mean over ``seeds``), and per
    seed; ``tidemill`` schedules by ``config`` when given (else the default)."""
    chosen = with_config(config)
    results: dict[str, dict[str, Any]] = {}
    for name in policies:
        per_seed: dict[int, dict[float, float]] = {}
        for done, seed in enumerate(seeds):
            per_seed[seed] = allocation_at_demand(cluster, pods, chosen[name], seed)
            if progress is not None:
                progress(name, done + 1, len(seeds))
        results[name] = {
            "mean_percent": {
                f"{point:.0%}": statistics.fmean(r[point] for r in per_seed.values())
                for point in DEMAND_POINTS
            },
            "per_seed_percent_at_130": {str(s): r[DEMAND_POINTS[-1]] for s, r in per_seed.items()},
        }
    return results


def _for(progress: PolicyProgress, name: str) -> Callable[[int, int], None]:
    def told(done: int, total: int) -> None:
        progress(name, done, total)

    return told
