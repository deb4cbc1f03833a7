"""A worker's connections to every PS replica: routed, deduplicated, pipelined pulls and pushes.

Each shard gets two persistent connections (its Unix socket when it runs on this host,
see ``tidemill.ps._local``, else TCP): one for pulls (one pull at a time, from
the calling thread or the background pull thread, so the next batch's pull can wait on
the server while this step's push goes out) and one for pushes and control ops. A call
sends its frames to every shard first and only then reads the answers, so the shards
work in parallel (``tidemill.ps._shards``); several tables in one call are one frame per
(shard, table), all in one ``sendmsg``. Dedupe and grouping by shard are one compiled
pass (``ShardMap``). In sync mode the next step's pull rides behind this step's pushes
on the push connections, so a step is one round trip, not two
(:meth:`PSClient.pull_async`).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from tidemill.ps._errors import (
    PSConfigError,
    PSError,
    PSUnavailable,
)
from tidemill.ps._psconfig import Address, PSConfig
from tidemill.ps._pulls import Frame, NextPull, PulledRows, PullHandle, PullPlan
from tidemill.ps._routing import ShardMap, checked_ids
from tidemill.ps._shards import Shard, Shards
from tidemill.ps._wire import (
    Header,
    Op,
    buffers_of,
    json_frame,
    recv_text,
)

Ids = npt.NDArray[np.int64]
Rows = npt.NDArray[np.float32]


class PSClient:
    """Rank ``rank`` of ``world`` workers of membership ``epoch``, talking to every PS shard.

    The client keeps the training step: pulls and pushes are tagged with
    :attr:`step`, and :meth:`advance` ends a step (call it once per training step,
    after the backward pass). In sync mode a pull of step s sees every rank's pushes up
    to step s-1. A replica on this host is reached through its Unix socket unless
    ``same_host_socket=False`` (then always TCP); :attr:`transports` says which.
    ``proof`` is what replicas started with one ask of every connection (the job's
    credential proven, :func:`tidemill.peer_proof.job_proof`).

    >>> from tidemill.ps import OptimizerConfig, PSConfig, PSServer, TableConfig
    >>> config = PSConfig((TableConfig("user", 4, OptimizerConfig("sgd", lr=1.0), 0.0, 1),))
    >>> with PSServer(config, index=0) as server, PSClient(config, [server.address]) as client:
    ...     before = client.pull("user", [7, 7, 9])  # rows start at 0.0 (init_scale 0)
    ...     client.push("user", [7], np.ones((1, 4), np.float32))
    ...     client.advance()
    ...     client.pull("user", [7, 7, 9])[:, 0].tolist() == [-1.0, -1.0, 0.0]
    1
    True
    """

    def __init__(
        self,
        config: PSConfig,
        addresses: Sequence[Address],
        rank: int = 0,
        world: int = 1,
        epoch: int = 0,
        *,
        step: int = 0,
        tables: Sequence[str] | None = None,
        connect_timeout_s: float = 10.0,
        same_host_socket: bool = True,
        proof: str | None = None,
    ) -> None:
        if not addresses:
            raise PSConfigError("addresses: empty; give one host:port per PS replica")
        self.config = config
        self._proof = proof
        self._dims = {name: config.table(name).dim for name in (tables or config.table_names)}
        self._map = ShardMap.for_config(config, len(addresses))
        self._request_ids = itertools.count(1)
        self._push_lock = threading.Lock()
        self._pull_lock = threading.Lock()
        self._held: list[NextPull] = []
        self._riding: list[NextPull] = []
        self._pushed: set[str] = set()
        self.step = step
        self.epoch, self.rank, self.world = epoch, rank, world
        self.reconfigure(epoch, rank, world, step)
        self._shards = Shards()
        try:
            for index, address in enumerate(addresses):
                self._shards.all.append(Shard(index, address, connect_timeout_s, same_host_socket))
            for shard in self._shards:
                for sock in (shard.pull_sock, shard.push_sock):
                    sock.settimeout(config.pull_timeout_s + 30.0)
            self._hello()
        except BaseException:
            self.close()
            raise
        self._puller = ThreadPoolExecutor(1, thread_name_prefix="ps-pull")

    def reconfigure(self, epoch: int, rank: int, world: int, step: int) -> None:
        """Join a new membership epoch (after an elastic resize), continuing at ``step``."""
        if not 0 <= rank < world:
            raise PSConfigError(f"rank: {rank} is not in 0 .. world {world} - 1")
        self.epoch, self.rank, self.world, self.step = epoch, rank, world, step
        self._pushed.clear()
        with self._push_lock:
            held, self._held = self._held, []
        for pull in held:  # their step's pushes will not come from here: send them now
            self._puller.submit(self._send_held, pull)

    @property
    def transports(self) -> list[str]:
        """Per shard, ``"unix"`` (same host: its Unix socket) or ``"tcp"``."""
        return [shard.transport for shard in self._shards]

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self._dims)

    def dim(self, table: str) -> int:
        if table not in self._dims:
            raise PSConfigError(
                f"table {table!r} is not used by this client; tables: {list(self._dims)}"
            )
        return self._dims[table]

    def pull(self, table: str, ids: npt.ArrayLike, step: int | None = None) -> Rows:
        """The rows of ``ids`` (any shape) as ``float32[*ids.shape, dim]``."""
        return self.pull_many({table: ids}, step)[table].gather()

    def pull_many(
        self, requests: Mapping[str, npt.ArrayLike], step: int | None = None
    ) -> dict[str, PulledRows]:
        """Several tables in one round trip per shard; ids are deduplicated per table.

        Runs on the calling thread (no hand-off); it waits for a pull still in flight
        from :meth:`pull_async`, which uses the same connections."""
        at, checked = self._checked_pull(requests, step)
        return self._pull_now(checked, at)

    def pull_async(
        self, requests: Mapping[str, npt.ArrayLike], step: int | None = None
    ) -> PullHandle:
        """Start a pull of e.g. the next batch's rows while this step goes on.

        In sync mode a pull of step :attr:`step` + 1 cannot be answered before this rank's
        pushes of this step, so it is held and sent right behind them on the same
        connections (the shards answer it straight after applying them: one round trip
        for the push and the next pull); :meth:`advance` sends it if no push did, and
        :meth:`PullHandle.result` sends it at once if still held (and reads its answer;
        ``timeout_s`` then bounds nothing). Other pulls start on a background thread."""
        at, checked = self._checked_pull(requests, step)
        if self.config.consistency == "sync" and at == self.step + 1:
            held = NextPull(at, self._plan_pull(checked, at))
            with self._push_lock:
                self._held.append(held)
            return PullHandle(held.future, at, lambda: self._settle(held))
        return PullHandle(self._puller.submit(self._pull_now, checked, at), at)

    def _checked_pull(
        self, requests: Mapping[str, npt.ArrayLike], step: int | None
    ) -> tuple[int, dict[str, tuple[Ids, tuple[int, ...]]]]:
        checked = {name: (checked_ids(ids, name), np.shape(ids)) for name, ids in requests.items()}
        for name in checked:
            self.dim(name)
        return self.step if step is None else step, checked

    def push(
        self, table: str, ids: npt.ArrayLike, grads: npt.ArrayLike, step: int | None = None
    ) -> None:
        """Send the gradients of ``ids`` (rows of ``grads``) of ``table`` for ``step``."""
        flat = checked_ids(ids, table)
        values = np.ascontiguousarray(grads, dtype=np.float32).reshape(len(flat), -1)
        if len(flat) and values.shape[1] != self.dim(table):
            raise PSConfigError(
                f"{table}: gradients have dim {values.shape[1]}, the table {self.dim(table)}"
            )
        order, bounds = self._map.group(flat)
        self.push_many({table: (flat[order], values[order], bounds)}, step)

    def push_pulled(
        self, grads: Mapping[str, tuple[PulledRows, Rows]], step: int | None = None
    ) -> None:
        """Push the gradients of rows that :meth:`pull_many` returned (no regrouping)."""
        self.push_many(
            {name: (pulled.ids, g, pulled.bounds) for name, (pulled, g) in grads.items()}, step
        )

    def push_many(
        self, grads: Mapping[str, tuple[Ids, Rows, tuple[int, ...]]], step: int | None = None
    ) -> None:
        """Push per table ``(ids, grads, bounds)``; shard s owns ``[bounds[s], bounds[s+1])``.

        Every shard gets a frame for every table pushed (empty where it holds none of the
        ids): in sync mode each shard counts one push per rank per step.
        """
        at = self.step if step is None else step
        with self._push_lock:
            self._read_riders()
            frames: dict[int, list[Frame]] = {shard.index: [] for shard in self._shards}
            for name, (ids, values, bounds) in grads.items():
                dim = self.dim(name)
                values = np.ascontiguousarray(values, dtype=np.float32)
                for shard in self._shards:
                    lo, hi = bounds[shard.index], bounds[shard.index + 1]
                    header = self._header(Op.PUSH, shard, name, at, rows=hi - lo, dim=dim)
                    payload = buffers_of(ids[lo:hi], values[lo:hi])
                    frames[shard.index].append(
                        (header._replace(payload_bytes=(hi - lo) * (8 + 4 * dim)), payload)
                    )
            riders = self._riders(at, self._pushed | set(grads))
            self._shards.exchange(
                "push", frames, lambda header, sock: None, [r.plan.frames for r in riders]
            )
            self._pushed.update(grads)

    def advance(self, to_step: int | None = None) -> int:
        """End the current step: tables not pushed this step get empty pushes, then step += 1."""
        missing = [name for name in self._dims if name not in self._pushed]
        if missing:
            empty = (
                np.empty(0, np.int64),
                np.empty((0, 0), np.float32),
                (0,) * (len(self._shards) + 1),
            )
            self.push_many(
                {
                    name: (empty[0], empty[1].reshape(0, self._dims[name]), empty[2])
                    for name in missing
                }
            )
        with self._push_lock:
            if any(held.step == self.step + 1 for held in self._held):
                self._read_riders()
                riders = self._riders(self.step, set(self._dims))
                self._shards.exchange(
                    "push", {}, lambda header, sock: None, [r.plan.frames for r in riders]
                )
        self._pushed.clear()
        self.step = self.step + 1 if to_step is None else to_step
        return self.step

    def stats(self) -> list[dict[str, Any]]:
        """Each shard's STATS answer, in replica order."""
        return self._control(Op.STATS)

    def cuts(self) -> list[int]:
        """The step each shard's tables are cut at (where an epoch may resume)."""
        return [int(shard["cut"]) for shard in self.stats()]

    def begin(self, version: int, snapshot_to: str | None = None, since: int | None = None) -> None:
        """Cut the tables at step ``version`` (every rank's pushes of the steps before it
        applied; the shards wait for them): a later epoch that resumes at ``version``
        rolls the tables back to here. With ``snapshot_to``, every shard also writes the
        tables as of this cut there (the rows changed after cut ``since``, or all) on a
        thread: complete when each ``shard-<k>.json`` is there (``tidemill.ps._cuts``)."""
        body = (
            None if snapshot_to is None else {"snapshot": {"folder": snapshot_to, "since": since}}
        )
        self._control(Op.BEGIN, body, step=version)

    def restore(self, snapshots: Sequence[str], step: int) -> None:
        """Every shard loads a checkpoint's snapshots (the full one, then the deltas) and
        cuts there: the job resumes at ``step``."""
        self._control(Op.LOAD, {"snapshots": list(snapshots), "step": step})

    def rollback(self) -> None:
        self._control(Op.ROLLBACK)

    def export(self, folder: str, since_version: int | None = None) -> list[dict[str, str]]:
        """Every shard writes its tables under ``folder``; answers list the files per shard."""
        return self._control(Op.EXPORT, {"folder": folder, "since_version": since_version})

    def export_serving(self, folder: str, since_version: int | None = None) -> list[dict[str, str]]:
        """Rows changed after cut ``since_version`` (all rows when None) and the ids
        evicted since, as Parquet under ``folder/<table>/shard-<k>.parquet`` (see
        ``tidemill.ps._serving``): what a serving store applies to catch up."""
        body = {"folder": folder, "since_version": since_version, "format": "serving"}
        return self._control(Op.EXPORT, body)

    def load(
        self, folder: str, replace: bool = True, step: int | None = None
    ) -> list[dict[str, str]]:
        """Every shard loads its part of an EXPORT; with ``step``, the tables are cut there."""
        return self._control(Op.LOAD, {"folder": folder, "replace": replace, "step": step})

    def shutdown_servers(self) -> None:
        """Ask every shard to stop (the PS processes exit 0)."""
        self._control(Op.SHUTDOWN)

    def close(self) -> None:
        """Close the connections; a pull still waiting on a shard ends with PSUnavailable."""
        for shard in self._shards:
            shard.shutdown()
        self._abandon(PSUnavailable("the PS client was closed", shard=-1, address=""))
        puller = getattr(self, "_puller", None)
        if puller is not None:
            puller.shutdown(wait=True, cancel_futures=True)
        for shard in self._shards:
            shard.close()

    def __enter__(self) -> PSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _header(self, op: Op, shard: Shard, table: str | None, step: int, **sizes: int) -> Header:
        return Header(
            op,
            request_id=next(self._request_ids),
            table=shard.table_ids[table] if table is not None else 0,
            epoch=self.epoch,
            step=step,
            rank=self.rank,
            world=self.world,
            **sizes,
        )

    def _hello(self) -> None:
        for channel in ("pull", "push"):
            frames = {
                shard.index: [
                    json_frame(
                        self._header(Op.HELLO, shard, None, 0),
                        {"tables": list(self._dims), "proof": self._proof},
                    )
                ]
                for shard in self._shards
            }
            answers = self._shards.exchange(
                channel, frames, lambda header, sock: json.loads(recv_text(sock, header))
            )
            for shard in self._shards:
                declared = answers[shard.index][0]
                for name, dim in self._dims.items():
                    if declared[name]["dim"] != dim:
                        raise PSConfigError(
                            f"table {name!r}: {shard.label} has dim {declared[name]['dim']},"
                            f" this client's config says {dim}; both must read the same TIDEMILL_PS"
                        )
                shard.table_ids = {name: int(entry["id"]) for name, entry in declared.items()}

    def _pull_now(
        self, checked: dict[str, tuple[Ids, tuple[int, ...]]], step: int
    ) -> dict[str, PulledRows]:
        plan = self._plan_pull(checked, step)
        with self._pull_lock:
            self._shards.exchange("pull", plan.frames, plan.into_rows)
        return plan.pulled

    def _plan_pull(self, checked: dict[str, tuple[Ids, tuple[int, ...]]], step: int) -> PullPlan:
        plan = PullPlan({shard.index: [] for shard in self._shards}, {}, {})
        for name, (flat, shape) in checked.items():
            ids, inverse, bounds = self._map.unique_grouped(flat)
            rows = np.empty((len(ids), self._dims[name]), dtype=np.float32)
            plan.pulled[name] = PulledRows(ids, inverse, rows, bounds, shape)
            for shard in self._shards:
                lo, hi = bounds[shard.index], bounds[shard.index + 1]
                if hi > lo:
                    header = self._header(Op.PULL, shard, name, step, rows=hi - lo)
                    plan.frames[shard.index].append(
                        (header._replace(payload_bytes=(hi - lo) * 8), buffers_of(ids[lo:hi]))
                    )
                    plan.targets[header.request_id] = rows[lo:hi]
        return plan

    def _riders(self, pushed_step: int, pushed: set[str]) -> list[NextPull]:
        """Held pulls of ``pushed_step + 1`` whose tables this rank has all pushed (with
        the frames about to go out): to be sent behind those frames."""
        riders = [
            held
            for held in self._held
            if held.step == pushed_step + 1 and pushed.issuperset(held.plan.pulled)
        ]
        for rider in riders:
            self._held.remove(rider)
            self._riding.append(rider)
        return riders

    def _read_riders(self, until: NextPull | None = None) -> None:
        """Read the answers of pulls sent behind pushes, in the order they went out (they
        come before any later answer on those connections); push lock held."""
        while self._riding:
            rider = self._riding.pop(0)
            if self._shards.broken is not None:
                rider.future.set_exception(self._shards.broken)
            else:
                try:
                    self._shards.read_answers("push", rider.plan.frames, rider.plan.into_rows)
                except PSUnavailable as exc:
                    rider.future.set_exception(exc)
                    self._abandon(exc)
                    raise
                except PSError as exc:
                    rider.future.set_exception(exc)
                else:
                    rider.future.set_result(rider.plan.pulled)
            if rider is until:
                return

    def _abandon(self, why: PSError) -> None:
        """End every held or riding pull with ``why`` (the client broke or closed)."""
        for pull in (*self._held, *self._riding):
            if not pull.future.done():
                pull.future.set_exception(why)
        self._held.clear()
        self._riding.clear()

    def _settle(self, held: NextPull) -> None:
        """:meth:`PullHandle.result` of a held pull: read it if it rode, else send it now."""
        with self._push_lock:
            if held in self._riding:
                self._read_riders(until=held)
                return
            if held not in self._held:
                return
            self._held.remove(held)
        self._send_held(held)

    def _send_held(self, held: NextPull) -> None:
        """A held pull sent on the pull connections, as a pull of any other step is."""
        try:
            with self._pull_lock:
                self._shards.exchange("pull", held.plan.frames, held.plan.into_rows)
        except PSError as exc:
            held.future.set_exception(exc)
        else:
            held.future.set_result(held.plan.pulled)

    def _control(self, op: Op, body: dict[str, Any] | None = None, step: int = 0) -> list[Any]:
        with self._push_lock:
            self._read_riders()
            frames = {
                shard.index: [
                    json_frame(self._header(op, shard, None, step), body)
                    if body
                    else (self._header(op, shard, None, step), [])
                ]
                for shard in self._shards
            }
            answers = self._shards.exchange(
                "push", frames, lambda header, sock: json.loads(recv_text(sock, header))
            )
        return [answers[shard.index][0] for shard in self._shards]
