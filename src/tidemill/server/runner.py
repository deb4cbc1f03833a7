"""Runs the control plane (store + controller + HTTP server) in this process.

``tidemill server`` blocks in :meth:`ServerRunner.serve_forever`; ``tidemill run`` and
the tests start one on a free port with :meth:`ServerRunner.start`.

Auth is off unless asked for (``auth=True``); a server that listens beyond loopback
refuses to start without it unless told ``insecure=True``. Each job's credential is
minted from ``<state-dir>/job-secret`` whether auth is on or not, so masters keep
working when a server is restarted with auth turned on.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import uvicorn

from tidemill.api.checkpoint import is_url
from tidemill.api.cluster import ClusterSpec
from tidemill.api.loader import load_cluster_file
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.engines.registry import DEFAULT_ENGINE, check_engine_name, create_engine
from tidemill.peer_user import can_tell_users
from tidemill.server.app import create_app
from tidemill.server.auth import Guard, is_loopback
from tidemill.server.connections import ConnectionBounds, ConnectionCollector, bounded_protocol
from tidemill.server.limits import Limits
from tidemill.server.metrics import make_registry
from tidemill.server.origins import answered_names
from tidemill.server.parse_pool import ParsePool
from tidemill.server.tokens import JobCredentials, bootstrap_admin
from tidemill.server.utilization import INTERVAL_S as UTILIZATION_INTERVAL_S
from tidemill.server.utilization import UtilizationRecorder
from tidemill.store.store import PRIVATE_FOLDER_MODE, Store, StoreUnavailable, sqlite_url

DEFAULT_STATE_DIR = Path.home() / ".tidemill"
PROBE_FILE_BYTES = 64 * 1024
"""Written and removed at start-up: a folder that takes this much can hold the store."""


class CannotStart(RuntimeError):
    """The server cannot run here (state folder or store not writable); says why in one line."""


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound here rather than inside uvicorn's thread: a port in use
    fails the start at once and says so (uvicorn's bind would fail in its thread while
    /healthz is answered by whatever holds the port), and port 0 takes a free one with no
    window for another process to take it first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto given, as getaddrinfo gives it: asyncio sets TCP_NODELAY on accepted
    # connections only of a socket whose proto is IPPROTO_TCP (without it, 40 ms a reply)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0, "check --host and --port")
        reason = exc.strerror or exc
        raise CannotStart(f"cannot listen on {host_port(host, port)}: {reason}; {hint}") from None
    return sock


def host_port(host: str, port: int) -> str:
    """``host:port`` as a URL writes it: an IPv6 address in brackets (``[::1]:8500``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_BIND_HINTS = {
    errno.EADDRINUSE: "another process holds the port: stop it, or choose another --port",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address: check --host",
    errno.EACCES: "ports below 1024 need privileges: choose another --port",
    socket.EAI_NONAME: "the host name does not resolve: check --host",
}


def check_writable(folder: Path) -> None:
    """Create ``folder`` (private: see :func:`exposure`) and write (and remove) a small
    file there, or say why not."""
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(mode=PRIVATE_FOLDER_MODE, parents=True, exist_ok=True)
        with open(probe, "wb") as handle:
            handle.write(bytes(PROBE_FILE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        raise CannotStart(
            f"cannot write the state folder {folder}: {exc.strerror or exc}"
        ) from None


def exposure(folder: Path) -> str | None:
    """Why ``folder`` is open to other users of this machine, or None.

    The state folder holds every job's spec (its environment values too), the replicas'
    logs and, on the local engine, the checkpoints: a folder tidemill creates is the
    owner's alone (0700). One that already was there keeps its mode, and the server says
    how to close it rather than change a mode someone chose.
    """
    mode = stat.S_IMODE(folder.stat().st_mode)
    if not mode & 0o077:
        return None
    return (
        f"the state folder {folder} is open to other users of this machine (mode "
        f"{mode:04o}): they can read every job's spec, environment and logs there; "
        f"`chmod 700 {folder}` closes it"
    )


UNGUARDED = (
    "this machine cannot tell which user calls (no Linux sock_diag), so every user of it "
    "may use this open server; on a shared machine, start it with --auth"
)
"""The warning of an open server on loopback where the kernel cannot name callers."""


class InsecureServer(ValueError):
    """Listening beyond loopback with auth off was asked for without ``insecure``."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"refusing to serve on {host} without auth: anyone who can reach it could run, "
            "read and delete every job; add --auth (tokens required), or --insecure if this "
            "network is trusted"
        )


def settle_heap() -> None:
    """Take what startup made (modules, the app, its schemas: some 100,000 objects,
    alive for good) out of the garbage collector's sight. Each full collection used to
    scan them all: a list of 1,000 jobs spent a third of its time there."""
    gc.collect()
    gc.freeze()


class ServerRunner:
    """Store, controller and uvicorn wired together, with a clean stop."""

    def __init__(
        self,
        state_dir: Path | None,
        cluster_file: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 8500,
        store_url: str | None = None,
        controller_config: ControllerConfig | None = None,
        auth: bool = False,
        insecure: bool = False,
        limits: Limits | None = None,
        engine: str = DEFAULT_ENGINE,
        engine_options: Mapping[str, object] | None = None,
        advertise_url: str | None = None,
        checkpoint_root: str | None = None,
        utilization_interval_s: float = UTILIZATION_INTERVAL_S,
        allow_hosts: Sequence[str] = (),
        connections: ConnectionBounds | None = None,
    ) -> None:
        """Raises InsecureServer (a non-loopback host without auth or --insecure),
        UnusableHostName (see ``allow_hosts``) and
        CannotStart (the state folder or the store cannot be written). ``engine`` names
        what runs the replicas (see :func:`tidemill.engines.engine_names`); its state
        lives in ``state_dir`` and ``engine_options`` go to its constructor.
        ``advertise_url`` is the URL replicas reach this server by (default: ``url``;
        on Kubernetes, the server's Service). ``checkpoint_root`` holds the checkpoints
        of jobs that name no ``checkpoint.dir`` (default: ``checkpoints`` in the state
        folder on the local engine; none elsewhere, where replicas do not share it).
        ``utilization_interval_s``: how often the cluster's use is sampled into the store
        for the dashboard's charts. ``allow_hosts``: names besides loopback's (and
        ``advertise_url``'s) that a server on loopback answers (a proxy's; see
        server/origins.py). ``connections``: how many it holds at once and how long a
        request may take to arrive (see server/connections.py)."""
        check_engine_name(engine)
        if not auth and not insecure and not is_loopback(host):
            raise InsecureServer(host)
        host_names = answered_names(host, allow_hosts, advertise_url)
        self.state_dir = (state_dir or DEFAULT_STATE_DIR).expanduser().resolve()
        check_writable(self.state_dir)
        open_here = not auth and is_loopback(host)
        self.own_user = os.geteuid() if open_here and can_tell_users() else None
        """The one user an open server on loopback serves (see server/peers.py); None
        with auth on, beyond loopback, or where users cannot be told apart."""
        unguarded = UNGUARDED if open_here and self.own_user is None else None
        self.warnings = [w for w in (exposure(self.state_dir), unguarded) if w]
        """What an operator should know before trusting this server (printed at start)."""
        cluster = load_cluster_file(cluster_file) if cluster_file else ClusterSpec()
        self.host = host
        self._socket = listening_socket(host, port)
        self.port = int(self._socket.getsockname()[1])
        with contextlib.ExitStack() as on_failure:
            on_failure.callback(self._socket.close)
            where = "the store" if store_url else f"the state folder {self.state_dir}"
            try:
                self.store = Store(store_url or sqlite_url(self.state_dir))
            except StoreUnavailable as exc:
                raise CannotStart(f"cannot write {where}: {exc.cause}") from None
            try:
                self.engine = create_engine(engine, self.state_dir, **(engine_options or {}))
            except Exception as exc:
                self.store.close()
                raise CannotStart(f"cannot start the {engine} engine: {exc}") from exc
            registry, metrics = make_registry(self.store, self.engine)
            self.connections = connections or ConnectionBounds()
            registry.register(ConnectionCollector(self.connections))
            credentials = JobCredentials.in_folder(self.state_dir)
            config = controller_config or ControllerConfig()
            if checkpoint_root is None and engine == "local":
                checkpoint_root = str(self.state_dir / "checkpoints")
            elif checkpoint_root is not None and not is_url(checkpoint_root):
                checkpoint_root = str(Path(checkpoint_root).expanduser().resolve())
            try:
                self.admin_token_file = (
                    bootstrap_admin(self.store, self.state_dir) if auth else None
                )
                """Where a new admin token was written (first start with auth on), else None."""
                self.controller = Controller(
                    self.store,
                    self.engine,
                    cluster,
                    replace(
                        config,
                        server_url=config.server_url or advertise_url or self.url,
                        job_token=config.job_token or credentials.token,
                        checkpoint_root=config.checkpoint_root or checkpoint_root,
                    ),
                    on_cycle=metrics.record,
                )
            except StoreUnavailable as exc:
                self.engine.close()
                self.store.close()
                raise CannotStart(f"cannot write {where}: {exc.cause}") from None
            attach = getattr(self.engine, "attach", None)
            if attach is not None:
                attach(self.controller)
            guard = Guard(self.store, credentials, self.controller.resolve, enabled=auth)
            self.parser = ParsePool()
            self.app = create_app(
                self.controller,
                registry,
                guard,
                limits,
                self.parser,
                host_names=host_names,
                own_user=self.own_user,
            )
            uvicorn_config = uvicorn.Config(
                self.app,
                host=host,
                port=self.port,
                log_level="warning",
                access_log=False,
                http=bounded_protocol(self.connections),
                backlog=self.connections.accept_batch,
            )
            self._server = uvicorn.Server(uvicorn_config)
            self._thread: threading.Thread | None = None
            self.utilization = UtilizationRecorder(self.store, utilization_interval_s)
            on_failure.pop_all()

    @property
    def url(self) -> str:
        return f"http://{host_port(self.host, self.port)}"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start in background threads; returns the base URL once /healthz answers
        (503, a store that cannot write for now, counts: the server is up and says so)."""
        self.controller.start()
        self.utilization.start()
        self._thread = threading.Thread(
            target=self._server.run, args=([self._socket],), name="tidemill-http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code in (200, 503):
                    return self.url
            except httpx.HTTPError:
                pass
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the tidemill server did not come up on {self.url} in {timeout_s:g}s")

    def stop(self) -> None:
        """Stop serving and reconciling. Replicas keep running and are re-adopted later."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.utilization.stop()
        self.controller.stop()
        self.parser.close()
        self.engine.close()
        self.store.close()
        self._socket.close()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        settle_heap()
        stop.wait()
        self.stop()
