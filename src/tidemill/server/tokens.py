"""The secrets behind authentication: user tokens, the first admin token, job credentials.

User tokens are ``tm_`` plus 43 random URL-safe characters (256 bits); the store keeps
only their SHA-256, which is enough for a secret with that much entropy. A token is
found by its hash: what a timing difference in that lookup could reveal is part of the
hash, which does not help anyone guess the token. The job credential's MAC, which an
attacker could probe byte by byte, is compared in constant time.

A job's credential is ``tmjob.<uid>.<mac>``, where the MAC is HMAC-SHA256 of the job's
uid under a secret made once in the state folder (``job-secret``, mode 0600). It is
never stored: the server recomputes it, so it survives restarts (a relaunched master
keeps working) and dies with the job (a new job under the old name has a new uid).
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from tidemill.api.errors import ConflictError, NotFoundError
from tidemill.api.token import (
    ALL_NAMESPACES,
    CreatedToken,
    Role,
    TokenRequest,
    TokenView,
    scope_text,
)
from tidemill.store.store import Store, Tx
from tidemill.store.tables import TokenRow

TOKEN_PREFIX = "tm_"
JOB_PREFIX = "tmjob."
JOB_SECRET_FILE = "job-secret"
ADMIN_TOKEN_FILE = "admin-token"
ADMIN_NAME = "admin"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", errors="replace")).hexdigest()


def token_view(row: TokenRow) -> TokenView:
    return TokenView(
        name=row.name,
        namespace=row.namespace,
        role=Role(row.role),
        created_at=row.created_at,
        revoked=row.revoked,
    )


def describe(row: TokenRow) -> str:
    """``token 'alice' (editor, ads)``: the actor named in events."""
    return f"token '{row.name}' {scope_text(row.role, row.namespace)}"


def create_token(tx: Tx, request: TokenRequest, actor: str) -> CreatedToken:
    """Make a token and record who made it; the secret is returned, never stored."""
    name = request.name or _free_name(tx, request)
    existing = tx.token(name)
    if existing is not None:
        why = " (revoked; names are not reused)" if existing.revoked else ""
        raise ConflictError(f"a token named '{name}' exists{why}; choose another name")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = tx.add_token(
        TokenRow(
            name=name,
            digest=digest(secret),
            namespace=request.scope,
            role=request.role.value,
            created_at=time.time(),
            revoked=False,
        )
    )
    tx.add_event(None, "TokenCreated", f"{describe(row)} created by {actor}")
    return CreatedToken(**token_view(row).model_dump(), token=secret)


def _free_name(tx: Tx, request: TokenRequest) -> str:
    """``ads-editor-3f9a``: readable, and unique without asking the user for a name."""
    scope = "all" if request.scope == ALL_NAMESPACES else request.scope
    while True:
        name = f"{scope[:50]}-{request.role.value}-{secrets.token_hex(2)}"
        if tx.token(name) is None:
            return name


def revoke_token(tx: Tx, name: str, actor: str) -> TokenView:
    """Refuse the token from now on; revoking twice is not an error."""
    row = tx.token(name)
    if row is None:
        known = ", ".join(r.name for r in tx.tokens() if not r.revoked) or "none"
        raise NotFoundError(f"no token named '{name}' (active tokens: {known})")
    if not row.revoked:
        row.revoked = True
        tx.add_event(None, "TokenRevoked", f"{describe(row)} revoked by {actor}")
    return token_view(row)


def local_actor() -> str:
    """Who runs ``tidemill token`` straight on the state folder (no server, no token)."""
    return f"user '{getpass.getuser()}' on the server's machine (tidemill token --state-dir)"


def bootstrap_admin(store: Store, state_dir: Path) -> Path | None:
    """With no active admin token, make one and write it to ``state_dir/admin-token``
    (mode 0600); returns that path, or None when an admin token exists already.

    So the first start with auth on prints where the key is, and an operator who
    revoked every admin token gets a new one by restarting the server.
    """
    with store.transaction() as tx:
        rows = tx.tokens()
        if any(r.role == Role.ADMIN.value and not r.revoked for r in rows):
            return None
        taken = {r.name for r in rows}
        name = next(
            n
            for n in (ADMIN_NAME, *(f"{ADMIN_NAME}-{i}" for i in range(2, 10_000)))
            if n not in taken
        )
        request = TokenRequest(name=name, role=Role.ADMIN, namespace=ALL_NAMESPACES)
        created = create_token(tx, request, "the server on its first start with auth on")
        path = state_dir / ADMIN_TOKEN_FILE
        write_private(path, created.token + "\n")
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read, atomically (never briefly world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class JobCredentials:
    """Mints and checks per-job credentials (see the module docstring)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @classmethod
    def in_folder(cls, state_dir: Path) -> JobCredentials:
        """The secret in ``state_dir/job-secret``, made on first use."""
        path = state_dir / JOB_SECRET_FILE
        if not path.exists():
            write_private(path, secrets.token_hex(32) + "\n")
        try:
            return cls(bytes.fromhex(path.read_text().strip()))
        except ValueError:
            raise RuntimeError(
                f"{path} is not a hex secret; delete it and a new one is made (running "
                "jobs' masters then need a restart to get new credentials)"
            ) from None

    def token(self, uid: str) -> str:
        """The credential of the job with this uid (``ControllerConfig.job_token``)."""
        return f"{JOB_PREFIX}{uid}.{self._mac(uid)}"

    def uid_of(self, token: str) -> str | None:
        """The job uid a credential belongs to, or None if it is not one of ours."""
        if not token.startswith(JOB_PREFIX):
            return None
        uid, _, mac = token[len(JOB_PREFIX) :].rpartition(".")
        expected = self._mac(uid).encode()
        if not uid or not hmac.compare_digest(mac.encode("utf-8", errors="replace"), expected):
            return None
        return uid

    def _mac(self, uid: str) -> str:
        return hmac.new(self._secret, uid.encode("utf-8", errors="replace"), "sha256").hexdigest()


__all__ = [
    "ADMIN_TOKEN_FILE",
    "JobCredentials",
    "bootstrap_admin",
    "create_token",
    "describe",
    "digest",
    "local_actor",
    "revoke_token",
    "token_view",
    "write_private",
]
