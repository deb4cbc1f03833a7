"""The "Training metrics" section of ``tidemill describe``: each replica's latest value
of every name it reported, side by side, so a straggler's ``step_time_s`` stands out.

A pure function of its input, like :mod:`tidemill.cli.render`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from tidemill.api.metrics import LatestMetric
from tidemill.cli.units import plain_table

MAX_COLUMNS = 8
"""Names shown; the rest are in ``GET /api/v1/jobs/{name}/metrics``."""


def training_metrics(latest: Sequence[LatestMetric]) -> Table:
    """One row per replica: the newest step it reported, then a column per name."""
    names = sorted({m.name for m in latest})[:MAX_COLUMNS]
    table = plain_table("REPLICA", "STEP", *(name.upper() for name in names))
    replicas = sorted({m.replica for m in latest})
    for replica in replicas:
        mine = {m.name: m for m in latest if m.replica == replica}
        step = max(m.step for m in mine.values())
        cells = [f"{mine[name].value:.4g}" if name in mine else "" for name in names]
        table.add_row(replica, str(step), *cells)
    return table
