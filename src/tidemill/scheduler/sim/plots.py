"""PNG plots of a comparison: GPU allocation over time, JCT distribution, per-queue slowdown.

matplotlib is an optional extra (``pip install 'tidemill[sim]'``): the simulator's
figures need nothing but the standard library, and a server install should not pull a
plotting stack. Figures are drawn without pyplot, so no global backend or state is touched.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "PNG plots need matplotlib: pip install 'tidemill[sim]' (or pass --no-plots)"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def write_plots(
    summaries: dict[str, dict[str, Any]], jcts: dict[str, list[float]], out: Path
) -> list[Path]:
    """Write the three PNGs into ``out``; the paths written, in order."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(INSTALL_HINT) from None
    written: list[Path] = []

    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    for name, summary in summaries.items():
        series = summary["gpu_allocation"]["series"]
        axes.step([t / 3600 for t, _ in series], [p for _, p in series], where="post", label=name)
    axes.set(xlabel="trace time (hours)", ylabel="GPUs allocated (%)", title="GPU allocation")
    axes.legend()
    written.append(_save(figure, out / "gpu_allocation.png"))

    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    for name, values in jcts.items():
        ordered = sorted(values)
        if ordered:
            shares = [(i + 1) / len(ordered) for i in range(len(ordered))]
            axes.step(ordered, shares, where="post", label=name)
    axes.set(
        xscale="log", xlabel="job completion time (s)", ylabel="share of jobs", title="JCT CDF"
    )
    axes.legend()
    written.append(_save(figure, out / "jct_cdf.png"))

    figure = Figure(figsize=(8, 4))
    axes = figure.subplots()
    names = list(summaries)
    queues = sorted({q for s in summaries.values() for q in s["queues"]})
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [summaries[name]["queues"].get(q, {}).get("mean_slowdown", 0.0) for q in queues]
        axes.bar([x + i * width for x in range(len(queues))], values, width, label=name)
    axes.set_xticks([x + 0.4 - width / 2 for x in range(len(queues))], queues)
    axes.set(ylabel="mean bounded slowdown", title="Slowdown per queue")
    axes.legend()
    written.append(_save(figure, out / "queue_slowdown.png"))
    return written


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    return path
