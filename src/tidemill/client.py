"""Python SDK over tidemill's REST API (``/api/v1``); the CLI is built on it.

Every failure is a :class:`TidemillError`, so one ``except`` covers the SDK::

    TidemillError              anything this client raises
      ├─ ServerUnavailable     no server answers at the URL (refused, unknown host)
      ├─ TimedOut              the server did not answer in time, or wait() ran out
      └─ ApiError              the server answered 4xx/5xx: .status .code .message .errors
           ├─ InvalidSpec      422: the job is invalid; .errors holds one FieldError per problem
           ├─ NotFound         404: no such job (or queue, node)
           └─ Conflict         409: the name is taken, or a bare name matches several namespaces

Example::

    with Client("http://127.0.0.1:8500") as client:
        view = client.submit(Path("job.yaml"))
        final = client.wait(view.name, namespace=view.namespace)
        print(final.phase)
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Container, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from pydantic import ValidationError

from tidemill.api.checkpoint import CheckpointList
from tidemill.api.debug import StacksReport
from tidemill.api.errors import FieldError, SpecError, from_validation_error
from tidemill.api.job import Metadata, TrainingJob
from tidemill.api.limits import shown
from tidemill.api.loader import load_job_file
from tidemill.api.metrics import MetricsView
from tidemill.api.status import (
    EventView,
    JobList,
    JobPhase,
    JobSummary,
    JobView,
    NodeView,
    QueueView,
)
from tidemill.api.token import CreatedToken, Role, TokenRequest, TokenView
from tidemill.client_config import ConfigError, normalise_url, token_for

DEFAULT_SERVER = "http://127.0.0.1:8500"
SERVER_ENV = "TIDEMILL_SERVER"
API_PREFIX = "/api/v1"
FINISHED = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED})
"""The phases :meth:`Client.wait` waits for unless told others."""
JOBS_PER_PAGE = 1000
"""Jobs :meth:`Client.jobs` asks for at a time: answers of about 250 KB; reading 10,000
jobs so took a quarter more of the server's time than one answer (pages of 500: 0.4 more;
benchmarks/job_list.py)."""


class TidemillError(Exception):
    """Base of every error the client raises."""


class ServerUnavailable(TidemillError):
    """Nothing answers at the server URL."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"cannot reach the tidemill server at {url}{why}; start one with "
            f"`tidemill server` or set --server / {SERVER_ENV}"
        )


class TimedOut(TidemillError):
    """A request or a wait took longer than allowed."""


class ApiError(TidemillError):
    """The server refused a request; ``errors`` lists field problems, if any."""

    def __init__(
        self, status: int, code: str, message: str, errors: list[FieldError] | None = None
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors or []
        lines = [message, *(str(e) for e in self.errors)]
        super().__init__("\n".join(lines))


class InvalidSpec(ApiError):
    """422: the job (or request body) is invalid. Also raised for files checked locally."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: a job of that name exists, or a bare name is ambiguous across namespaces."""


_ERRORS_BY_STATUS: dict[int, type[ApiError]] = {422: InvalidSpec, 404: NotFound, 409: Conflict}


class Client:
    """A connection to one tidemill server.

    ``server`` defaults to ``$TIDEMILL_SERVER``, then ``http://127.0.0.1:8500``. A job
    name may be written ``namespace/name`` wherever a name and a namespace are taken.
    ``token`` (for a server with auth on) defaults to ``$TIDEMILL_TOKEN``, then the
    server's entry in the config file (see :mod:`tidemill.client_config`).
    """

    def __init__(
        self, server: str | None = None, timeout_s: float = 30, token: str | None = None
    ) -> None:
        self.server = _server_url(server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER)
        self.timeout_s = timeout_s
        try:
            self.token = token or token_for(self.server)
        except ConfigError as exc:
            raise TidemillError(str(exc)) from None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.server, timeout=timeout_s, headers=headers)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(
        self, job: str | os.PathLike[str] | dict[str, Any] | TrainingJob, dry_run: bool = False
    ) -> JobView:
        """Submit a job: a ``TrainingJob``, a parsed document, a file path or file text.

        A path (a ``Path``, or a one-line string not starting with ``{``) is loaded and
        validated here first, so Kubeflow files are converted and ``workingDir`` resolves
        against the file's folder. Text is sent as YAML for the server to validate.
        """
        params = {"dryRun": "true"} if dry_run else {}
        if isinstance(job, str) and ("\n" in job or job.lstrip().startswith("{")):
            headers = {"Content-Type": "application/yaml"}
            response = self._request("POST", "/jobs", params=params, content=job, headers=headers)
            return JobView.model_validate(response.json())
        if isinstance(job, str | os.PathLike):
            job = _load_locally(Path(job))
        document = job.to_document() if isinstance(job, TrainingJob) else job
        response = self._request(
            "POST",
            "/jobs",
            params=params,
            content=json.dumps(document),
            headers={"Content-Type": "application/json"},
        )
        return JobView.model_validate(response.json())

    def jobs(self, namespace: str | None = None, phase: str | None = None) -> list[JobSummary]:
        """Every job, oldest first, read :data:`JOBS_PER_PAGE` at a time (so no answer is
        larger than a page, however many jobs the server holds)."""
        items: list[JobSummary] = []
        after: str | None = None
        while True:
            page = self.job_page(namespace, phase, limit=JOBS_PER_PAGE, after=after)
            items.extend(page.items)
            if page.continue_ is None:
                return items
            after = page.continue_

    def job_page(
        self,
        namespace: str | None = None,
        phase: str | None = None,
        *,
        limit: int,
        after: str | None = None,
        newest: bool = False,
    ) -> JobList:
        """At most ``limit`` jobs after the page whose ``continue_`` is ``after``, oldest
        first or ``newest`` first, with the count of jobs in each phase."""
        params = _present(
            namespace=namespace, phase=phase, limit=limit, newest=newest or None
        ) | _present(**{"continue": after})
        return JobList.model_validate(self._request("GET", "/jobs", params=params).json())

    def get(self, name: str, namespace: str | None = None) -> JobView:
        name, params = _job_ref(name, namespace)
        return JobView.model_validate(self._request("GET", f"/jobs/{name}", params=params).json())

    def delete(self, name: str, namespace: str | None = None) -> str:
        """Delete a job; returns ``namespace/name`` once its processes are gone."""
        name, params = _job_ref(name, namespace)
        return str(self._request("DELETE", f"/jobs/{name}", params=params).json()["deleted"])

    def scale(self, name: str, role: str, replicas: int, namespace: str | None = None) -> JobView:
        name, params = _job_ref(name, namespace)
        body = {"role": role, "replicas": replicas}
        response = self._request("POST", f"/jobs/{name}/scale", params=params, json=body)
        return JobView.model_validate(response.json())

    def suspend(self, name: str, namespace: str | None = None) -> JobView:
        """Stop the job's processes and keep it out of its queue until resumed; returns
        at once (its phase is Suspended once they are gone)."""
        name, params = _job_ref(name, namespace)
        return JobView.model_validate(
            self._request("POST", f"/jobs/{name}/suspend", params=params).json()
        )

    def resume(self, name: str, namespace: str | None = None) -> JobView:
        """Queue a suspended job again; it restores its newest checkpoint, if any."""
        name, params = _job_ref(name, namespace)
        return JobView.model_validate(
            self._request("POST", f"/jobs/{name}/resume", params=params).json()
        )

    def logs(
        self,
        name: str,
        role: str | None = None,
        index: int | None = None,
        follow: bool = False,
        tail_lines: int | None = None,
        namespace: str | None = None,
    ) -> Iterator[str]:
        """Log lines without line endings; all replicas' lines carry ``[role-index] ``.

        The request is sent now, so a missing job raises here rather than on first
        ``next()``. With ``follow`` the iterator ends when the job finishes; close it
        (or break out of the loop) to stop early.
        """
        name, params = _job_ref(name, namespace)
        params.update(_present(role=role, index=index, tailLines=tail_lines))
        params["follow"] = "true" if follow else "false"
        timeout = httpx.Timeout(self.timeout_s, read=None if follow else self.timeout_s)
        request = self._http.build_request(
            "GET", f"{API_PREFIX}/jobs/{name}/logs", params=params, timeout=timeout
        )
        return self._lines(self._send(request, stream=True))

    def events(self, job: str | None = None, since: int | None = None) -> list[EventView]:
        """Events, oldest first; ``job`` is ``namespace/name``; ``since`` an event id."""
        items = self._request("GET", "/events", params=_present(job=job, since=since)).json()
        return [EventView.model_validate(item) for item in items["items"]]

    def job_events(self, name: str, namespace: str | None = None) -> list[EventView]:
        name, params = _job_ref(name, namespace)
        items = self._request("GET", f"/jobs/{name}/events", params=params).json()["items"]
        return [EventView.model_validate(item) for item in items]

    def metrics(
        self,
        name: str,
        namespace: str | None = None,
        replica: str | None = None,
        since_step: int = -1,
    ) -> MetricsView:
        """The job's training metrics: reports oldest step first, and the latest values."""
        name, params = _job_ref(name, namespace)
        params = {**params, "sinceStep": since_step}
        if replica is not None:
            params["replica"] = replica
        response = self._request("GET", f"/jobs/{name}/metrics", params=params)
        return MetricsView.model_validate(response.json())

    def checkpoints(self, name: str, namespace: str | None = None) -> CheckpointList:
        """The job's checkpoint folder and its checkpoints, newest first."""
        name, params = _job_ref(name, namespace)
        response = self._request("GET", f"/jobs/{name}/checkpoints", params=params)
        return CheckpointList.model_validate(response.json())

    def stacks(self, name: str, namespace: str | None = None) -> StacksReport:
        """Every running replica's Python stacks, and the groups stopped in one place."""
        name, params = _job_ref(name, namespace)
        response = self._request("GET", f"/jobs/{name}/stacks", params=params)
        return StacksReport.model_validate(response.json())

    def exec(
        self,
        name: str,
        role: str,
        index: int,
        command: list[str],
        on_output: Callable[[str], None],
        namespace: str | None = None,
        timeout_s: float = 3600.0,
    ) -> int:
        """Run ``command`` in replica ``role-index``'s environment and folder; its output
        goes to ``on_output`` as it comes; returns its exit code."""
        name, params = _job_ref(name, namespace)
        body = {"role": role, "index": index, "command": command, "timeout_s": timeout_s}
        request = self._http.build_request(
            "POST",
            f"{API_PREFIX}/jobs/{name}/exec",
            params=params,
            json=body,
            timeout=httpx.Timeout(self.timeout_s, read=None),
        )
        for line in self._lines(self._send(request, stream=True)):
            if not line:
                continue
            message = json.loads(line)
            if "exit_code" in message:
                return int(message["exit_code"])
            on_output(str(message["output"]))
        raise TidemillError(f"the server at {self.server} ended the exec without an exit code")

    def queues(self) -> list[QueueView]:
        items = self._request("GET", "/queues").json()["items"]
        return [QueueView.model_validate(item) for item in items]

    def nodes(self) -> list[NodeView]:
        items = self._request("GET", "/nodes").json()["items"]
        return [NodeView.model_validate(item) for item in items]

    def create_token(
        self, namespace: str | None, role: Role | str = Role.VIEWER, name: str | None = None
    ) -> CreatedToken:
        """Make a token (admins only); ``.token`` holds its secret, shown this once."""
        try:
            request = TokenRequest.checked(name=name, namespace=namespace, role=role)
        except SpecError as exc:
            raise InvalidSpec(422, "Invalid", "the token request is invalid", exc.errors) from None
        body = request.model_dump(mode="json", exclude_none=True)
        return CreatedToken.model_validate(self._request("POST", "/tokens", json=body).json())

    def tokens(self) -> list[TokenView]:
        """Every token, revoked ones included, without secrets (admins only)."""
        items = self._request("GET", "/tokens").json()["items"]
        return [TokenView.model_validate(item) for item in items]

    def revoke_token(self, name: str) -> TokenView:
        """Refuse the named token from now on (admins only)."""
        try:
            TokenRequest.checked(name=name, role=Role.ADMIN)  # its name rule, before the URL
        except SpecError as exc:
            raise InvalidSpec(422, "Invalid", f"{shown(name)} names no token", exc.errors) from None
        return TokenView.model_validate(self._request("DELETE", f"/tokens/{name}").json())

    def health(self) -> bool:
        """True when a server answers ``/healthz`` with ok; never raises."""
        try:
            response = self._http.get("/healthz")
            return response.status_code == 200 and response.json().get("status") == "ok"
        except (httpx.HTTPError, ValueError):
            return False

    def wait(
        self,
        name: str,
        namespace: str | None = None,
        timeout_s: float | None = None,
        poll_s: float = 0.5,
        until: Container[JobPhase] = FINISHED,
    ) -> JobView:
        """Poll until the job is in one of ``until`` (by default: it has Succeeded or
        Failed), and return that view."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            view = self.get(name, namespace)
            if view.phase in until:
                return view
            if deadline is not None and time.monotonic() >= deadline:
                raise TimedOut(
                    f"job {view.namespace}/{view.name} is still {view.phase} after "
                    f"{timeout_s:g}s; wait longer or check `tidemill describe {view.name}`"
                )
            time.sleep(poll_s)
            # Later polls use the resolved namespace, so a new twin cannot make it ambiguous.
            name, namespace = view.name, view.namespace

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        request = self._http.build_request(method, f"{API_PREFIX}{path}", **kwargs)
        return self._send(request, stream=False)

    def _send(self, request: httpx.Request, stream: bool) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnavailable(self.server, _reason(exc)) from None
        except httpx.TimeoutException:
            raise TimedOut(
                f"the tidemill server at {self.server} did not answer {request.method} "
                f"{request.url.path} within {self.timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise TidemillError(
                f"{request.method} {request.url.path} to {self.server} failed: {_reason(exc)}"
            ) from None
        if response.is_error:
            if stream:
                response.read()
                response.close()
            raise api_error(response)
        return response

    def _lines(self, response: httpx.Response) -> Iterator[str]:
        try:
            yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise TidemillError(f"the stream from {self.server} broke: {_reason(exc)}") from None
        finally:
            response.close()


def api_error(response: httpx.Response) -> ApiError:
    """Build the typed error for a 4xx/5xx, tolerating bodies that are not tidemill's JSON."""
    code = response.reason_phrase or f"HTTP{response.status_code}"
    message = ""
    errors: list[FieldError] = []
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(detail, Mapping):
        code = str(detail.get("code") or code)
        message = str(detail.get("message") or "")
        errors = [
            FieldError(str(item.get("path", "")), str(item.get("message", "")))
            for item in detail.get("errors") or []
            if isinstance(item, Mapping)
        ]
    elif isinstance(body, Mapping) and isinstance(body.get("detail"), list):
        # FastAPI's own refusals of query parameters: {"detail": [{"loc": [...], "msg": ...}]}
        message = "the request is invalid"
        errors = [
            FieldError(".".join(str(p) for p in item.get("loc", [])), str(item.get("msg", "")))
            for item in body["detail"]
            if isinstance(item, Mapping)
        ]
    if not message:
        text = response.text.strip()
        message = f"the server answered {response.status_code} {code}" + (
            f": {text[:300]}" if text else ""
        )
    kind = _ERRORS_BY_STATUS.get(response.status_code, ApiError)
    return kind(response.status_code, code, message, errors)


def _server_url(server: str) -> str:
    """The server's URL, normalised, or InvalidSpec: a URL httpx cannot parse would
    otherwise fail deep inside the first request."""
    url = normalise_url(server)
    problem = server_url_problem(url)
    if problem is None:
        return url
    hint = f"{shown(server)} is not a server URL ({problem}); use host:port or http(s)://host:port"
    raise InvalidSpec(422, "Invalid", "the server URL is invalid", [FieldError("server", hint)])


def server_url_problem(url: str) -> str | None:
    """What keeps ``url`` from naming a tidemill server (http or https, a host), or None."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return str(exc).rstrip(".")
    if parsed.scheme not in ("http", "https"):
        return f"its scheme is {parsed.scheme!r}, not http or https"
    return None if parsed.host else "it names no host"


def split_job_ref(name: str, namespace: str | None) -> tuple[str, str | None]:
    """``ns/name`` → (name, ns); a namespace given separately wins only if they agree."""
    if "/" not in name:
        return name, namespace
    given_ns, _, bare = name.partition("/")
    if namespace is not None and namespace != given_ns:
        raise TidemillError(
            f"job {name!r} names namespace {given_ns!r} but namespace {namespace!r} was "
            "also given; use one of them"
        )
    return bare, given_ns


def _job_ref(name: str, namespace: str | None) -> tuple[str, dict[str, Any]]:
    """The name for the URL path and the namespace as a query parameter, each checked
    first: only a DNS label can name a job, and anything else (a slash, ``..``, a control
    character) would change which route the path names, or fail inside httpx."""
    bare, ns = split_job_ref(name, namespace)
    try:
        Metadata.model_validate(_present(name=bare, namespace=ns))
    except ValidationError as exc:
        errors = from_validation_error(exc, {"name", "namespace"}).errors
        raise InvalidSpec(422, "Invalid", f"{shown(name)} names no job", errors) from None
    return bare, _present(namespace=ns)


def _present(**params: Any) -> dict[str, Any]:
    return {key: value for key, value in params.items() if value is not None}


def _load_locally(path: Path) -> TrainingJob:
    try:
        return load_job_file(path)
    except SpecError as exc:
        errors = list(exc.errors)
        raise InvalidSpec(422, "Invalid", f"{path} is not a valid job", errors) from None


def _reason(exc: httpx.HTTPError) -> str:
    return re.sub(r"^\[Errno -?\d+\] ", "", str(exc)) or type(exc).__name__


__all__ = [
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "ApiError",
    "Client",
    "Conflict",
    "InvalidSpec",
    "NotFound",
    "ServerUnavailable",
    "TidemillError",
    "TimedOut",
    "api_error",
    "normalise_url",
    "server_url_problem",
    "split_job_ref",
]
