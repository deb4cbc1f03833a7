"""``tidemill debug stacks`` and ``tidemill exec``: looking inside a job that hangs."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tidemill.api.debug import StacksReport
from tidemill.cli.common import (
    JobArgument,
    NamespaceOption,
    ServerOption,
    connect,
    echo,
    reports_errors,
)
from tidemill.client import DEFAULT_SERVER

app = typer.Typer(
    help="Diagnose a running job: where its replicas stand.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command("stacks")
@reports_errors
def stacks(
    job: JobArgument,
    full: Annotated[
        bool, typer.Option("--full", help="Also print every replica's stacks in full.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="The server's report as JSON.")
    ] = False,
    namespace: NamespaceOption = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Every running replica's Python stacks, grouped: replicas stopped in the same place
    share a line ("worker 0-6 (ranks 0-6): in all_reduce() at ...")."""
    with connect(server) as client:
        report = client.stacks(job, namespace)
    if json_output:
        echo(report.model_dump_json(indent=2))
        return
    for line in render_stacks(report, full):
        echo(line)


def render_stacks(report: StacksReport, full: bool) -> list[str]:
    count, groups = len(report.replicas), len(report.groups)
    lines = [
        f"job {report.job}: {count} running replica{'s' if count != 1 else ''} in "
        f"{groups} group{'s' if groups != 1 else ''}"
    ]
    lines += [f"{group.label}: {group.summary}" for group in report.groups]
    if full:
        for replica in report.replicas:
            how = replica.source or "no stacks"
            lines.append(f"===== {replica.replica} (pid {replica.pid}, {how}) =====")
            lines.append(replica.text.rstrip("\n") if replica.text else replica.problem)
    return lines


@reports_errors
def exec_command(
    job: JobArgument,
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    role: Annotated[str, typer.Option("--role", "-r", help="Role of the replica, e.g. worker.")],
    index: Annotated[int, typer.Option("--index", "-i", min=0, help="Index of the replica.")] = 0,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.001, help="Kill the command after this many seconds."),
    ] = 3600.0,
    namespace: NamespaceOption = None,
    server: ServerOption = DEFAULT_SERVER,
) -> None:
    """Run a command in a replica's environment and working folder (its container on
    Kubernetes), print its output, and exit with its exit code. No standard input."""

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with connect(server) as client:
        code = client.exec(job, role, index, command, write, namespace, timeout)
    raise typer.Exit(code)
