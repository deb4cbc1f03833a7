"""``tidemill server`` and ``tidemill run``: the commands that host a server themselves.

``run`` is the laptop path: validate, start an embedded server on a free port, submit,
watch the job to its end, and exit 0 (Succeeded), 1 (Failed), 2 (invalid) or 130
(Ctrl-C or SIGTERM: the job is deleted, replicas that outlive the delete are killed,
and ``run`` returns within 3 s; see :mod:`tidemill.cli.interrupt`).
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from tidemill.api.loader import load_job_file
from tidemill.api.status import JobPhase
from tidemill.cli import interrupt
from tidemill.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, fail, reports_errors, say
from tidemill.cli.interrupt import OnceStop, shielded, stop_job
from tidemill.cli.progress import JobProgress, print_outcome, progress_sink
from tidemill.cli.scripts import missing_scripts
from tidemill.client import Client

ClusterOption = Annotated[
    Path | None,
    typer.Option("--cluster", help="Cluster file: nodes, queues, priority classes."),
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
) -> None:
    """Run the control plane until Ctrl-C or SIGTERM."""
    from tidemill.server.runner import ServerRunner

    runner = ServerRunner(state_dir, cluster, host=host, port=port, store_url=store_url)
    say(f"tidemill server on {runner.url} (state in {state_dir}); Ctrl-C stops it")
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
) -> None:
    """Run one job on an embedded server and stream its logs and events to the end."""
    job = load_job_file(file)
    from tidemill.server.runner import ServerRunner

    with ExitStack() as stack:
        if state_dir is None:
            state_dir = Path(tempfile.mkdtemp(prefix="tidemill-run-"))
            if keep:
                stack.callback(say, f"state kept in {state_dir}")
            else:
                stack.callback(shutil.rmtree, state_dir, ignore_errors=True)
        runner = ServerRunner(state_dir, cluster, port=0)
        try:
            url = runner.start()
        except RuntimeError as exc:
            fail(str(exc))
        stop_server = OnceStop(runner.stop)
        stack.callback(stop_server)
        say(f"tidemill server on {url}: dashboard {url}/, API docs {url}/docs")
        for warning in missing_scripts(job):
            say(f"warning: {file}: {warning}")
        client = stack.enter_context(Client(url))
        view = client.submit(job)
        sink = progress_sink(view)
        progress = JobProgress(client, view, sink, poll_s=0.25)
        try:
            with sink, _terminate_as_interrupt():
                final = progress.follow()
        except KeyboardInterrupt:
            say(f"interrupted: deleting job {view.namespace}/{view.name}")
            with shielded():
                now = time.monotonic()
                deadline = now + interrupt.BUDGET_S
                stop_job(url, progress.view, now + interrupt.GRACE_S, deadline)
                stop_server(deadline)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        print_outcome(final)
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


__all__ = ["run", "server"]
