"""Where the master keeps what must outlive it: its state and the job's events.

A restarted master (same port, relaunched by the controller) loads its state and
resumes: membership epoch, members, committed step and data positions. Two backends
behind one small interface: the control plane's REST API (production) and a JSON file
(tests and single-machine runs without a server). Neither raises on a failed write:
the master keeps training going and says what it could not save.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

import httpx

State = dict[str, Any]
METRIC_POINTS_PER_POST = 1000
METRIC_POST_BYTES = 512 * 1024


class StateBackend(Protocol):
    async def load(self) -> State | None:
        """The last saved state, or None for a job whose master never saved one."""
        ...

    async def save(self, state: State) -> None: ...

    async def event(self, type: str, reason: str, message: str, replica: str | None) -> None:
        """Post an event (``type`` is ``Normal`` or ``Warning``) for ``tidemill describe``."""
        ...

    async def metrics(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hand on the workers' metric reports; returns those not taken now (the master
        tries them again with the next batch)."""
        ...

    async def close(self) -> None: ...


def log(message: str) -> None:
    """The master's own log line (its stderr goes to ``tidemill logs JOB --role master``)."""
    print(f"tidemill-master: {message}", file=sys.stderr, flush=True)


class FileBackend:
    """State in ``path`` (written atomically), events and metric reports appended to
    ``path.events`` and ``path.metrics`` as JSON lines.

    Example::

        >>> import asyncio, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "master.json"
        >>> backend = FileBackend(path)
        >>> asyncio.run(backend.save({"epoch": 3}))
        >>> asyncio.run(backend.load())
        {'epoch': 3}
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.events_path = self.path.with_name(self.path.name + ".events")
        self.metrics_path = self.path.with_name(self.path.name + ".metrics")

    async def load(self) -> State | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError(f"{self.path}: expected a JSON object, found {type(state).__name__}")
        return state

    async def save(self, state: State) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            log(f"could not save state to {self.path}: {exc}")

    async def event(self, type: str, reason: str, message: str, replica: str | None) -> None:
        record = {"type": type, "reason": reason, "message": message, "replica": replica}
        try:
            with self.events_path.open("a") as out:
                out.write(json.dumps(record) + "\n")
        except OSError as exc:
            log(f"could not write event to {self.events_path}: {exc}")

    async def metrics(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        try:
            with self.metrics_path.open("a") as out:
                out.writelines(json.dumps(point) + "\n" for point in points)
        except OSError as exc:
            log(f"could not write metrics to {self.metrics_path}: {exc}")
        return []

    async def close(self) -> None:
        return None


class RestBackend:
    """The control plane's ``/api/v1/jobs/{name}/master-state``, ``.../events`` and
    ``.../metrics``.

    Sent with the job's own credential: ``token``, by default ``$TIDEMILL_TOKEN`` (the
    controller gives it to the master); with auth on, nothing else may write them.
    """

    def __init__(
        self, server: str, job: str, timeout_s: float = 5.0, token: str | None = None
    ) -> None:
        namespace, sep, name = job.partition("/")
        if not sep or not namespace or not name:
            raise ValueError(f"TIDEMILL_JOB={job!r} must be namespace/name")
        self.job = job
        self.params = {"namespace": namespace}
        self.state_url = f"/api/v1/jobs/{name}/master-state"
        self.events_url = f"/api/v1/jobs/{name}/events"
        self.metrics_url = f"/api/v1/jobs/{name}/metrics"
        token = token or os.environ.get("TIDEMILL_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(
            base_url=server.rstrip("/"), timeout=timeout_s, headers=headers
        )

    async def load(self, attempts: int = 10, backoff_s: float = 0.5) -> State | None:
        """Retried: the control plane may be restarting too; a master that cannot load
        starts empty, and the workers' claims tell it which epoch they are in."""
        for attempt in range(attempts):
            try:
                response = await self.client.get(self.state_url, params=self.params)
                _raise_for_status(response)
                state = response.json().get("state")
                return state if isinstance(state, dict) else None
            except (httpx.HTTPError, ValueError) as exc:
                if attempt == attempts - 1:
                    log(
                        f"could not load the saved state of {self.job} from "
                        f"{self.client.base_url}{self.state_url} ({exc}); starting empty"
                    )
                    return None
                await asyncio.sleep(backoff_s)
        return None

    async def save(self, state: State) -> None:
        try:
            response = await self.client.put(
                self.state_url, params=self.params, json={"state": state}
            )
            _raise_for_status(response)
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
            log(f"could not save state to {self.client.base_url}{self.state_url}: {why}")

    async def event(self, type: str, reason: str, message: str, replica: str | None) -> None:
        body = {"type": type, "reason": reason, "message": message, "replica": replica}
        try:
            response = await self.client.post(self.events_url, params=self.params, json=body)
            _raise_for_status(response)
        except httpx.HTTPError as exc:
            log(f"could not post event {reason} ({message}): {exc}")

    async def metrics(self, points: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """In posts of at most METRIC_POINTS_PER_POST and METRIC_POST_BYTES. A post the
        server refused as invalid (422, 413) is dropped; from one it could not take now
        (429, 503, no answer) on, the reports are returned to be tried again."""
        start = 0
        for chunk in _chunks(points):
            try:
                response = await self.client.post(
                    self.metrics_url, params=self.params, json={"points": chunk}
                )
                _raise_for_status(response)
            except httpx.HTTPError as exc:
                log(f"could not post {len(chunk)} metric report(s): {exc}")
                refused = isinstance(exc, httpx.HTTPStatusError) and (
                    exc.response.status_code in (413, 422)
                )
                if not refused:
                    return points[start:]
            start += len(chunk)
        return []

    async def close(self) -> None:
        await self.client.aclose()


def _chunks(points: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``points`` cut into bodies the control plane takes (it refuses more than 1 MiB)."""
    chunks: list[list[dict[str, Any]]] = []
    size = 0
    for point in points:
        length = len(json.dumps(point)) + 1
        if (
            not chunks
            or len(chunks[-1]) >= METRIC_POINTS_PER_POST
            or size + length > METRIC_POST_BYTES
        ):
            chunks.append([])
            size = 0
        chunks[-1].append(point)
        size += length
    return chunks


def _raise_for_status(response: httpx.Response) -> None:
    """Like ``raise_for_status``, with the server's own message (a 403 says why)."""
    if not response.is_error:
        return
    try:
        detail = str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        detail = response.text[:300]
    raise httpx.HTTPStatusError(
        f"{response.status_code} {response.reason_phrase}: {detail}",
        request=response.request,
        response=response,
    )
