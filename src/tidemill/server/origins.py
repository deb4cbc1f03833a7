"""What a web page in the user's browser may not do to a server it can reach.

A server on loopback runs open (no token), so without these checks any web page its
user visits could submit a job, that is run any command on their machine: a page may
POST a job file to ``http://127.0.0.1:8500/api/v1/jobs`` as ``text/plain`` (a request
browsers send without asking), or point its own DNS name at 127.0.0.1 and then call the
API as its own origin (DNS rebinding). Two rules stop both:

- **Host**: a server on loopback answers only requests addressed to a loopback name
  (``localhost``, ``127.0.0.1``, ``[::1]``) or to a name its operator allowed
  (``--allow-host``); a rebound name is refused before any handler runs.
- **Origin**: a request that may change something (any method but GET, HEAD, OPTIONS)
  is refused when the browser says it comes from another site
  (``Sec-Fetch-Site: cross-site|same-site``; from a browser too old to send that, an
  ``Origin`` other than the server's own). The CLI and the SDK send neither header; the
  dashboard calls its own origin. One GET acts, so it is held to the same rule:
  collecting a job's stacks signals (or briefly stops) every replica and writes a dump
  to its log, which a page could repeat from an ``<img>`` tag.

A token in a header cannot be sent by another site's page without the server's CORS
consent (tidemill gives none), so a server with ``--auth`` is safe from both already;
the Origin rule holds for it too, so one rule covers every mode. Every answer also
forbids framing (a page could lay the dashboard's buttons under its own) and content
sniffing; the dashboard's page carries a Content-Security-Policy (``DASHBOARD_POLICY``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidemill.api.limits import shown
from tidemill.server.auth import is_loopback
from tidemill.server.middleware import error_body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing here, so any page may send them (it cannot read the
answer without CORS consent)."""
ACTING_READS = re.compile(r"/api/v1/jobs/[^/]+/stacks")
"""Paths whose GET acts on a job (see the module's docstring): cross-site, refused too."""
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}
_EVERY_ANSWER = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff")]
DASHBOARD_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
"""The dashboard's Content-Security-Policy: its own scripts only (no inline script, no
eval), so text that slipped past escaping cannot run; inline styles are its bars'."""
_LABEL = "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
HOST_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")
"""A DNS name as ``--allow-host`` takes it (lowercase letters, digits, hyphens, dots)."""


def host_name(host: str) -> str:
    """The name in a Host header, without its port or a final dot (``localhost.`` is
    ``localhost``): ``[::1]:8500`` → ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.removesuffix(".")


def _authority(netloc: str, scheme: str) -> str:
    """``netloc`` lowercased, without the port its scheme implies."""
    netloc = netloc.strip().lower()
    default = _DEFAULT_PORTS.get(scheme)
    return netloc.removesuffix(f":{default}") if default else netloc


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` names the server the request was sent to."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    return _authority(parts.netloc, parts.scheme) == _authority(host, parts.scheme)


class UnusableHostName(ValueError):
    """An ``--allow-host`` that is no DNS name, or one given to a server beyond loopback."""


def is_dns_name(name: str) -> bool:
    return len(name) <= 253 and HOST_NAME.fullmatch(name) is not None


def allowed_names(allowed: Iterable[str]) -> list[str]:
    """``--allow-host`` names, lowercased; raises UnusableHostName for one that is no
    DNS name."""
    names = [name.strip().lower() for name in allowed]
    for name in names:
        if not is_dns_name(name):
            raise UnusableHostName(
                f"--allow-host {shown(name, 70)} is not a DNS name: give a name such as "
                "tidemill.example.com (letters, digits, hyphens and dots; no port or scheme)"
            )
    return names


def answered_names(
    bound_host: str, allowed: Iterable[str], advertised_url: str | None = None
) -> frozenset[str] | None:
    """The host names a server bound to ``bound_host`` answers: on loopback, the loopback
    names, ``allowed`` and the name of the URL replicas are told to use; beyond loopback
    None (every name), where tokens guard the API. Raises UnusableHostName."""
    names = allowed_names(allowed)
    if not is_loopback(bound_host):
        if names:
            raise UnusableHostName(
                f"--allow-host is for a server on loopback; one on {shown(bound_host, 70)} "
                "answers every name already (its tokens guard it): leave --allow-host out"
            )
        return None
    advertised = urlsplit(advertised_url).hostname if advertised_url else None
    return frozenset({"localhost", host_name(bound_host), *names, *filter(None, [advertised])})


class BrowserGuard:
    """Refuse requests to a name this server does not answer and foreign-origin writes,
    before any handler (and before the body is read)."""

    def __init__(self, app: ASGIApp, names: frozenset[str] | None) -> None:
        self.app = app
        self.names = names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        refusal = self._foreign_host(host) or _foreign_write(
            scope["method"], scope["path"], headers, host
        )

        async def guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_EVERY_ANSWER]
            await send(message)

        if refusal is None:
            await self.app(scope, receive, guarded)
            return
        code, text = refusal
        response = JSONResponse(error_body(code, text, []), 403)
        await response(scope, receive, guarded)

    def _foreign_host(self, host: str) -> tuple[str, str] | None:
        if self.names is None or not host:
            return None
        name = host_name(host)
        if name in self.names or is_loopback(name):
            return None
        option = name if is_dns_name(name) else "NAME"
        return (
            "ForeignHost",
            f"Host {shown(host, 70)} is not a name of this server: a server on loopback "
            "answers only localhost, 127.0.0.1 and [::1], so that a web page cannot reach "
            "it through a DNS name pointed here (DNS rebinding); to serve another name (a "
            f"proxy's), start it with --allow-host {option}",
        )


def _foreign_write(method: str, path: str, headers: Headers, host: str) -> tuple[str, str] | None:
    """A browser's ``Sec-Fetch-Site`` decides where it is sent (no page can set or drop
    it, and a proxy that rewrites Host leaves it right); without it (an older browser),
    ``Origin`` is compared with Host."""
    if method in SAFE_METHODS and not ACTING_READS.fullmatch(path):
        return None
    origin = headers.get("origin")
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None:
        if fetch_site.lower() not in FOREIGN_FETCH_SITES:
            return None
    elif origin is None or same_origin(origin, host):
        return None
    source = f"origin {shown(origin, 70)}" if origin is not None else "another site's page"
    if fetch_site is not None:
        source += f" ({shown(fetch_site, 30)})"
    return (
        "CrossSiteRequest",
        f"refused a {method} of {shown(path, 70)} from {source}: a web page from another "
        "site may not change anything on this server or act on its jobs (cross-site "
        "request forgery); use the tidemill CLI, the Python SDK, or the dashboard this "
        "server serves",
    )


__all__ = [
    "DASHBOARD_POLICY",
    "BrowserGuard",
    "UnusableHostName",
    "allowed_names",
    "answered_names",
    "host_name",
    "same_origin",
]
