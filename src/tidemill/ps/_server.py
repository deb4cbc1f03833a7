"""One PS replica: its shard of every table, served over TCP.

It listens on TCP and, for workers on the same host, on a Unix socket named after its
TCP address (``tidemill.ps._local``). A thread per connection reads a frame, answers it
and reads the next (``tidemill.ps._connections``); a worker keeps two connections
(pulls, and pushes/control), so a pull waiting for other ranks never blocks that
worker's own push. Each table has its own lock: the compiled kernels release the GIL,
so pulls and pushes of different tables run in parallel.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tidemill.peer_proof import proof_refusal
from tidemill.ps._budget import row_budgets
from tidemill.ps._config import TableConfig
from tidemill.ps._connections import Connections, Frame, Peer, Unproven
from tidemill.ps._cuts import read_snapshot, snapshot_shards, write_snapshot
from tidemill.ps._export import TableExport, concat_exports, select_rows
from tidemill.ps._local import listen_local
from tidemill.ps._progress import Refused, StepGate
from tidemill.ps._psconfig import PSConfig
from tidemill.ps._routing import ShardMap
from tidemill.ps._serving import serving_path, write_serving
from tidemill.ps._snapshot import export_path, load_export, save_export
from tidemill.ps._table import ShardTable
from tidemill.ps._wire import (
    ErrorCode,
    Header,
    Op,
    buffers_of,
    json_frame,
    recv_array,
    recv_text,
)

log = logging.getLogger(__name__)


@dataclass
class _Table:
    config: TableConfig
    table: ShardTable
    gate: StepGate
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_evict_step: int = 0
    by_memory: bool = False
    """Its row budget comes from the replica's memory."""
    memory_evicted: int = 0
    """Rows evicted to stay within that budget."""


class PSServer:
    """Serve replica ``index`` of the tables in ``config`` on ``host:port`` (0: any port).

    >>> from tidemill.ps import OptimizerConfig, PSConfig, TableConfig
    >>> table = TableConfig("user", 4, OptimizerConfig("sgd", lr=0.1), 0.01, 1)
    >>> with PSServer(PSConfig((table,)), index=0) as server:
    ...     server.address[1] > 0
    True
    """

    def __init__(
        self,
        config: PSConfig,
        index: int,
        host: str = "127.0.0.1",
        port: int = 0,
        replicas: int = 1,
        proof: str | None = None,
    ):
        self.config = config
        self.index = index
        self.proof = proof
        """What a connection's HELLO must carry (the job's credential proven); None: any
        peer may connect (a job without a credential)."""
        self._map = ShardMap.for_config(config, replicas)
        """Which ids are this replica's: a snapshot taken over another count is filtered."""
        self._tables = [
            _Table(
                budgeted.config,
                ShardTable(budgeted.config),
                StepGate(budgeted.config.name, config.consistency, config.max_staleness),
                by_memory=budgeted.by_memory,
            )
            for budgeted in row_budgets(config.tables, config.memory_bytes)
        ]
        tcp = socket.create_server((host, port), reuse_port=False)
        self.address: tuple[str, int] = tcp.getsockname()[:2]
        local = listen_local(self.address)
        self._connections = Connections(
            [tcp] if local is None else [tcp, local],
            self._answer,
            replica=index,
            proof_required=proof is not None,
            max_frame_bytes=config.max_frame_bytes,
            on_shutdown=self.stop,
        )
        self._stopped = threading.Event()
        self._epoch_lock = threading.Lock()
        self._epoch = -1
        self._cut = 0
        for entry in self._tables:
            _cut(entry.table, 0)

    def start(self) -> PSServer:
        self._connections.start()
        return self

    @property
    def connections(self) -> int:
        """Client connections open now (a draining server stops when none are left)."""
        return self._connections.open

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stopped (SHUTDOWN or :meth:`stop`); True if it did."""
        return self._stopped.wait(timeout_s)

    def stop(self) -> None:
        """Wake waiting pulls, stop accepting, close every connection, join the threads."""
        for entry in self._tables:
            entry.gate.close()
        self._connections.stop()
        self._stopped.set()

    def __enter__(self) -> PSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _answer(self, sock: socket.socket, header: Header, peer: Peer) -> list[Frame]:
        """Read the payload of ``header`` (always, to stay in step) and answer it."""
        if not peer.proven and header.op != Op.HELLO:
            raise Unproven(
                f"PS replica {self.index} answers a connection only after a HELLO that"
                f" proves the job's credential; got {Op(header.op).name} first"
            )
        reply = header._replace(op=Op.OK, rows=0, dim=0, payload_bytes=0)
        if header.op in (Op.PULL, Op.PUSH, Op.BEGIN):
            self._enter_epoch(header)
        if header.op == Op.PULL:
            ids = recv_array(sock, (header.rows,), np.int64)
            return [self._pull(header, ids)]
        if header.op == Op.PUSH:
            ids = recv_array(sock, (header.rows,), np.int64)
            grads = recv_array(sock, (header.rows, header.dim), np.float32)
            return [(reply._replace(rows=self._push(header, ids, grads)), [])]
        text = recv_text(sock, header) if header.payload_bytes else ""
        handlers: dict[int, Callable[[Header, str], Any]] = {
            Op.HELLO: lambda h, t: self._hello(h, t, peer),
            Op.STATS: lambda _h, _t: self.stats(),
            Op.BEGIN: self._begin,
            Op.ROLLBACK: lambda _h, _t: self._rollback(),
            Op.EXPORT: self._export,
            Op.LOAD: self._load,
            Op.SHUTDOWN: lambda _h, _t: None,
        }
        handler = handlers.get(header.op)
        if handler is None:
            raise Refused(
                ErrorCode.BAD_REQUEST, f"{Op(header.op).name} is an answer, not a request"
            )
        return [json_frame(reply, handler(header, text))]

    def _table(self, header: Header) -> _Table:
        if header.table >= len(self._tables):
            raise Refused(
                ErrorCode.UNKNOWN_TABLE,
                f"table id {header.table} is not held by PS replica {self.index};"
                f" tables: {self.config.table_names}",
            )
        return self._tables[header.table]

    def _pull(self, header: Header, ids: npt.NDArray[np.int64]) -> Frame:
        entry = self._table(header)
        _refuse_bad_ids(entry.config.name, ids)
        entry.gate.wait_for_pull(header, self.config.pull_timeout_s)
        with entry.lock:
            evicted = entry.table.evicted
            rows = entry.table.pull(ids, header.step)
            if entry.by_memory and entry.table.evicted > evicted:
                entry.memory_evicted += entry.table.evicted - evicted
        answer = header._replace(op=Op.ROWS, rows=len(ids), dim=entry.config.dim)
        return answer._replace(payload_bytes=rows.nbytes), buffers_of(rows)

    def _push(
        self, header: Header, ids: npt.NDArray[np.int64], grads: npt.NDArray[np.float32]
    ) -> int:
        entry = self._table(header)
        name = entry.config.name
        if header.dim != entry.config.dim and header.rows:
            raise Refused(
                ErrorCode.BAD_REQUEST,
                f"table {name!r}: gradients have dim {header.dim};"
                f" the table has dim {entry.config.dim}",
            )
        _refuse_bad_ids(name, ids)
        if not np.isfinite(grads).all():
            raise Refused(ErrorCode.BAD_REQUEST, f"table {name!r}: gradients hold NaN or inf")
        entry.gate.push(
            header, ids, grads.reshape(len(ids), entry.config.dim), self._applier(entry)
        )
        return len(ids)

    def _applier(
        self, entry: _Table
    ) -> Callable[[int, npt.NDArray[np.int64], npt.NDArray[np.float32]], None]:
        def apply(step: int, ids: npt.NDArray[np.int64], grads: npt.NDArray[np.float32]) -> None:
            if not len(ids):
                return
            ttl = entry.config.ttl_steps
            with entry.lock:
                entry.table.push_summed(ids, grads, step)
                if ttl is not None and step - entry.last_evict_step >= max(1, ttl // 4):
                    entry.table.evict(step)
                    entry.last_evict_step = step

        return apply

    def _hello(self, _header: Header, text: str, peer: Peer) -> dict[str, Any]:
        try:
            request = json.loads(text)
            wanted = request["tables"]
        except (ValueError, KeyError, TypeError) as exc:
            if not peer.proven:
                raise Unproven(f"PS replica {self.index}: HELLO is not JSON: {exc}") from exc
            raise Refused(
                ErrorCode.BAD_REQUEST, f"HELLO needs JSON {{'tables': [...]}}: {exc}"
            ) from exc
        if not peer.proven:
            refusal = proof_refusal(self.proof, request.get("proof"), f"PS replica {self.index}")
            if refusal is not None:
                raise Unproven(refusal)
            self._connections.proven(peer)
        names = self.config.table_names
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise Refused(
                ErrorCode.UNKNOWN_TABLE,
                f"PS replica {self.index} does not hold tables {unknown}; tables: {names}",
            )
        return {
            name: {"id": names.index(name), "dim": self.config.table(name).dim} for name in wanted
        }

    def stats(self) -> dict[str, Any]:
        """Per-table counters: rows, memory, admissions, evictions, traffic, staleness."""
        tables: dict[str, Any] = {}
        for entry in self._tables:
            table, gate = entry.table, entry.gate
            with entry.lock:
                tables[entry.config.name] = {
                    "rows": int(table.rows),
                    "memory_bytes": int(table.memory_bytes),
                    "admitted": int(table.admitted),
                    "evicted": int(table.evicted),
                    "pulled_rows": int(table.pulled_rows),
                    "pushed_rows": int(table.pushed_rows),
                    "epoch": gate.epoch,
                    "applied_step": gate.applied_through,
                    "pulls": gate.staleness.pulls,
                    "staleness_max_steps": gate.staleness.max_steps,
                    "staleness_mean_steps": gate.staleness.total_steps
                    / max(1, gate.staleness.pulls),
                    "row_budget": entry.config.max_rows,
                    "budget_from": "memory" if entry.by_memory else "eviction",
                    "memory_evicted": entry.memory_evicted,
                }
        with self._epoch_lock:
            cut = self._cut
        return {"index": self.index, "cut": cut, "tables": tables}

    @contextmanager
    def _all_locked(self) -> Iterator[None]:
        with ExitStack() as stack:
            for entry in self._tables:
                stack.enter_context(entry.lock)
            yield

    def _each_table(self, action: Callable[[_Table], object]) -> None:
        with self._all_locked():
            for entry in self._tables:
                action(entry)

    def _enter_epoch(self, header: Header) -> None:
        """The first frame of a new epoch: the group resumes at ``header.step``, so the
        tables go back to the cut taken there (nothing to undo after a clean change; the
        steps since the last commit after a failure)."""
        with self._epoch_lock:
            if header.epoch <= self._epoch:
                return
            if header.step != self._cut:
                raise Refused(
                    ErrorCode.CUT_MISSING,
                    f"PS replica {self.index} holds its tables as of step {self._cut}; "
                    f"epoch {header.epoch} resumes at step {header.step}: the job must "
                    "restore a checkpoint taken with the tables",
                )
            self._rollback()
            self._epoch = header.epoch

    def _begin(self, header: Header, text: str) -> None:
        """Cut the tables at step ``header.step`` once every rank's earlier pushes are in;
        with ``{"snapshot": {"folder": F, "since": S}}`` also copy them as of the cut
        (full, or changed after cut S) and write the copy to F on a thread."""
        request = json.loads(text) if text else {}
        snapshot = request.get("snapshot") if isinstance(request, dict) else None
        for entry in self._tables:
            entry.gate.wait_applied(header, header.step - 1, self.config.pull_timeout_s)
        exports: dict[str, TableExport] = {}
        with self._all_locked():
            for entry in self._tables:
                _cut(entry.table, header.step)
                if snapshot is not None:
                    exports[entry.config.name] = entry.table.export(snapshot.get("since"))
        with self._epoch_lock:
            self._cut = header.step
        if snapshot is not None:
            folder, since = str(snapshot["folder"]), snapshot.get("since")
            threading.Thread(
                target=self._write_snapshot,
                args=(folder, header.step, since, exports),
                name="ps-snapshot",
                daemon=True,
            ).start()

    def _write_snapshot(
        self, folder: str, step: int, since: int | None, exports: dict[str, TableExport]
    ) -> None:
        """A failed write leaves no sidecar: the checkpoint waiting for it fails, and
        training goes on."""
        try:
            write_snapshot(folder, self.index, step, since, exports)
        except Exception:
            log.exception(
                "PS replica %d: snapshot of step %d to %s failed", self.index, step, folder
            )

    def _rollback(self) -> None:
        self._each_table(lambda entry: entry.table.rollback())
        for entry in self._tables:
            entry.gate.reset()

    def _export(self, _header: Header, text: str) -> dict[str, str]:
        """Write each table's rows (changed since ``since_version``, or all) under
        ``folder``: ``format: "checkpoint"`` (every field, for LOAD) or ``"serving"``
        (Parquet of ids, versions, embeddings and tombstones)."""
        request = _json_request(text, "EXPORT", "folder")
        since = request.get("since_version")
        serving = request.get("format", "checkpoint") == "serving"
        written: dict[str, str] = {}
        for entry in self._tables:
            with entry.lock:
                export = entry.table.export(since_version=since)
            name = entry.config.name
            if serving:
                path = serving_path(request["folder"], name, self.index)
            else:
                path = export_path(request["folder"], name, self.index)
            try:
                write_serving(path, export) if serving else save_export(path, export)
            except OSError as exc:
                raise Refused(ErrorCode.BAD_REQUEST, f"EXPORT cannot write {path}: {exc}") from exc
            written[name] = str(path)
        return written

    def _load(self, _header: Header, text: str) -> dict[str, str]:
        """Load the tables written by EXPORT under ``folder``, or the snapshots of a
        checkpoint (``snapshots``: the full one, then its deltas, in order); with
        ``step``, that is the new cut (a job restoring a checkpoint resumes there)."""
        request = json.loads(text) if text else None
        if isinstance(request, dict) and isinstance(request.get("snapshots"), list):
            loaded = self._load_snapshots([str(folder) for folder in request["snapshots"]])
        else:
            request = _json_request(text, "LOAD", "folder")
            loaded = self._load_exports(request["folder"], bool(request.get("replace", True)))
        step = request.get("step")
        if isinstance(step, int):
            self._each_table(lambda entry: _cut(entry.table, step))
            with self._epoch_lock:
                self._cut = step
        return loaded

    def _read_snapshot(self, folder: str) -> dict[str, TableExport]:
        """This replica's tables at a cut; when the snapshot was taken over another
        number of replicas, every replica's part, keeping the ids this one owns."""
        written = snapshot_shards(folder)
        if written == list(range(self._map.replicas)):
            return read_snapshot(folder, self.index)
        if not written:
            raise ValueError(f"{folder}: no complete snapshot of any PS replica")
        merged: dict[str, list[TableExport]] = {}
        for shard in written:
            for name, export in read_snapshot(folder, shard).items():
                mine = self._map.owner_mask(export.ids) == self.index
                gone = self._map.owner_mask(export.tombstones) == self.index
                merged.setdefault(name, []).append(select_rows(export, mine, gone))
        return {name: concat_exports(parts) for name, parts in merged.items()}

    def _load_exports(self, folder: str, replace: bool) -> dict[str, str]:
        loaded: dict[str, str] = {}
        for entry in self._tables:
            path = export_path(folder, entry.config.name, self.index)
            if not path.exists():
                continue
            export = load_export(path)
            with entry.lock:
                entry.table.load(export, replace=replace)
            entry.gate.reset()
            loaded[entry.config.name] = str(path)
        return loaded

    def _load_snapshots(self, folders: list[str]) -> dict[str, str]:
        try:
            chain = [self._read_snapshot(folder) for folder in folders]
        except ValueError as exc:
            raise Refused(ErrorCode.BAD_REQUEST, f"LOAD: {exc}") from exc
        loaded: dict[str, str] = {}
        for entry in self._tables:
            name = entry.config.name
            with entry.lock:
                for position, exports in enumerate(chain):
                    if name in exports:
                        entry.table.load(exports[name], replace=position == 0)
            entry.gate.reset()
            loaded[name] = ", ".join(folders)
        return loaded


def _json_request(text: str, op: str, required: str) -> dict[str, Any]:
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise Refused(ErrorCode.BAD_REQUEST, f"{op} needs a JSON object: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get(required), str):
        raise Refused(ErrorCode.BAD_REQUEST, f"{op} needs a string field {required!r}")
    return request


def _cut(table: ShardTable, step: int) -> None:
    """Open the table's undo log at the cut of ``step``; rows changed after it carry
    version ``step + 1`` or more, so "changed since cut N" is "version above N"."""
    table.begin(max(step + 1, table.version))


def _refuse_bad_ids(table: str, ids: npt.NDArray[np.int64]) -> None:
    if len(ids) and (smallest := int(ids.min())) < 0:
        raise Refused(
            ErrorCode.BAD_IDS,
            f"table {table!r}: {int(np.count_nonzero(ids < 0))} negative ids (smallest"
            f" {smallest}); ids must be in 0 .. 2**63 - 1",
        )
