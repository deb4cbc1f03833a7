"""What every command shares: options, the client, output streams and error handling.

Errors never leave a command as a traceback: :func:`reports_errors` turns them into
``error: ...`` on stderr (plus one ``path: message`` line per field problem) and the
exit code scripts rely on: 1 for failures, 2 for invalid input, 130 for Ctrl-C.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from tidemill.api.errors import FieldError, SpecError
from tidemill.cli.exit_codes import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID
from tidemill.client import SERVER_ENV, ApiError, Client, InvalidSpec, TidemillError
from tidemill.store.urls import EXAMPLES, store_url_problem

P = ParamSpec("P")
R = TypeVar("R")


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


ServerOption = Annotated[
    str,
    typer.Option("--server", envvar=SERVER_ENV, help="URL of the tidemill server."),
]
OutputOption = Annotated[
    Output, typer.Option("--output", "-o", help="table for people; json or yaml for scripts.")
]
NamespaceOption = Annotated[
    str | None,
    typer.Option("--namespace", "-n", help="Namespace of the job; needed only if ambiguous."),
]
JobArgument = Annotated[str, typer.Argument(help="Job name, or namespace/name.")]


def checked_store_url(value: str | None) -> str | None:
    """``--store-url``, refused before anything opens it. The value is not echoed: it may
    hold the database's password."""
    problem = None if value is None else store_url_problem(value)
    if problem is not None:
        raise typer.BadParameter(f"{problem}; use {EXAMPLES}")
    return value


def connect(server: str) -> Client:
    return Client(server)


def stdout_console() -> Console:
    """Built per call so it writes to the stdout of the moment (tests swap it)."""
    wide = None if sys.stdout.isatty() else 200
    return Console(file=sys.stdout, highlight=False, width=wide)


def echo(line: str) -> None:
    """Print text as it is: no markup, no wrapping (log lines contain brackets)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    """A note for the person (not for scripts): to stderr, at once."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def fail(message: str, lines: Iterable[str] = (), code: int = EXIT_FAILURE) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    for line in lines:
        sys.stderr.write(f"{line}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


def fail_invalid(message: str, errors: Iterable[FieldError]) -> NoReturn:
    fail(message, [str(error) for error in errors], EXIT_INVALID)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Map SDK and input errors to a short message and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except SpecError as exc:
            count = len(exc.errors)
            fail_invalid(f"invalid input ({count} problem{'s' if count != 1 else ''})", exc.errors)
        except InvalidSpec as exc:
            fail_invalid(exc.message, exc.errors)
        except ApiError as exc:
            fail(exc.message, [str(error) for error in exc.errors])
        except TidemillError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper
