"""``tidemill token create|list|revoke``: API tokens for a server with auth on.

Through the server by default (needs an admin token: ``TIDEMILL_TOKEN`` or the config
file). With ``--state-dir`` (or ``--store-url``) the command works on the server's
store directly, with no server and no token: whoever may read the state folder is
an admin already. That is also how to mint an admin token if the first one is lost.

The first admin token: ``tidemill server --auth`` writes one to
``STATE_DIR/admin-token`` (mode 0600) on its first start, and prints where.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Protocol

import typer

from tidemill.api.errors import ConflictError, NotFoundError
from tidemill.api.token import CreatedToken, Role, TokenRequest, TokenView
from tidemill.cli import render
from tidemill.cli.common import (
    Output,
    OutputOption,
    ServerOption,
    checked_store_url,
    connect,
    echo,
    fail,
    reports_errors,
    stdout_console,
)
from tidemill.cli.exit_codes import EXIT_INVALID
from tidemill.client import DEFAULT_SERVER, Client

if TYPE_CHECKING:
    from tidemill.store.store import Store

app = typer.Typer(
    help="API tokens for a server with auth on: create (shown once), list, revoke.\n\n"
    "The first admin token is in STATE_DIR/admin-token (written by `tidemill server "
    "--auth`). Commands send $TIDEMILL_TOKEN, else the server's entry in $TIDEMILL_CONFIG "
    "(default ~/.config/tidemill/config.yaml), a file shaped like:\n\n"
    "servers:\n\n  http://tidemill.internal:8500: {token: tm_...}",
    no_args_is_help=True,
)

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Work on this server's state folder directly: no server, no token needed.",
    ),
]
StoreUrlOption = Annotated[
    str | None,
    typer.Option(
        "--store-url",
        help="Like --state-dir, for a server with --store-url.",
        callback=checked_store_url,
    ),
]


class Tokens(Protocol):
    """What both the SDK client and the local store offer."""

    def create(self, request: TokenRequest) -> CreatedToken: ...

    def tokens(self) -> list[TokenView]: ...

    def revoke_token(self, name: str) -> TokenView: ...


@app.command("create")
@reports_errors
def create(
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", "-n", help="Namespace it covers, or '*' for all (admins: all)."
        ),
    ] = None,
    role: Annotated[
        Role, typer.Option("--role", case_sensitive=False, help="viewer, editor or admin.")
    ] = Role.VIEWER,
    name: Annotated[
        str | None, typer.Option("--name", help="Unique name (default: NAMESPACE-ROLE-xxxx).")
    ] = None,
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
    state_dir: StateDirOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Make a token and print it once (stdout); nothing can show it again."""
    request = TokenRequest.checked(name=name, namespace=namespace, role=role)
    with _tokens(server, state_dir, store_url) as api:
        created = api.create(request)
    if output is not Output.TABLE:
        echo(render.dump(created, output))
        return
    echo(created.token)
    sys.stderr.write(
        f"token '{created.name}' ({created.role.value}, {created.namespace}) created; it is "
        "shown only now. Use it with: export TIDEMILL_TOKEN=<the token above>\n"
    )


@app.command("list")
@reports_errors
def list_tokens(
    output: OutputOption = Output.TABLE,
    server: ServerOption = DEFAULT_SERVER,
    state_dir: StateDirOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Every token with its namespace, role and status; never the secrets."""
    with _tokens(server, state_dir, store_url) as api:
        rows = api.tokens()
    _print(rows, output)


@app.command("revoke")
@reports_errors
def revoke(
    name: Annotated[str, typer.Argument(help="The token's name (see `tidemill token list`).")],
    server: ServerOption = DEFAULT_SERVER,
    state_dir: StateDirOption = None,
    store_url: StoreUrlOption = None,
) -> None:
    """Refuse the token from its next request on."""
    with _tokens(server, state_dir, store_url) as api:
        view = api.revoke_token(name)
    echo(f"token '{view.name}' ({view.role.value}, {view.namespace}) revoked")


def _print(rows: Sequence[TokenView], output: Output) -> None:
    if output is Output.TABLE:
        stdout_console().print(render.tokens_table(rows, time.time()))
    elif output is Output.JSON:
        echo(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
    else:
        echo(render.dump(rows, output))


@contextmanager
def _tokens(server: str, state_dir: Path | None, store_url: str | None) -> Iterator[Tokens]:
    """The server's token API, or the store itself with --state-dir / --store-url."""
    if state_dir is None and store_url is None:
        with connect(server) as client:
            yield _Remote(client)
        return
    from tidemill.store.store import Store, sqlite_url

    if store_url is None:
        folder = (state_dir or Path()).expanduser()
        if not (folder / "tidemill.db").exists():
            fail(
                f"no tidemill state in {folder} (no tidemill.db); pass the --state-dir "
                "the server runs with",
                code=EXIT_INVALID,
            )
        store_url = sqlite_url(folder)
    store = Store(store_url)
    try:
        yield _Local(store)
    except (NotFoundError, ConflictError) as exc:
        fail(str(exc.args[0]))
    finally:
        store.close()


class _Remote:
    def __init__(self, client: Client) -> None:
        self.client = client

    def create(self, request: TokenRequest) -> CreatedToken:
        return self.client.create_token(request.namespace, request.role, request.name)

    def tokens(self) -> list[TokenView]:
        return self.client.tokens()

    def revoke_token(self, name: str) -> TokenView:
        return self.client.revoke_token(name)


class _Local:
    """The store itself (imported only here: the other commands never load SQLAlchemy)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, request: TokenRequest) -> CreatedToken:
        from tidemill.server.tokens import create_token, local_actor

        with self.store.transaction() as tx:
            return create_token(tx, request, local_actor())

    def tokens(self) -> list[TokenView]:
        from tidemill.server.tokens import token_view

        with self.store.read() as tx:
            return [token_view(row) for row in tx.tokens()]

    def revoke_token(self, name: str) -> TokenView:
        from tidemill.server.tokens import local_actor, revoke_token

        with self.store.transaction() as tx:
            return revoke_token(tx, name, local_actor())


__all__ = ["app"]
