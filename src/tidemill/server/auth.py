"""Who is calling, and may they: the API's authentication and authorization.

Every route but ``/healthz`` (and the docs) takes the :meth:`Guard.caller` dependency;
handlers then ask the :class:`Caller` (or the guard, for routes about one job) whether
the call is allowed. Refusals are :class:`Unauthorized` (401: no, unknown or revoked
token) and :class:`Forbidden` (403: the token lacks the role or the namespace).

What each caller may do, with auth on:

- a user token: its role (viewer < editor < admin) over its namespace, or over all
  of them (``*``). Bare job names resolve in the token's own namespace.
- a job's credential (``TIDEMILL_TOKEN`` of its master and replicas): read its own
  job, write its master state and post its events; nothing else.
- ``/metrics`` needs a viewer token for all namespaces (it names every tenant's jobs);
  the dashboard page is open (it holds no data) and sends the token it was given.

With auth off (``tidemill run``, a server on loopback without ``--auth``) every call is
allowed and events name the actor ``anonymous (auth off)``.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tidemill.api.errors import job_not_found
from tidemill.api.token import ALL_NAMESPACES, Role
from tidemill.server.tokens import JobCredentials, describe, digest
from tidemill.store.store import Store

TOKEN_HELP = (
    "send 'Authorization: Bearer TOKEN' (the CLI and SDK read TIDEMILL_TOKEN, or the "
    "server's entry in ~/.config/tidemill/config.yaml); an admin makes tokens with "
    "`tidemill token create --namespace NS --role viewer|editor`"
)

_bearer = HTTPBearer(auto_error=False, description="a token from `tidemill token create`")


class Unauthorized(Exception):
    """401: the caller is not known (no token, an unknown one, a revoked one)."""


class Forbidden(Exception):
    """403: the caller is known but lacks the role or namespace for the call."""


@dataclass(frozen=True)
class Caller:
    """The authenticated party behind one request."""

    actor: str
    """How events name it: ``token 'alice' (editor, ads)``."""
    role: Role | None = None
    scope: str = ALL_NAMESPACES
    """The namespace a user token covers, or ``*``."""
    job_uid: str | None = None
    """Set for a job's own credential."""
    open: bool = False
    """Auth is off: every call is allowed."""

    @property
    def home(self) -> str | None:
        """The namespace bare job names resolve in (None: wherever they are)."""
        return None if self.scope == ALL_NAMESPACES or self.role is None else self.scope

    def may(self, role: Role, namespace: str) -> bool:
        """``namespace`` ``*`` asks for every namespace at once."""
        if self.open:
            return True
        if self.role is None or not self.role.covers(role):
            return False
        return self.scope in (ALL_NAMESPACES, namespace)

    def require(self, role: Role, namespace: str, verb: str) -> None:
        """Raise :class:`Forbidden` saying what is missing, unless the call is allowed."""
        if self.may(role, namespace):
            return
        if self.role is None:
            raise Forbidden(
                f"{self.actor} may act only on its own job (read it, save its master state, "
                f"post its events), not {verb}; use a user token for that"
            )
        if role is Role.ADMIN:
            raise Forbidden(f"{self.actor} may not {verb}: that needs an admin token")
        whom = "a" if role is Role.VIEWER else "an editor or admin"
        if namespace == ALL_NAMESPACES:
            raise Forbidden(
                f"{self.actor} may not {verb}: that needs {whom} token for all namespaces ('*')"
            )
        raise Forbidden(
            f"{self.actor} may not {verb} in namespace '{namespace}': that needs {whom} "
            f"token covering '{namespace}' (an admin makes one with `tidemill token create "
            f"--namespace {namespace} --role {role.value}`)"
        )


OPEN = Caller(actor="anonymous (auth off)", open=True)


class Guard:
    """Turns a request's bearer token into a :class:`Caller`, and checks job access.

    ``enabled`` False is the open server: every request gets :data:`OPEN`.
    """

    def __init__(
        self,
        store: Store,
        credentials: JobCredentials,
        resolve: Callable[[str, str | None], tuple[str, str]],
        enabled: bool,
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.resolve = resolve
        self.enabled = enabled

    @classmethod
    def open(cls, store: Store, resolve: Callable[[str, str | None], tuple[str, str]]) -> Guard:
        """Auth off: every request is allowed (the embedded ``tidemill run``)."""
        return cls(store, JobCredentials(secrets.token_bytes(32)), resolve, enabled=False)

    def caller(
        self, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Caller:
        """The FastAPI dependency every route takes."""
        if not self.enabled:
            return OPEN
        if bearer is None or not bearer.credentials:
            raise Unauthorized(f"this server needs a token: {TOKEN_HELP}")
        token = bearer.credentials
        uid = self.credentials.uid_of(token)
        if uid is not None:
            return Caller(actor=f"the credential of job uid {uid}", job_uid=uid)
        with self.store.read() as tx:
            row = tx.token_by_digest(digest(token))
            if row is None:
                raise Unauthorized(f"the token is not known to this server; {TOKEN_HELP}")
            if row.revoked:
                raise Unauthorized(
                    f"{describe(row)} was revoked; ask an admin for a new one "
                    "(`tidemill token create`) and set TIDEMILL_TOKEN to it"
                )
            return Caller(actor=describe(row), role=Role(row.role), scope=row.namespace)

    def job(
        self, caller: Caller, name: str, namespace: str | None, role: Role, verb: str
    ) -> tuple[str, str]:
        """``(namespace, name)`` of a job the caller may ``verb``; raises 403/404.

        A namespace given is checked before the job is looked up, so a refusal says
        nothing about which jobs exist there. A job's credential may read its own job.
        """
        if caller.job_uid is not None:
            ns, name = self.resolve(name, namespace)
            if role is not Role.VIEWER or self._uid(ns, name) != caller.job_uid:
                caller.require(role, ns, verb)
            return ns, name
        namespace = namespace or caller.home
        if namespace is not None:
            caller.require(role, namespace, verb)
        ns, name = self.resolve(name, namespace)
        caller.require(role, ns, verb)
        return ns, name

    def own_job(
        self, caller: Caller, name: str, namespace: str | None, verb: str, admins: bool = False
    ) -> tuple[str, str]:
        """A call only the job's own credential may make (``admins``: and admin tokens)."""
        if caller.open:
            return self.resolve(name, namespace)
        if caller.job_uid is None:
            if admins:
                return self.job(caller, name, namespace, Role.ADMIN, verb)
            raise Forbidden(
                f"{caller.actor} may not {verb}: only the job's own credential may (its "
                "master gets it as TIDEMILL_TOKEN); user tokens, admin ones too, may not"
            )
        ns, name = self.resolve(name, namespace)
        if self._uid(ns, name) != caller.job_uid:
            raise Forbidden(f"{caller.actor} may not {verb} of job {ns}/{name}: not its job")
        return ns, name

    def visible(self, caller: Caller, namespace: str | None, verb: str) -> str | None:
        """The namespace a listing is limited to (None: all), refusing what the caller
        may not read."""
        if namespace is None:
            namespace = caller.home
        caller.require(Role.VIEWER, namespace or ALL_NAMESPACES, verb)
        return namespace

    def _uid(self, namespace: str, name: str) -> str:
        with self.store.read() as tx:
            row = tx.job(namespace, name)
            if row is None:
                raise job_not_found(name, namespace)
            return row.uid


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["OPEN", "Caller", "Forbidden", "Guard", "Unauthorized", "is_loopback"]
