"""Commands that talk to a running server (and ``validate``, which needs none)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from tidemill.api.errors import SpecError
from tidemill.api.job import TrainingJob
from tidemill.api.limits import JOBS_PAGE_MAX
from tidemill.api.loader import job_from_document, load_job_file
from tidemill.api.status import EventView, JobPhase
from tidemill.cli import render
from tidemill.cli.checkpoints import with_resume_from
from tidemill.cli.common import (
    JobArgument,
    NamespaceOption,
    Output,
    OutputOption,
    ServerOption,
    connect,
    echo,
    reports_errors,
    say,
    stdout_console,
)
from tidemill.cli.exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID
from tidemill.cli.progress import print_outcome, watch
from tidemill.cli.scripts import missing_scripts
from tidemill.client import DEFAULT_SERVER, FINISHED, Client

JobFile = Annotated[
    Path, typer.Argument(help="Job file (YAML or JSON; tidemill or Kubeflow); - for stdin.")
]


@reports_errors
def submit(
    file: JobFile,
    wait: Annotated[
        bool, typer.Option("--wait", help="Stream logs and events until the job ends.")
    ] = False,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Submit into this namespace.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Let the server validate; submit nothing.")
    ] = False,
    resume_from: Annotated[
        str | None,
        typer.Option(
            "--resume-from",
            metavar="JOB|URL",
            help="Start from the newest checkpoint of another job (its name) or of a "
            "checkpoint folder (a path or URL).",
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Validate a job file here, then submit it. --wait streams its logs and events like
    `run` and exits 0 if it succeeds, 1 if it fails (Ctrl-C stops watching, not the job)."""
    job = load_job_file(file)
    if namespace is not None:
        job = _in_namespace(job, namespace)
    with connect(server) as client:
        if resume_from is not None:
            job = with_resume_from(job, resume_from, client)
        view = client.submit(job, dry_run=dry_run)
        key = f"{view.namespace}/{view.name}"
        if dry_run:
            echo(f"job {key} is valid (dry run: nothing was submitted)")
            return
        echo(f"job {key} submitted to queue {view.queue} ({view.phase.value})")
        if not wait:
            return
        try:
            final = watch(client, view)
        except KeyboardInterrupt:
            say(f"interrupted: stopped watching; job {key} goes on (`tidemill delete {key}`)")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    print_outcome(final)
    if final.phase is not JobPhase.SUCCEEDED:
        raise typer.Exit(EXIT_FAILURE)


@reports_errors
def jobs(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    phase: Annotated[
        JobPhase | None,
        typer.Option("--phase", case_sensitive=False, help="Only jobs in this phase."),
    ] = None,
    last: Annotated[
        int | None,
        typer.Option(
            "--last",
            min=1,
            max=JOBS_PAGE_MAX,
            help="Only the N newest jobs (the server sends just those).",
        ),
    ] = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """List jobs, newest last."""
    phase_name = phase.value if phase else None
    total: int | None = None
    with connect(server) as client:
        if last is None:
            items = client.jobs(namespace=namespace, phase=phase_name)
        else:
            page = client.job_page(namespace, phase_name, limit=last, newest=True)
            items = page.items[::-1]
            total = page.phases.get(phase_name, 0) if phase_name else sum(page.phases.values())
    if output is not Output.TABLE:
        echo(render.dump(items, output))
    elif not items:
        echo("no jobs" + (f" in namespace {namespace}" if namespace else ""))
    else:
        stdout_console().print(render.jobs_table(items, time.time()))
        if total is not None and total > len(items):
            echo(f"the newest {len(items)} of {total:,} jobs (without --last: all)")


@reports_errors
def get(
    job: JobArgument,
    namespace: NamespaceOption = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Show one job; -o json|yaml gives its full status and spec."""
    with connect(server) as client:
        view = client.get(job, namespace)
    if output is Output.TABLE:
        stdout_console().print(render.job_table(view, time.time()))
    else:
        echo(render.dump(view, output))


@reports_errors
def describe(
    job: JobArgument, namespace: NamespaceOption = None, server: ServerOption = DEFAULT_SERVER
) -> None:
    """Status, conditions, replicas, why it is pending, training metrics, recent events."""
    with connect(server) as client:
        view = client.get(job, namespace)
        events = client.job_events(view.name, view.namespace)
        metrics = client.metrics(view.name, view.namespace).latest
    stdout_console().print(render.describe(view, events, time.time(), metrics))


@reports_errors
def logs(
    job: JobArgument,
    role: Annotated[str | None, typer.Option("--role", "-r", help="Only this role.")] = None,
    index: Annotated[
        int | None, typer.Option("--index", "-i", min=0, help="Only this replica of --role.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", min=0, help="Only the last N lines of each replica.")
    ] = None,
    namespace: NamespaceOption = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Print replicas' output, each line led by the replica that wrote it (worker-0)."""
    if index is not None and role is None:
        raise typer.BadParameter("--index needs --role (e.g. --role worker --index 0)")
    with connect(server) as client:
        for line in client.logs(job, role, index, follow, tail, namespace):
            echo(line)


@reports_errors
def delete(
    job: JobArgument, namespace: NamespaceOption = None, server: ServerOption = DEFAULT_SERVER
) -> None:
    """Stop a job's processes and forget it."""
    with connect(server) as client:
        key = client.delete(job, namespace)
    echo(f"job {key} deleted")


@reports_errors
def scale(
    job: JobArgument,
    role: Annotated[str, typer.Option("--role", "-r", help="Role to resize, e.g. worker.")],
    replicas: Annotated[int, typer.Option("--replicas", min=0, help="New replica count.")],
    namespace: NamespaceOption = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Resize an elastic role within its minReplicas..maxReplicas."""
    with connect(server) as client:
        view = client.scale(job, role, replicas, namespace)
    counts = render.replica_counts(view)
    echo(
        f"job {view.namespace}/{view.name}: {role} scaled to {replicas} "
        f"(running/desired now {counts.get(role, '0/' + str(replicas))})"
    )


@reports_errors
def suspend(
    job: JobArgument,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once its processes are gone (Suspended).")
    ] = False,
    namespace: NamespaceOption = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Stop a job's processes and keep it out of its queue, holding nothing, until
    `tidemill resume` (SIGTERM first: tidemill's runtime checkpoints the step it reached)."""
    with connect(server) as client:
        view = client.suspend(job, namespace)
        if wait:
            view = client.wait(view.name, view.namespace, until={JobPhase.SUSPENDED, *FINISHED})
    key = f"{view.namespace}/{view.name}"
    if view.phase is JobPhase.SUSPENDED:
        echo(f"job {key} suspended; `tidemill resume {view.name}` queues it again")
    elif view.phase.is_terminal:
        say(f"job {key} {view.phase.lower()} before it could be suspended: {view.message}")
        raise typer.Exit(EXIT_FAILURE)
    else:
        echo(f"job {key} suspending: its replicas are stopping")


@reports_errors
def resume(
    job: JobArgument, namespace: NamespaceOption = None, server: ServerOption = DEFAULT_SERVER
) -> None:
    """Queue a suspended job again; it restores its newest checkpoint, if it has one."""
    with connect(server) as client:
        view = client.resume(job, namespace)
    echo(f"job {view.namespace}/{view.name} resumed: queued again")


@reports_errors
def queues(output: OutputOption = Output.TABLE, server: ServerOption = DEFAULT_SERVER) -> None:
    """Queues with their guarantees, limits, use and fair share."""
    with connect(server) as client:
        items = client.queues()
    if output is Output.TABLE:
        stdout_console().print(render.queues_table(items))
    else:
        echo(render.dump(items, output))


@reports_errors
def nodes(output: OutputOption = Output.TABLE, server: ServerOption = DEFAULT_SERVER) -> None:
    """Nodes with capacity, allocation and per-GPU use."""
    with connect(server) as client:
        items = client.nodes()
    if output is Output.TABLE:
        stdout_console().print(render.nodes_table(items))
    else:
        echo(render.dump(items, output))


@reports_errors
def events(
    job: Annotated[
        str | None, typer.Argument(help="Job name or namespace/name; all if omitted.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    namespace: NamespaceOption = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Events of one job or of the whole cluster. -f follows until the job ends."""
    with connect(server) as client:
        if follow:
            _follow_events(client, job, namespace, output)
            return
        items = client.events() if job is None else client.job_events(job, namespace)
    if output is not Output.TABLE:
        echo(render.dump(items, output))
    elif not items:
        echo("no events")
    else:
        stdout_console().print(render.events_table(items, with_job=job is None))


def validate(
    files: Annotated[list[Path], typer.Argument(help="Job files to check; - for stdin.")],
) -> None:
    """Check job files without a server: `FILE: ok (...)`, or every problem as path: message.

    A relative script the command runs that is missing from its workingDir is a warning.
    """
    invalid = False
    for file in files:
        try:
            job = load_job_file(file)
        except SpecError as exc:
            invalid = True
            count = len(exc.errors)
            typer.echo(
                f"error: {file} is not a valid job ({count} problem{'s' if count != 1 else ''})",
                err=True,
            )
            for error in exc.errors:
                typer.echo(str(error), err=True)
            continue
        echo(f"{file}: ok (TrainingJob {job.key}, roles {_roles(job)}{_stages(job)})")
        for warning in missing_scripts(job):
            typer.echo(f"warning: {file}: {warning}", err=True)
    if invalid:
        raise typer.Exit(EXIT_INVALID)


def _stages(job: TrainingJob) -> str:
    """``, data backfill (iceberg) -> online (kafka)``: the plan at a glance."""
    data = job.spec.data
    if data is None:
        return ""
    stages = [
        f"{stage.name} ({', '.join(source.kind.value for source in stage.sources)})"
        for stage in data.stages
    ]
    return ", data " + " -> ".join(stages)


def _follow_events(
    client: Client, job: str | None, namespace: str | None, output: Output, poll_s: float = 1.0
) -> None:
    key = None
    if job is not None:
        view = client.get(job, namespace)
        key = f"{view.namespace}/{view.name}"
    last: int | None = None
    while True:
        done = key is not None and client.get(key).phase.is_terminal
        for event in client.events(job=key, since=last):
            _print_event(event, output, with_job=key is None)
            last = event.id
        if done:
            return
        time.sleep(poll_s)


def _print_event(event: EventView, output: Output, with_job: bool) -> None:
    if output is Output.JSON:
        echo(json.dumps(event.model_dump(mode="json")))
    elif output is Output.YAML:
        echo("---\n" + render.dump(event, output))
    else:
        echo(render.event_line(event, with_job=with_job))


def _in_namespace(job: TrainingJob, namespace: str) -> TrainingJob:
    document = job.to_document()
    document["metadata"] = {**document["metadata"], "namespace": namespace}
    return job_from_document(document)


def _roles(job: TrainingJob) -> str:
    parts = []
    for name, role in job.spec.roles.items():
        elastic = f" (elastic {role.min_bound}-{role.max_bound})" if role.is_elastic else ""
        parts.append(f"{name} x{role.replicas}{elastic}")
    return ", ".join(parts)


__all__ = [
    "delete",
    "describe",
    "events",
    "get",
    "jobs",
    "logs",
    "nodes",
    "queues",
    "scale",
    "submit",
    "validate",
]
