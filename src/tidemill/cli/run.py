"""``tidemill server`` and ``tidemill run``: the commands that host a server themselves.

``run`` is the laptop path: validate, start an embedded server on a free port, submit,
watch the job to its end, and exit 0 (Succeeded), 1 (Failed), 2 (invalid) or 130
(Ctrl-C, after deleting the job).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from tidemill.api.loader import load_job_file
from tidemill.api.status import JobPhase
from tidemill.cli import render
from tidemill.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    fail,
    reports_errors,
    stdout_console,
)
from tidemill.cli.progress import JobProgress, LiveSink, PlainSink
from tidemill.client import Client, TidemillError
from tidemill.engines.registry import DEFAULT_ENGINE, UnknownEngine, check_engine_name, engine_names

ClusterOption = Annotated[
    Path | None,
    typer.Option("--cluster", help="Cluster file: nodes, queues, priority classes."),
]


def _known_engine(name: str) -> str:
    """Refuse an unknown ``--engine`` before anything starts (exit 2, the known names)."""
    try:
        return check_engine_name(name)
    except UnknownEngine as exc:
        raise typer.BadParameter(str(exc).removeprefix("engine: ")) from None


EngineOption = Annotated[
    str,
    typer.Option(
        "--engine",
        callback=_known_engine,
        help=f"What runs the replicas: {', '.join(engine_names())}.",
    ),
]


@reports_errors
def server(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the database and job logs live.")
    ] = Path("~/.tidemill"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8500,
    cluster: ClusterOption = None,
    store_url: Annotated[
        str | None,
        typer.Option(
            "--store-url",
            envvar="TIDEMILL_STORE_URL",
            help="SQLAlchemy URL of the store, e.g. postgresql+psycopg://user@host/db "
            "(default: SQLite in --state-dir).",
        ),
    ] = None,
    engine: EngineOption = DEFAULT_ENGINE,
) -> None:
    """Run the control plane until Ctrl-C or SIGTERM."""
    from tidemill.server.runner import ServerRunner

    runner = ServerRunner(
        state_dir, cluster, host=host, port=port, store_url=store_url, engine=engine
    )
    _say(f"tidemill server on {runner.url} (state in {state_dir}); Ctrl-C stops it")
    try:
        runner.serve_forever()
    except (OSError, RuntimeError) as exc:
        fail(str(exc))


@reports_errors
def run(
    file: Annotated[Path, typer.Argument(help="Job file to run on this machine.")],
    cluster: ClusterOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", help="Keep state here (default: a temporary folder)."),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary state folder (logs, database).")
    ] = False,
    engine: EngineOption = DEFAULT_ENGINE,
) -> None:
    """Run one job on an embedded server and stream its logs and events to the end."""
    job = load_job_file(file)
    from tidemill.server.runner import ServerRunner

    with ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="tidemill-run-"))
            if keep:
                stack.callback(_say, f"state kept in {state_dir}")
            else:
                stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
        runner = ServerRunner(state_dir, cluster, port=0, engine=engine)
        try:
            url = runner.start()
        except RuntimeError as exc:
            fail(str(exc))
        stack.callback(runner.stop)
        client = stack.enter_context(Client(url))
        view = client.submit(job)
        console = stdout_console()
        key = f"{view.namespace}/{view.name}"
        sink = LiveSink(console, key) if console.is_terminal else PlainSink()
        try:
            with sink, _terminate_as_interrupt():
                final = JobProgress(client, view, sink, poll_s=0.25).follow()
        except KeyboardInterrupt:
            _say(f"interrupted: deleting job {key}")
            try:
                client.delete(view.name, view.namespace)
            except TidemillError as exc:
                _say(f"could not delete {key}: {exc}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        style = "green" if final.phase is JobPhase.SUCCEEDED else "red"
        for index, line in enumerate(render.final_summary(final)):
            console.print(line, style=style if index == 0 else "", markup=False, soft_wrap=True)
    if final.phase is not JobPhase.SUCCEEDED:
        raise typer.Exit(EXIT_FAILURE)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM cleans up like Ctrl-C, so a killed `run` leaves no replicas behind."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


__all__ = ["run", "server"]
