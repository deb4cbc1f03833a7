"""The master process: asyncio TCP server, the c10d store, timers, persistence.

All decisions are :class:`~tidemill.master.membership.Membership`'s; this module
only moves bytes and carries out effects. Every input is handled under one lock,
mutation and effects together, so effects reach the workers in the order decided
(an ``epoch`` is always saved before it is announced, and announced before any
``abort`` of it).

The master hosts a ``torch.distributed.TCPStore`` on a second port it picks; each
epoch's process group uses the key prefix ``epoch/N`` in it, so a late message from
an old epoch can never mix with a new one. A restarted master hosts a new store (its
port is in the next ``epoch`` message); groups formed on the old one keep training,
as gloo only needs the store while connecting.

A job with PS replicas (``TIDEMILL_PS_ADDRS``) also has its master poll their STATS
(:mod:`tidemill.master.ps_poller`), saved as ``ps_insight`` until training finished.
The workers' training metrics (:mod:`tidemill.master.training_metrics`) go on to the
control plane every few seconds, and into TensorBoard event files when the job asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tidemill.api.status import PSInsightView, saved_insight
from tidemill.log_sampling import worth_logging
from tidemill.master.config import MasterConfig
from tidemill.master.data_service import DataService
from tidemill.master.effects import Effect, Evict, Notify, Save, Send
from tidemill.master.group import Phase
from tidemill.master.membership import Membership
from tidemill.master.persistence import StateBackend, log
from tidemill.master.tensorboard import EventFiles
from tidemill.master.training_metrics import MetricsBook
from tidemill.peer_proof import proof_refusal
from tidemill.peer_user import other_user, peer_uid
from tidemill.wire import (
    MAX_LINE_BYTES,
    CheckpointReport,
    Commit,
    DataErrorReport,
    Done,
    Evicted,
    Formed,
    Heartbeat,
    Insight,
    Lease,
    Leased,
    Leave,
    MasterMessage,
    Message,
    Metrics,
    ProtocolError,
    Refused,
    Register,
    Sync,
    decode,
    encode,
    parse_worker,
)

if TYPE_CHECKING:
    from tidemill.master.ps_poller import PSStatsPoller

REPLICA_NAME = re.compile(r"^[a-z][a-z0-9]*-\d+$")
STATUSES = ("new", "member", "ready")
LOGGED_REFUSALS = 10
"""Connections refused for want of the job's proof that are logged one by one; after
these only every 1,000th, so a stranger knocking cannot fill the master's log."""
UNREGISTERED_HEADROOM = 64


def unregistered_limit(max_workers: int) -> int:
    """How many connections may wait to register at once (each for at most
    ``MasterConfig.silent_timeout_s``): room for every worker reconnecting at the same
    moment twice over (after a master restart, on Kubernetes) and
    :data:`UNREGISTERED_HEADROOM` more; beyond it, new ones are closed at once. A flood
    of silent connections took every file the master may open: it could no longer take
    its workers' connections, and asyncio logged a traceback per accept it missed.
    Connections from the master's own user over loopback (its workers on this machine)
    are not counted, so another user's flood cannot keep them out."""
    return UNREGISTERED_HEADROOM + 2 * max_workers


CHECKPOINT_EVENTS = {
    "saved": ("Normal", "CheckpointSaved"),
    "restored": ("Normal", "CheckpointRestored"),
    "failed": ("Warning", "CheckpointFailed"),
    "skipped": ("Warning", "CheckpointSkipped"),
    "mismatch": ("Warning", "CheckpointMismatch"),
}
"""A worker's checkpoint report kind -> the event (type, reason) it becomes."""


@dataclass(eq=False)
class Connection:
    writer: asyncio.StreamWriter
    peer: str
    opened_at: float
    last_seen: float
    name: str | None = None
    pid: int | None = None
    closed_by_master: bool = False
    ended: bool = False
    """Sent ``leave`` or ``done``: its close is not a loss."""

    def send(self, message: MasterMessage) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    def close(self) -> None:
        self.closed_by_master = True
        self.writer.close()


@dataclass
class MasterServer:
    config: MasterConfig
    backend: StateBackend
    membership: Membership | None = None
    connections: set[Connection] = field(default_factory=set)
    by_name: dict[str, Connection] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._stop = asyncio.Event()
        self._store: Any = None
        self._server: asyncio.Server | None = None
        self.data: DataService | None = None
        self.ps_poller: PSStatsPoller | None = None
        self.ps_insight: PSInsightView | None = None
        folder = self.config.tensorboard_dir
        self.metrics = MetricsBook(EventFiles(folder) if folder else None)
        self.refused_peers = 0
        """Connections refused: no proof of the job's credential, another user's, silent."""
        self.unregistered = 0
        """Connections yet to send their ``register`` (see :func:`unregistered_limit`)."""
        self.unresponsive: dict[str, int] = {}
        """Replica -> pid of a process the master gave up on (no heartbeat, missed a
        deadline) while it may still be alive: saved, so the controller can stop it."""

    async def start(self) -> None:
        """Host the store, load the saved state, then accept workers."""
        # torch.distributed.TCPStore, imported from where its type stubs live.
        from torch._C._distributed_c10d import TCPStore

        self._store = TCPStore(
            self.config.host, 0, is_master=True, wait_for_workers=False, use_libuv=True
        )
        store_port = int(self._store.port)
        saved = await self.backend.load()
        now = time.time()
        rules = self.config.rules
        if saved is None:
            self.membership = Membership(rules, self.config.host, store_port, now)
        else:
            self.membership = Membership.restore(rules, self.config.host, store_port, now, saved)
        if self.config.data is not None:
            self.data = DataService(
                self.config.data,
                (saved or {}).get("data"),
                self._event,
                offsets_follow_checkpoints=self.config.checkpoint is not None,
            )
        self.unresponsive = dict((saved or {}).get("unresponsive") or {})
        if self.config.ps_addresses:
            # Imported only here: the PS wire module brings numpy and numba along.
            from tidemill.master.ps_poller import PSStatsPoller

            self.ps_poller = PSStatsPoller(self.config.ps_addresses, proof=self.config.peer_proof)
            self.ps_insight = saved_insight(saved, "ps_insight", PSInsightView)
        self._server = await asyncio.start_server(
            self._serve, self.config.bind_host, self.config.port, limit=MAX_LINE_BYTES
        )
        log(
            f"job {self.config.job}: listening on {self.config.bind_host}:{self.config.port} "
            f"as {self.config.host}, "
            f"c10d store on port {store_port}, workers {rules.min_workers}.."
            f"{rules.max_workers}, "
            + (
                f"resuming epoch {self.membership.epoch} ({self.membership.phase.value})"
                if saved
                else "no saved state"
            )
        )

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or :meth:`stop`; then save once more."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._stop.set)
        saver = asyncio.create_task(self._saver())
        ticker = asyncio.create_task(self._ticker())
        ps_stats = asyncio.create_task(self._poll_ps())
        metrics = asyncio.create_task(self._forward_metrics())
        await self._stop.wait()
        metrics.cancel()
        ps_stats.cancel()
        ticker.cancel()
        saver.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close()
        # Once training finished, the state was saved then; the control plane may be
        # shutting down too (tidemill run), so only unsaved changes are worth a try.
        membership = self.membership
        if membership is not None and (
            self._dirty.is_set() or membership.phase is not Phase.FINISHED
        ):
            await self.backend.save(self._state())
        await self._send_metrics()
        if self.metrics.tensorboard is not None:
            self.metrics.tensorboard.close()
        await self.backend.close()

    def stop(self) -> None:
        self._stop.set()

    # --- connections --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        now = time.time()
        connection = Connection(writer, f"{peer[0]}:{peer[1]}" if peer else "?", now, now)
        sock = writer.get_extra_info("socket")
        counted = sock is None or peer_uid(sock) != os.geteuid()
        limit = unregistered_limit(self.config.rules.max_workers)
        if counted and self.unregistered >= limit:
            self._log_refusal(connection, f"at once: {limit} are yet to register")
            writer.close()
            return
        self.unregistered += counted
        waiting, silent_s = True, self.config.silent_timeout_s
        self.connections.add(connection)
        why = "connection closed"
        try:
            while True:
                if waiting:
                    line = await asyncio.wait_for(reader.readline(), silent_s)
                    waiting = connection.name is None
                    if not waiting:
                        self.unregistered -= counted
                else:
                    line = await reader.readline()
                if not line:
                    break
                connection.last_seen = time.time()
                message = decode(line)
                try:
                    await self._handle(connection, message)
                except (KeyError, TypeError, ValueError) as exc:
                    if isinstance(exc, ProtocolError):
                        raise
                    raise ProtocolError(f"malformed {message['op']!r} message: {exc!r}") from exc
        except ProtocolError as exc:
            why = f"protocol error: {exc}"
            await self._refuse(connection, why)
        except (ConnectionError, asyncio.LimitOverrunError) as exc:
            why = f"connection error: {exc}"
        except TimeoutError:
            why = f"sent no register within {silent_s:g}s"
            self._log_refusal(connection, f"after {silent_s:g}s: it {why}")
        finally:
            if waiting:
                self.unregistered -= counted
            self.connections.discard(connection)
            writer.close()
            await self._closed(connection, why)

    def _log_refusal(self, connection: Connection, why: str) -> None:
        """Log the first :data:`LOGGED_REFUSALS` refused connections, then now and then
        (:func:`~tidemill.log_sampling.worth_logging`)."""
        self.refused_peers += 1
        if worth_logging(self.refused_peers, first=LOGGED_REFUSALS):
            log(f"refused {connection.peer} {why} ({self.refused_peers} refused so far)")

    async def _closed(self, connection: Connection, why: str) -> None:
        name = connection.name
        if name is None or self.by_name.get(name) is not connection:
            return
        del self.by_name[name]
        if connection.closed_by_master or connection.ended:
            return
        await self._act(lambda m, now: m.lost(name, why, now))

    async def _handle(self, connection: Connection, message: Message) -> None:
        request = parse_worker(message)
        if isinstance(request, Register):
            await self._register(connection, request)
            return
        name = connection.name
        if name is None:
            raise ProtocolError(f"the first message must be 'register', got {request.op!r}")
        match request:
            case Heartbeat():
                return
            case Sync(epoch=epoch, step=step, failed=failed, data=data):
                # step None: a member that holds no group state (a newcomer whose first
                # epoch broke before its state arrived).
                await self._act(lambda m, now: m.sync(name, epoch, step, failed, now, data))
            case Formed(epoch=epoch):
                await self._act(lambda m, now: m.formed(name, epoch))
            case Commit(epoch=epoch, step=committed, data=data, extras=extras):
                await self._act(lambda m, now: m.commit(name, epoch, committed, data, extras))
                if self.data is not None:
                    self.data.committed(data)
            case Lease():
                connection.send(await self._lease(name, connection.pid or 0, request))
            case DataErrorReport(reason=reason, message=text):
                await self._event("Warning", reason, f"{name} stopped: {text}", name)
            case CheckpointReport():
                await self._checkpoint(name, request)
            case Metrics():
                for reason, text, replica in self.metrics.add(name, request, time.time()):
                    await self._event("Warning", reason, text, replica)
            case Insight():
                if self.data is not None:
                    self.data.insight(name, request)
                    self._dirty.set()
            case Leave():
                connection.ended = True
                await self._act(lambda m, now: m.leave(name, now))
            case Done(step=done_step):
                connection.ended = True
                await self._act(lambda m, now: m.done(name, done_step, now))

    async def _checkpoint(self, name: str, report: CheckpointReport) -> None:
        """An event per save, failure, skip and restore; a durable save moves Kafka groups."""
        kind = CHECKPOINT_EVENTS.get(report.kind)
        if kind is None:
            raise ProtocolError(
                f"checkpoint report of kind {report.kind!r}; kinds are "
                + ", ".join(sorted(CHECKPOINT_EVENTS))
            )
        await self._event(*kind, report.message, name)
        if report.kind == "saved" and self.data is not None:
            self.data.durable(report.data)
        elif report.kind == "restored" and report.step is not None:
            step, data = report.step, report.data
            await self._act(lambda m, now: m.restored(name, step, data))

    async def _lease(self, name: str, pid: int, request: Lease) -> Leased:
        if self.data is None:
            text = "this job has no spec.data; add a data section to the job file"
            return Leased(request.id, error=text)
        return await self.data.lease(name, pid, request, self._decide)

    async def _decide(self, choose: Callable[[], Leased]) -> Leased:
        """A data choice under the state lock, saved before anyone hears of it."""
        async with self._lock:
            answer = choose()
            self._dirty.clear()
            await self.backend.save(self._state())
            return answer

    def _state(self) -> dict[str, Any]:
        """What is saved: membership, and the data dispatch and insight when there is data."""
        membership = self.membership
        state = {} if membership is None else membership.snapshot()
        if self.data is not None:
            state["data"] = self.data.snapshot()
            state["data_insight"] = self.data.insight_view()
        if self.ps_insight is not None:
            state["ps_insight"] = self.ps_insight.model_dump(mode="json")
        state["unresponsive"] = dict(self.unresponsive)
        return state

    def _other_user_refusal(self, connection: Connection) -> str | None:
        """Without the job's credential to prove, a replica must be this machine's user
        of the job when it connects over loopback (see :mod:`tidemill.peer_user`)."""
        if self.config.peer_proof is not None:
            return None
        sock = connection.writer.get_extra_info("socket")
        uid = other_user(sock) if sock is not None else None
        if uid is None:
            return None
        return (
            f"the job master of {self.config.job} takes connections only from its own user "
            f"(uid {os.geteuid()}) while the job has no credential (auth off): this one "
            f"comes from uid {uid}"
        )

    async def _register(self, connection: Connection, request: Register) -> None:
        name, pid, status = request.replica, request.pid, request.status
        refusal = proof_refusal(
            self.config.peer_proof, request.proof, f"the job master of {self.config.job}"
        ) or self._other_user_refusal(connection)
        if refusal is not None:
            self._log_refusal(connection, f"(as {name[:64]!r}): {refusal}")
            await self._refuse(connection, refusal)
            return
        if not REPLICA_NAME.match(name):
            raise ProtocolError(f"register needs 'replica' like worker-3, got {name!r}")
        if status not in STATUSES:
            raise ProtocolError(f"register needs 'status' in {STATUSES}, got {status!r}")
        if connection.name is not None:
            await self._event(
                "Warning",
                "DuplicateRegistration",
                f"{connection.name} (pid {connection.pid}) registered again on the same "
                f"connection (as {name}); kept the first registration",
                connection.name,
            )
            return
        holder = self.by_name.get(name)
        if holder is not None:
            text = (
                f"{name} registered twice: pid {pid} from {connection.peer} while pid "
                f"{holder.pid} is still connected as {name}; refused the second. Two "
                "processes share one replica identity (TIDEMILL_ROLE/TIDEMILL_INDEX)"
            )
            await self._event("Warning", "DuplicateRegistration", text, name)
            await self._refuse(connection, text)
            return
        connection.name, connection.pid = name, pid
        if self.unresponsive.pop(name, None) is not None:  # back, or a new process
            self._dirty.set()
        self.by_name[name] = connection
        log(f"{name} (pid {pid}) registered from {connection.peer} as {status}")
        epoch, step, data = request.epoch, request.step, request.data
        await self._act(lambda m, now: m.register(name, pid, status, epoch, step, now, data))

    async def _refuse(self, connection: Connection, text: str) -> None:
        connection.send(Refused(text))
        with contextlib.suppress(ConnectionError):
            await connection.writer.drain()
        connection.close()

    # --- effects ------------------------------------------------------------------

    async def _act(self, decide: Any) -> None:
        """Decide and carry out under one lock, so effects keep their order."""
        async with self._lock:
            if self.membership is None:
                return
            effects: list[Effect] = decide(self.membership, time.time())
            await self._apply(effects)

    async def _apply(self, effects: list[Effect]) -> None:
        if self.membership is None:
            return
        for effect in effects:
            if isinstance(effect, Send):
                connection = self.by_name.get(effect.replica)
                if connection is not None:
                    connection.send(effect.message)
            elif isinstance(effect, Notify):
                await self._event(effect.type, effect.reason, effect.message, effect.replica)
            elif isinstance(effect, Evict):
                connection = self.by_name.pop(effect.replica, None)
                if connection is not None:
                    connection.send(Evicted(effect.message))
                    connection.close()
                    self._unresponsive(connection)
            elif isinstance(effect, Save):
                if effect.urgent:
                    self._dirty.clear()
                    await self.backend.save(self._state())
                else:
                    self._dirty.set()

    async def _event(self, type: str, reason: str, message: str, replica: str | None) -> None:
        log(f"{type} {reason}: {message}")
        await self.backend.event(type, reason, message, replica)

    async def _saver(self) -> None:
        """Commits arrive every few steps: save the latest, one write at a time."""
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if self.membership is not None:
                await self.backend.save(self._state())

    async def _forward_metrics(self) -> None:
        """The workers' metric reports to the control plane every few seconds."""
        while True:
            await asyncio.sleep(self.config.metrics_flush_s)
            await self._send_metrics()

    async def _send_metrics(self) -> None:
        points = self.metrics.take()
        if points:
            self.metrics.give_back(await self.backend.metrics(points))

    async def _poll_ps(self) -> None:
        """The PS replicas' STATS every few seconds, until training finished (then the
        replicas go away, and the last insight stays saved as it was)."""
        poller = self.ps_poller
        while poller is not None:
            membership = self.membership
            if membership is not None and membership.phase is Phase.FINISHED:
                return
            self.ps_insight = await poller.poll_once()
            for shard, message in poller.book.take_warnings():
                await self._event("Warning", "PSMemoryEviction", message, f"ps-{shard}")
            self._dirty.set()
            await asyncio.sleep(self.config.ps_stats_interval_s)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            now = time.time()
            for connection in list(self.connections):
                await self._check_connection(connection, now)
            await self._act(lambda m, now: m.tick(now))

    async def _check_connection(self, connection: Connection, now: float) -> None:
        silent_s = now - connection.last_seen
        if connection.name is None and now - connection.opened_at > (
            self.config.rules.register_timeout_s
        ):
            text = (
                f"a connection from {connection.peer} sent no registration within "
                f"{self.config.rules.register_timeout_s:g} s; closed it (a replica's first "
                "message must be 'register')"
            )
            await self._event("Warning", "RegistrationTimeout", text, None)
            self.connections.discard(connection)
            connection.close()
        elif connection.name is not None and silent_s > self.config.heartbeat_timeout_s:
            name = connection.name
            why = f"no heartbeat for {silent_s:.0f} s"
            self.connections.discard(connection)
            connection.close()
            if self.by_name.get(name) is connection:
                del self.by_name[name]
                self._unresponsive(connection)
                await self._act(lambda m, now: m.lost(name, why, now))

    def _unresponsive(self, connection: Connection) -> None:
        if connection.name is not None and connection.pid is not None:
            self.unresponsive[connection.name] = connection.pid
            self._dirty.set()
