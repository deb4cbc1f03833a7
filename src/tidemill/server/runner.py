"""Runs the control plane (store + controller + HTTP server) in this process.

``tidemill server`` blocks in :meth:`ServerRunner.serve_forever`; ``tidemill run`` and
the tests start one on a free port with :meth:`ServerRunner.start`.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import uvicorn

from tidemill.api.cluster import ClusterSpec
from tidemill.api.loader import load_cluster_file
from tidemill.controller.reconciler import Controller, ControllerConfig
from tidemill.engines.local import free_port
from tidemill.engines.registry import DEFAULT_ENGINE, check_engine_name, create_engine
from tidemill.server.app import create_app
from tidemill.server.metrics import make_registry
from tidemill.store.store import Store, sqlite_url

DEFAULT_STATE_DIR = Path.home() / ".tidemill"


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
        engine: str = DEFAULT_ENGINE,
    ) -> None:
        """``engine`` names what runs the replicas (see
        :func:`tidemill.engines.engine_names`); its state lives in ``state_dir``."""
        check_engine_name(engine)
        self.state_dir = (state_dir or DEFAULT_STATE_DIR).expanduser().resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cluster = load_cluster_file(cluster_file) if cluster_file else ClusterSpec()
        self.host = host
        self.port = port or free_port(host)
        self.store = Store(store_url or sqlite_url(self.state_dir))
        self.engine = create_engine(engine, self.state_dir)
        registry, metrics = make_registry(self.store)
        config = controller_config or ControllerConfig()
        self.controller = Controller(
            self.store,
            self.engine,
            cluster,
            replace(config, server_url=config.server_url or self.url),
            on_cycle=metrics.record,
        )
        uvicorn_config = uvicorn.Config(
            create_app(self.controller, registry),
            host=host,
            port=self.port,
            log_level="warning",
            access_log=False,
        )
        self._server = uvicorn.Server(uvicorn_config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> str:
        """Start in background threads; returns the base URL once /healthz answers."""
        self.controller.start()
        self._thread = threading.Thread(target=self._server.run, name="tidemill-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self.url
            except httpx.HTTPError:
                pass
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the tidemill server did not come up on {self.url}; is the port already in use?"
        )

    def stop(self) -> None:
        """Stop serving and reconciling. Replicas keep running and are re-adopted later."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.controller.stop()
        self.engine.close()
        self.store.close()

    def serve_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        stop.wait()
        self.stop()
