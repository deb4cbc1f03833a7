"""The ``tidemill`` command's wiring: the commands live in their own modules, and the
console script that runs it in :mod:`tidemill.cli.console`."""

from __future__ import annotations

import typer

from tidemill import __version__
from tidemill.cli import checkpoints, commands, debug, kubernetes, run, simulate, token

app = typer.Typer(
    name="tidemill",
    help="Elastic training jobs: run one here, or queue many on a shared cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("run")(run.run)
app.command("server")(run.server)
app.command("validate")(commands.validate)
app.command("submit")(commands.submit)
app.command("jobs")(commands.jobs)
app.command("get")(commands.get)
app.command("describe")(commands.describe)
app.command("logs")(commands.logs)
app.command("delete")(commands.delete)
app.command("scale")(commands.scale)
app.command("suspend")(commands.suspend)
app.command("resume")(commands.resume)
app.command("events")(commands.events)
app.command("queues")(commands.queues)
app.command("nodes")(commands.nodes)
app.command("checkpoints")(checkpoints.checkpoints)
app.command("manifests")(kubernetes.manifests)
app.command("simulate")(simulate.simulate)
app.command("exec")(debug.exec_command)
app.add_typer(token.app, name="token")
app.add_typer(debug.app, name="debug")


def _version(show: bool) -> None:
    if show:
        typer.echo(f"tidemill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Elastic training jobs: run one here, or queue many on a shared cluster."""


__all__ = ["app"]
