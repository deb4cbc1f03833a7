"""The wire protocol between the job master and the replicas: one JSON object per line.

A neutral module: the worker side (:mod:`tidemill.runtime.elastic_client`, the data
loader) and the master (:mod:`tidemill.master.server`) both import it, and it imports
neither, so neither side depends on the other.

Every worker keeps one TCP connection to the master for its whole life. A kill -9 of
the worker closes it at once (the kernel does that), so the master learns of a dead
worker in milliseconds without a heartbeat timeout on the critical path; heartbeats
only catch the rarer hung or unplugged machine.

Worker → master (``op``):

- ``register {replica, pid, status, epoch, rank, step}``: first message of every
  connection. ``status`` is ``new`` (wants to join), ``member`` (already trains in
  ``epoch``; sent when reconnecting to a restarted master) or ``ready`` (left
  ``epoch`` at a step boundary and waits for the next one, holding state at ``step``).
- ``sync {epoch, step, failed}``: this member stopped training in ``epoch`` and holds
  state at ``step``; ``failed`` when a collective broke (it rolled back to its commit).
- ``formed {epoch}``: the process group of ``epoch`` is up and the state is in sync.
- ``commit {epoch, step, data, extras}``: rank 0 committed; the master persists it.
- ``leave {}``: this member leaves for good (SIGTERM); ``done {step}``: training ended.
- ``lease {id, epoch, stage, pass, source, view}``: the next shard of ``source`` (the
  first request of an epoch carries the committed data ``view``); answered by
  ``leased {id, shard, cursor, index, total, stale}`` or ``leased {id, error, reason}``.
- ``insight {stage, sources}``: this worker's read counters; ``data_error {reason,
  message}``: a data source stopped this worker (the master posts it as an event).
- ``heartbeat {}``.

Master → worker:

- ``registered {replica, epoch}``; ``refused {message}`` (the connection is closed).
- ``change {epoch}``: the group will change; stop at the next step boundary.
- ``abort {epoch}``: a member of ``epoch`` is gone; drop that process group now.
- ``epoch {epoch, rank, world_size, members, store_host, store_port, prefix,
  source_rank, step, previous_world_size, timeout_s}``: the new topology.
- ``evicted {message}``: the master removed this replica (it stopped answering).
- ``finished {step}``: training already ended; nothing to join.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]

MAX_LINE_BYTES = 1 << 20
"""A commit carries data positions and small extras; anything bigger is a bug."""


class ProtocolError(ValueError):
    """A line that is not one JSON object with a string ``op``."""


def encode(message: Message) -> bytes:
    """One message as a line of compact JSON.

    >>> encode({"op": "heartbeat"})
    b'{"op":"heartbeat"}\\n'
    """
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """Parse one line, refusing anything but a JSON object with a string ``op``.

    >>> decode(b'{"op": "sync", "epoch": 3}')
    {'op': 'sync', 'epoch': 3}
    """
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"not JSON: {line[:80]!r} ({exc})") from exc
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ProtocolError(f"expected a JSON object with a string 'op', got {line[:80]!r}")
    return message


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as a pair, with a readable refusal.

    >>> split_address("127.0.0.1:29400")
    ('127.0.0.1', 29400)
    >>> split_address("[::1]:29400")
    ('::1', 29400)
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port (e.g. 127.0.0.1:29400)")
    return host.strip("[]"), int(port)
