"""A real job master process, and replicas that speak its protocol over real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tidemill.wire import decode, encode


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_env(address: str, index: int, **extra: str) -> dict[str, str]:
    """A worker's environment as the controller sets it, without this shell's tidemill
    variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEMILL_")}
    return {
        **env,
        "TIDEMILL_JOB": "tests/elastic",
        "TIDEMILL_ROLE": "worker",
        "TIDEMILL_INDEX": str(index),
        "TIDEMILL_ELASTIC": "1",
        "TIDEMILL_MASTER_ADDR": address,
        **extra,
    }


def wait_until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


@dataclass
class MasterProcess:
    """``python -m tidemill.master`` as the controller launches it, state in a file."""

    folder: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def state_file(self) -> Path:
        return self.folder / "master-state.json"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Launch (again, on the same port) and wait until it listens."""
        self.starts += 1
        log = self.folder / f"master.{self.starts}.log"
        env = {
            **os.environ,
            "TIDEMILL_JOB": "tests/elastic",
            "TIDEMILL_MASTER_PORT": str(self.port),
            "TIDEMILL_MASTER_STATE_FILE": str(self.state_file),
            **self.env,
        }
        env.pop("TIDEMILL_SERVER", None)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tidemill.master"], env=env, stderr=out
            )
        wait_until(lambda: "listening on" in log.read_text(), 60, f"the master to listen ({log})")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def events(self) -> list[dict[str, Any]]:
        path = self.state_file.with_name(self.state_file.name + ".events")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def wait_for_event(self, reason: str, timeout_s: float = 10) -> dict[str, Any]:
        found: dict[str, Any] = wait_until(
            lambda: next((e for e in self.events() if e["reason"] == reason), None),
            timeout_s,
            f"a {reason} event (have {[e['reason'] for e in self.events()]})",
        )
        return found

    def saved(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_file.read_text())
        return state


class Replica:
    """One worker's connection to the master, driven by hand."""

    def __init__(self, address: str) -> None:
        host, port = address.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buffer = b""

    def send(self, **message: Any) -> None:
        self.sock.sendall(encode(message))

    def register(self, name: str, status: str = "new", **claim: Any) -> Replica:
        self.send(op="register", replica=name, pid=os.getpid(), status=status, **claim)
        return self

    def receive(self, timeout_s: float = 10) -> dict[str, Any] | None:
        """The next message, or None when the master closed the connection."""
        self.sock.settimeout(timeout_s)
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return decode(line)

    def expect(self, op: str, timeout_s: float = 10) -> dict[str, Any]:
        """Skip other messages until one of kind ``op`` arrives."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while time.monotonic() < deadline:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if message is None:
                raise AssertionError(f"connection closed while waiting for {op!r}; saw {seen}")
            if message["op"] == op:
                return message
            seen.append(message)
        raise AssertionError(f"no {op!r} within {timeout_s:g} s; saw {seen}")

    def quiet(self, timeout_s: float) -> list[dict[str, Any]]:
        """Every message that arrives within ``timeout_s``."""
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                message = self.receive(remaining)
                if message is None:
                    break
                messages.append(message)
        except TimeoutError:
            pass
        return messages

    def close(self) -> None:
        self.sock.close()
