"""``tidemill checkpoints JOB`` and the ``--resume-from JOB|URL`` of ``submit``."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.text import Text

from tidemill.api.checkpoint import CheckpointList, CheckpointSpec, is_url
from tidemill.api.job import TrainingJob
from tidemill.cli import render, units
from tidemill.cli.common import (
    JobArgument,
    NamespaceOption,
    Output,
    OutputOption,
    ServerOption,
    connect,
    echo,
    fail,
    reports_errors,
    stdout_console,
)
from tidemill.client import DEFAULT_SERVER, Client

PROGRESS_PREFIX = "tidemill.data"
"""Keys of ``state.data`` that ``tidemill.data.loader`` commits its position under."""


@reports_errors
def checkpoints(
    job: JobArgument,
    namespace: NamespaceOption = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """A job's durable checkpoints, newest first: step, age, size, world size, data position.

    A partial or corrupt one is listed with its problem (a restore skips it)."""
    with connect(server) as client:
        listing = client.checkpoints(job, namespace)
    if output is not Output.TABLE:
        echo(render.dump(listing, output))
    elif listing.url is None:
        echo(f"job {job} keeps no checkpoints (no spec.checkpoint.dir and no server default)")
    elif not listing.items:
        echo(f"no checkpoints yet in {listing.url}")
    else:
        echo(f"checkpoints in {listing.url}")
        stdout_console().print(checkpoints_table(listing, time.time()))


def checkpoints_table(listing: CheckpointList, now: float) -> Any:
    table = units.plain_table("NAME", "STEP", "AGE", "SIZE", "WORLD", "DATA POSITION")
    for item in listing.items:
        if item.problem is not None:
            table.add_row(item.name, "-", "-", "-", "-", Text(item.problem, style="yellow"))
            continue
        table.add_row(
            item.name,
            str(item.step),
            units.age(item.time, now),
            units.byte_size(item.size_bytes or 0),
            str(item.world_size),
            data_position(item.data),
        )
    return table


def data_position(data: Mapping[str, Any] | None) -> str:
    """``stage 1 pass 0: 12 shards done, 3 open`` per data loader; '-' without one."""
    parts = []
    for key, view in sorted((data or {}).items()):
        if not key.startswith(PROGRESS_PREFIX) or not isinstance(view, Mapping):
            continue
        done = sum(high - low for ranges in view.get("done", {}).values() for low, high in ranges)
        open_ = sum(len(cursors) for cursors in view.get("cursors", {}).values())
        name = key.removeprefix(PROGRESS_PREFIX).lstrip(":")
        lead = f"{name}: " if name else ""
        parts.append(
            f"{lead}stage {view.get('stage', 0)} pass {view.get('pass', 0)}: "
            f"{done} shards done, {open_} open"
        )
    return "; ".join(parts) or "-"


def with_resume_from(job: TrainingJob, source: str, client: Client) -> TrainingJob:
    """``job`` set to start from ``source``: a URL or a path (``/``, ``./``, ``~``: a
    folder of checkpoints, or one of them), else a job (``name`` or ``namespace/name``)
    whose checkpoint folder the server names. The server checks that one is usable."""
    if is_url(source):
        location = source
    elif source.startswith(("/", ".", "~")):
        location = str(Path(source).expanduser().resolve())
    else:
        listing = client.checkpoints(source)
        usable = [item for item in listing.items if item.problem is None]
        if listing.url is None or not usable:
            where = "keeps no checkpoints" if listing.url is None else f"has none in {listing.url}"
            fail(f"--resume-from {source}: job {source} {where}; nothing to resume from")
        location = listing.url
    current = job.spec.checkpoint or CheckpointSpec()
    checkpoint = current.model_copy(update={"resume_from": location})
    return job.model_copy(update={"spec": job.spec.model_copy(update={"checkpoint": checkpoint})})
