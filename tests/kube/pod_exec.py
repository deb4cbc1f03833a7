"""``pods/exec`` as the API server serves it: a WebSocket (RFC 6455) speaking the
``v5.channel.k8s.io`` / ``v4.channel.k8s.io`` subprotocols, as ``kubectl exec`` and the
official client's ``kubernetes.stream`` use it.

Each binary frame starts with its channel (1 stdout, 2 stderr, 3 the error channel);
when the command ends, the error channel carries a ``Status``: ``Success``, or
``Failure`` with reason ``NonZeroExitCode`` and the exit code as an ``ExitCode`` cause,
or an ``InternalError`` when the command cannot start; then the server closes.

Emulated: the command runs with the container's environment and in its working folder,
on the node (the emulated kubelet's host), not inside the container's namespaces.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import IO, Any

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
STDOUT, STDERR, ERROR = 1, 2, 3


@dataclass(frozen=True)
class ExecTarget:
    """Where a running container's commands run."""

    env: dict[str, str]
    cwd: str


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def frame(payload: bytes, opcode: int = 2) -> bytes:
    """One unmasked (server-to-client) frame."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


def serve(h: Any, target: ExecTarget, command: list[str], protocol: str) -> None:
    """Upgrade ``h``'s connection and run ``command``, streaming its output."""
    key = h.headers.get("Sec-WebSocket-Key", "")
    h.wfile.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(key)}\r\nSec-WebSocket-Protocol: {protocol}"
            "\r\n\r\n"
        ).encode()
    )
    h.wfile.flush()
    h.close_connection = True
    lock = threading.Lock()

    def send(channel: int, data: bytes) -> None:
        with lock:
            h.wfile.write(frame(bytes([channel]) + data))
            h.wfile.flush()

    try:
        proc = subprocess.Popen(
            command,
            cwd=target.cwd,
            env=target.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
    except OSError as exc:
        program = command[0] if command else ""
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f'exec: "{program}": {exc.strerror or exc}: unknown',
            "reason": "InternalError",
            "code": 500,
        }
        _finish(h, send, status)
        return
    pumps = [
        threading.Thread(target=_pump, args=(stream, channel, send, proc), daemon=True)
        for stream, channel in ((proc.stdout, STDOUT), (proc.stderr, STDERR))
    ]
    for pump in pumps:
        pump.start()
    code = proc.wait()
    for pump in pumps:
        pump.join()
    if code == 0:
        status: dict[str, Any] = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
        }
    _finish(h, send, status)


def _pump(stream: IO[bytes] | None, channel: int, send: Any, proc: subprocess.Popen[bytes]) -> None:
    """Forward ``stream`` to ``channel``; a client that went away stops the command."""
    assert stream is not None
    for chunk in iter(lambda: stream.read1(65536), b""):
        try:
            send(channel, chunk)
        except OSError:
            proc.kill()
            return


def _finish(h: Any, send: Any, status: dict[str, Any]) -> None:
    try:
        send(ERROR, json.dumps(status).encode())
        h.wfile.write(frame(struct.pack("!H", 1000), opcode=8))
        h.wfile.flush()
    except OSError:
        pass
