"""The figures a replay is judged by, as one JSON-ready summary.

- job completion time (JCT, arrival to end) and queueing delay (arrival to start):
  mean, median and p99 (nearest rank), over the jobs that ended / started;
- GPU allocation: GPUs held as a share of the cluster's, averaged over time from the
  first arrival to the last moment the replay visited, plus a thinned series to plot;
- per queue: mean bounded slowdown (JCT over run time, run time counted as at least
  10 s so a job of one second that waited a minute does not weigh 60; 1.0 is "never
  waited") and mean wait;
  the worst queue's slowdown over the mean slowdown of all jobs says how unevenly
  waiting is shared;
- the policy's CPU per call, in milliseconds.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from tidemill.scheduler.sim.replay import Outcome, Replay

SLOWDOWN_FLOOR_S = 10.0
"""Run times below this count as this much in the slowdown (bounded slowdown)."""

SERIES_POINTS = 400
"""At most this many (time, allocation) points go into a summary: enough for a plot."""


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that occurred, so small cases check by hand."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> dict[str, float] | None:
    """mean, median, p99 and max of ``values``; None when there are none."""
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def summarize(record: Replay) -> dict[str, Any]:
    """Everything ``tidemill simulate`` reports for one policy's replay."""
    outcomes = record.outcomes
    ended = [o for o in outcomes if o.completion_s is not None]
    started = [o for o in outcomes if o.wait_s is not None]
    calls_ms = [s * 1000 for s in record.call_cpu_s]
    return {
        "jobs": len(outcomes),
        "started": len(started),
        "ended": len(ended),
        "never_started": len(outcomes) - len(started),
        "preemptions": sum(o.preemptions for o in outcomes),
        "jct_s": spread([o.completion_s for o in ended if o.completion_s is not None]),
        "queueing_delay_s": spread([o.wait_s for o in started if o.wait_s is not None]),
        "gpu_allocation": _allocation(record),
        **_queues(ended),
        "scheduler_cpu_ms": {"calls": len(calls_ms), **(spread(calls_ms) or {})},
    }


def _allocation(record: Replay) -> dict[str, Any]:
    samples = record.allocation
    if not samples or record.total_gpus <= 0:
        return {"mean_percent": 0.0, "series": []}
    area = sum((t1 - t0) * held for (t0, held), (t1, _) in itertools.pairwise(samples))
    span = samples[-1][0] - samples[0][0]
    mean = area / span if span > 0 else samples[-1][1]
    step = max(1, math.ceil(len(samples) / SERIES_POINTS))
    thinned = samples[::step]
    if thinned[-1] is not samples[-1]:
        thinned.append(samples[-1])
    return {
        "mean_percent": 100 * mean / record.total_gpus,
        "series": [[t, 100 * held / record.total_gpus] for t, held in thinned],
    }


def _queues(ended: Sequence[Outcome]) -> dict[str, Any]:
    slowdowns: dict[str, list[float]] = defaultdict(list)
    waits: dict[str, list[float]] = defaultdict(list)
    for outcome in ended:
        duration = outcome.job.duration_s
        jct = outcome.completion_s
        if duration is None or jct is None or outcome.wait_s is None:
            continue
        slowdowns[outcome.job.queue].append(max(jct / max(duration, SLOWDOWN_FLOOR_S), 1.0))
        waits[outcome.job.queue].append(outcome.wait_s)
    queues = {
        name: {
            "jobs": len(values),
            "mean_slowdown": statistics.fmean(values),
            "mean_wait_s": statistics.fmean(waits[name]),
        }
        for name, values in sorted(slowdowns.items())
    }
    everyone = [v for values in slowdowns.values() for v in values]
    if not everyone:
        return {"queues": queues, "worst_queue": None, "worst_queue_to_mean": None}
    worst = max(queues, key=lambda name: queues[name]["mean_slowdown"])
    return {
        "queues": queues,
        "worst_queue": worst,
        "worst_queue_to_mean": queues[worst]["mean_slowdown"] / statistics.fmean(everyone),
    }
