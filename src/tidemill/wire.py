"""The wire protocol between the job master and the replicas: one JSON object per line.

A neutral module: the worker side (:mod:`tidemill.runtime.elastic_client`, the data
loader) and the master (:mod:`tidemill.master.server`) both import it, and it imports
neither, so neither side depends on the other.

Every worker keeps one TCP connection to the master for its whole life. A kill -9 of
the worker closes it at once (the kernel does that), so the master learns of a dead
worker in milliseconds without a heartbeat timeout on the critical path; heartbeats
only catch the rarer hung or unplugged machine.

Worker → master (``op``):

- ``register {replica, pid, status, epoch, rank, step, proof}``: first message of every
  connection. ``status`` is ``new`` (wants to join), ``member`` (already trains in
  ``epoch``; sent when reconnecting to a restarted master) or ``ready`` (left
  ``epoch`` at a step boundary and waits for the next one, holding state at ``step``);
  ``proof`` proves the job's credential, when the job has one.
- ``sync {epoch, step, failed}``: this member stopped training in ``epoch`` and holds
  state at ``step``; ``failed`` when a collective broke (it rolled back to its commit).
- ``formed {epoch}``: the process group of ``epoch`` is up and the state is in sync.
- ``commit {epoch, step, data, extras}``: rank 0 committed; the master persists it.
- ``leave {}``: this member leaves for good (SIGTERM); ``done {step}``: training ended.
- ``lease {id, epoch, stage, pass, source, view}``: the next shard of ``source`` (the
  first request of an epoch carries the committed data ``view``).
- ``insight {stage, sources}``: this worker's read counters; ``data_error {reason,
  message}``: a data source stopped this worker (the master posts it as an event).
- ``metrics {reports, refused}``: training metrics, batched about once a second:
  ``reports`` is a list of ``[step, time, {name: value}]``; ``refused`` counts the
  reports the worker dropped itself, by reason.
- ``heartbeat {}``.

Master → worker:

- ``registered {replica}``; ``refused {message}`` (the connection is closed).
- ``change {epoch}``: the group will change; stop at the next step boundary.
- ``abort {epoch}``: a member of ``epoch`` is gone; drop that process group now.
- ``epoch {epoch, rank, world_size, members, store_host, store_port, prefix,
  source_rank, step, timeout_s, restore}``: the new topology; ``restore`` (false when
  absent) when no member holds state, so it comes from the newest checkpoint.
- ``evicted {message}``: the master removed this replica (it stopped answering).
- ``finished {step}``: training already ended; nothing to join.
- ``leased {id, shard, cursor, index, total, stale}`` or ``leased {id, error, reason,
  source}``: the answer to the ``lease`` with the same ``id``.

Each message has a typed form below (:class:`Register`, :class:`Epoch`, ...): the
sender builds it and :func:`encode` writes it; the receiver reads it back with
:func:`parse_worker` (on the master) or :func:`parse_master` (on a worker), which
name the missing or mistyped field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

Message = dict[str, Any]

MAX_LINE_BYTES = 1 << 20
"""A commit carries data positions and small extras; anything bigger is a bug."""


class ProtocolError(ValueError):
    """A line that is not one JSON object with a string ``op``, or a malformed message."""


def encode(message: Mapping[str, Any] | WorkerMessage | MasterMessage) -> bytes:
    """One message (a typed message, or a JSON object) as a line of compact JSON.

    >>> encode(Heartbeat())
    b'{"op":"heartbeat"}\\n'
    """
    wire = message if isinstance(message, Mapping) else to_message(message)
    return json.dumps(wire, separators=(",", ":")).encode() + b"\n"


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


# --- typed worker → master messages ---------------------------------------------------


@dataclass(frozen=True)
class Register:
    """First message of every connection: who this is and where it stands."""

    replica: str
    pid: int
    status: str
    """``new``, ``member`` (trains in ``epoch``) or ``ready`` (waits, holding ``step``)."""
    epoch: int | None = None
    step: int | None = None
    data: Any = None
    proof: str | None = None
    """The job's credential proven (:mod:`tidemill.peer_proof`); a master started with
    one refuses a register without it."""
    op: ClassVar[str] = "register"


@dataclass(frozen=True)
class Heartbeat:
    op: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class Sync:
    """Stopped training in ``epoch`` holding state at ``step`` (None: no group state yet)."""

    epoch: int
    step: int | None = None
    failed: bool = False
    data: Any = None
    op: ClassVar[str] = "sync"


@dataclass(frozen=True)
class Formed:
    epoch: int
    op: ClassVar[str] = "formed"


@dataclass(frozen=True)
class Commit:
    """Rank 0 committed; the master persists it."""

    epoch: int
    step: int
    data: Any = None
    extras: Any = None
    op: ClassVar[str] = "commit"


@dataclass(frozen=True)
class Leave:
    op: ClassVar[str] = "leave"


@dataclass(frozen=True)
class Done:
    step: int = 0
    op: ClassVar[str] = "done"


@dataclass(frozen=True)
class Lease:
    """Asks for the next shard of ``source``; ``view`` is the committed data view."""

    epoch: int
    stage: int
    pass_index: int
    source: str | None = None
    view: dict[str, Any] | None = None
    id: int = 0
    """Set by the client when it sends the request; the reply carries it back."""
    op: ClassVar[str] = "lease"


@dataclass(frozen=True)
class Insight:
    stage: int
    sources: dict[str, Any]
    op: ClassVar[str] = "insight"


@dataclass(frozen=True)
class Metrics:
    """A batch of ``report()`` calls: ``[step, time, {name: value}]`` each."""

    reports: list[Any]
    refused: dict[str, Any] | None = None
    """reason -> reports the worker refused (bad names or values, a full buffer)."""
    op: ClassVar[str] = "metrics"


@dataclass(frozen=True)
class DataErrorReport:
    """A data source stopped this worker; the master posts it as an event."""

    reason: str
    message: str
    op: ClassVar[str] = "data_error"


@dataclass(frozen=True)
class CheckpointReport:
    """A durable checkpoint was saved, failed, skipped as corrupt or restored (``kind``);
    the master posts it as an event. ``data``: the data positions a saved checkpoint
    holds (the master commits Kafka offsets up to them) or a restored one resumes at."""

    kind: str
    message: str
    step: int | None = None
    data: dict[str, Any] | None = None
    op: ClassVar[str] = "checkpoint"


WorkerMessage = (
    Register
    | Heartbeat
    | Sync
    | Formed
    | Commit
    | Leave
    | Done
    | Lease
    | Insight
    | Metrics
    | DataErrorReport
    | CheckpointReport
)
WORKER_MESSAGES: dict[str, type[WorkerMessage]] = {
    kind.op: kind
    for kind in (
        Register,
        Heartbeat,
        Sync,
        Formed,
        Commit,
        Leave,
        Done,
        Lease,
        Insight,
        Metrics,
        DataErrorReport,
        CheckpointReport,
    )
}


# --- typed master → worker messages ---------------------------------------------------


@dataclass(frozen=True)
class Registered:
    replica: str
    op: ClassVar[str] = "registered"


@dataclass(frozen=True)
class Refused:
    """The master refused this connection (and closes it); ``message`` says why."""

    message: str
    op: ClassVar[str] = "refused"


@dataclass(frozen=True)
class Change:
    """The group of ``epoch`` will change: stop at the next step boundary."""

    epoch: int
    op: ClassVar[str] = "change"


@dataclass(frozen=True)
class Abort:
    """A member of ``epoch`` is gone: drop that process group now."""

    epoch: int
    op: ClassVar[str] = "abort"


@dataclass(frozen=True)
class Epoch:
    """The next group's topology and this process's place in it (``rank``)."""

    epoch: int
    rank: int
    world_size: int
    members: tuple[str, ...]
    store_host: str
    store_port: int
    """The c10d store the group forms on, under the key ``prefix``."""
    prefix: str
    source_rank: int
    """The rank whose state every other rank receives."""
    step: int
    timeout_s: float
    """For every member to arrive, and for each collective of the group."""
    restore: bool = False
    """No member holds state (a fresh job, or every holder was lost): the state comes
    from the newest checkpoint, not from ``source_rank``'s fresh process."""
    op: ClassVar[str] = "epoch"


@dataclass(frozen=True)
class Evicted:
    """The master removed this replica (it missed a deadline); ``message`` says which."""

    message: str
    op: ClassVar[str] = "evicted"


@dataclass(frozen=True)
class Finished:
    """Training already ended at ``step``: there is nothing to join."""

    step: int
    op: ClassVar[str] = "finished"


@dataclass(frozen=True)
class Leased:
    """The answer to the :class:`Lease` with the same ``id``: a grant, or why none came.

    ``grant`` is the data dispatcher's JSON form of a grant (``shard``, ``cursor``,
    ``index``, ``total``, ``stale``: ``tidemill.data``'s ``Grant.to_json``), which this
    module carries without reading; on the wire its keys sit beside ``id``.
    """

    id: int
    grant: dict[str, Any] | None = None
    error: str | None = None
    """Why there is no grant: a source could not be planned, or the job has no data."""
    reason: str | None = None
    """The data error's reason code (``DataSourceNotFound``, ...), when it has one."""
    source: str | None = None
    """The data source the error is about, when it is known."""
    op: ClassVar[str] = "leased"

    def __post_init__(self) -> None:
        if (self.grant is None) == (self.error is None):
            raise ValueError(f"a lease reply carries a grant or an error, got {self!r}")


MasterMessage = Registered | Refused | Change | Abort | Epoch | Evicted | Finished | Leased
MASTER_MESSAGES: dict[str, type[MasterMessage]] = {
    kind.op: kind for kind in (Registered, Refused, Change, Abort, Epoch, Evicted, Finished, Leased)
}
_LEASE_ERROR = ("error", "reason", "source")
_Kind = TypeVar("_Kind", bound=WorkerMessage | MasterMessage)


# --- encoding and parsing -------------------------------------------------------------

_WIRE_NAMES = {"pass_index": "pass"}
"""Fields whose name on the wire is a Python keyword."""


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {value!r}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r:.80}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"expected a list of strings, got {value!r}")
    return tuple(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "int": _int,
    "float": _float,
    "str": _str,
    "bool": _bool,
    "Any": lambda value: value,
    "dict[str, Any]": _dict,
    "list[Any]": _list,
    "tuple[str, ...]": _strings,
}
"""Per annotation (``| None`` removed): the check and conversion of a JSON value."""


def to_message(message: WorkerMessage | MasterMessage) -> Message:
    """A typed message as the JSON object that goes on the wire.

    >>> to_message(Lease(epoch=2, stage=0, pass_index=1, source="s", id=7))
    {'op': 'lease', 'epoch': 2, 'stage': 0, 'pass': 1, 'source': 's', 'view': None, 'id': 7}
    >>> to_message(Leased(id=7, error="no spec.data"))
    {'op': 'leased', 'id': 7, 'error': 'no spec.data'}
    """
    if isinstance(message, Leased):
        # Flat, as the master has always sent it: a grant's keys, or the error's.
        if message.grant is not None:
            return {"op": message.op, "id": message.id, **message.grant}
        error = {key: getattr(message, key) for key in _LEASE_ERROR}
        return {"op": message.op, "id": message.id} | {
            key: value for key, value in error.items() if value is not None
        }
    wire = {_WIRE_NAMES.get(f.name, f.name): getattr(message, f.name) for f in fields(message)}
    return {"op": message.op, **wire}


def parse_worker(message: Message) -> WorkerMessage:
    """A decoded worker message as its typed form; :class:`ProtocolError` names the field.

    >>> parse_worker({"op": "sync", "epoch": 3, "step": None, "failed": True})
    Sync(epoch=3, step=None, failed=True, data=None)
    >>> parse_worker({"op": "commit", "epoch": 3})
    Traceback (most recent call last):
    ...
    tidemill.wire.ProtocolError: malformed 'commit' message: 'step' is missing
    """
    return _parse(message, WORKER_MESSAGES)


def parse_master(message: Message) -> MasterMessage:
    """A decoded master message as its typed form; :class:`ProtocolError` names the field.

    >>> parse_master({"op": "abort", "epoch": 4})
    Abort(epoch=4)
    >>> parse_master({"op": "leased", "id": 2, "shard": None, "stale": True})
    Leased(id=2, grant={'shard': None, 'stale': True}, error=None, reason=None, source=None)
    >>> parse_master({"op": "epoch", "epoch": 4, "rank": "0"})
    Traceback (most recent call last):
    ...
    tidemill.wire.ProtocolError: malformed 'epoch' message: 'rank': expected an integer, got '0'
    """
    if message["op"] != Leased.op:
        return _parse(message, MASTER_MESSAGES)
    if message.get("error") is not None:
        failed = {key: message.get(key) for key in ("op", "id", *_LEASE_ERROR)}
        return _parse(failed, MASTER_MESSAGES)
    grant = {key: value for key, value in message.items() if key not in ("op", "id")}
    if not grant:
        raise ProtocolError("malformed 'leased' message: neither a grant nor 'error'")
    return _parse({"op": Leased.op, "id": message.get("id"), "grant": grant}, MASTER_MESSAGES)


def _parse(message: Message, kinds: Mapping[str, type[_Kind]]) -> _Kind:
    op = message["op"]
    kind = kinds.get(op)
    if kind is None:
        raise ProtocolError(f"unknown op {op!r}")
    values: dict[str, Any] = {}
    for f in fields(kind):
        key = _WIRE_NAMES.get(f.name, f.name)
        value = message.get(key)
        if value is None:
            if f.default is MISSING:
                raise ProtocolError(f"malformed {op!r} message: {key!r} is missing")
            continue
        check = _CHECKS[str(f.type).removesuffix(" | None")]
        try:
            values[f.name] = check(value)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed {op!r} message: {key!r}: {exc}") from exc
    return kind(**values)
