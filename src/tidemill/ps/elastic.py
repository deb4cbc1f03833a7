"""A worker's PS client inside the elastic loop: it follows the group from epoch to epoch.

The tables and the dense model move together. Rank 0's every ``state.commit()`` cuts
the tables at that step (the shards wait for every rank's pushes of the steps before
it); when a group re-forms it resumes at its last commit, and each shard takes its
tables back to the cut of that step. A clean resize undoes nothing; after a lost worker
the steps since the commit are undone on the servers as on the survivors, so no row
sees a sample twice.

Durable checkpoints: a commit that will be saved also has every shard write its tables
as of the cut (a full snapshot every :data:`FULL_EVERY` checkpoints, the rows changed
since the previous snapshot otherwise) under ``<checkpoint dir>/ps/``, and the
checkpoint records the chain (``extras["tidemill.ps"]``), so weights, optimizer state
and data positions all come from one moment. When a shard lost its tables (a PS
replica killed and restarted), the group's rank 0 restores the newest checkpoint, in
place: the model, the optimizer and the data positions on every rank, and the chain of
snapshots on every shard.

Example (inside a job whose ``ps`` role has tables)::

    ps = JobPS()                         # TIDEMILL_PS and TIDEMILL_PS_ADDRS

    @tidemill.runtime.elastic(state)
    def train(ctx):
        client = ps.join(ctx)            # at the start of every epoch
        emb = PSEmbeddingBag(client, "user", mode="sum")
        for step in ctx.steps(until=1000):
            ...
            loss.backward(); optimizer.step(); client.advance()
            state.step += 1
            if state.step % 10 == 0:
                state.commit()
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
import torch
import torch.distributed as dist

from tidemill.checkpoint import list_checkpoints
from tidemill.peer_proof import job_proof
from tidemill.ps._client import PSClient
from tidemill.ps._cuts import snapshot_shards
from tidemill.ps._errors import PSCutMissing, PSUnavailable
from tidemill.ps._psconfig import Address, PSConfig, addresses_from_env
from tidemill.ps._wire import ErrorCode
from tidemill.runtime._active import ActiveEpoch, current
from tidemill.runtime._checkpointing import Checkpointing
from tidemill.runtime.elastic_context import ElasticContext
from tidemill.runtime.elastic_state import CommitHook, Committed, ElasticState

EXTRAS_KEY = "tidemill.ps"
"""Where a checkpoint records its table snapshots: ``{"step", "snapshots": [folders]}``."""
SHARDS_BACK_S = 120.0
"""How long a new epoch waits for a PS replica to come back (restarted by the engine)."""
FULL_EVERY = 4
"""A full snapshot every this many checkpoints; the ones between hold the changed rows."""


class JobPS:
    """The job's parameter servers as its environment names them, for one worker."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = PSConfig.from_env(env)
        self.addresses: tuple[Address, ...] = addresses_from_env(env)
        self.proof = job_proof(env)
        self._client: PSClient | None = None
        self._cutting: CommitHook | None = None
        self._waits_for: Checkpointing | None = None

    def join(self, ctx: ElasticContext) -> PSClient:
        """The client for this epoch (rank, world size, step from ``ctx``); call it at
        the start of the training function, which the elastic loop runs per epoch.

        Rank 0's cuts last exactly as long as the epoch: a commit made after a failure
        (the loop's own, on a resize) must not cut tables holding the undone steps."""
        if self._cutting is not None:
            self._cutting.remove()
            self._cutting = None
        if self._client is not None:
            self._client.close()
        state = ctx.state
        client = self._connect(ctx)
        self._client = client
        active = current()
        checkpointing = None if active is None else active.checkpointing
        if active is not None:
            active.on_abort(client.close)
        restored = ctx.rank == 0 and _line_up(client, state, checkpointing)
        if ctx.world_size > 1 and _anyone(restored, ctx):
            state.broadcast(0, ctx.rank, ctx.device)
        client.reconfigure(ctx.epoch, ctx.rank, ctx.world_size, state.step)
        if ctx.rank == 0:
            self._hook(ctx, client, active, checkpointing)
            if checkpointing is not None and self._waits_for is not checkpointing:
                checkpointing.add_parts(snapshots_complete)
                self._waits_for = checkpointing
        return client

    def close(self) -> None:
        if self._cutting is not None:
            self._cutting.remove()
        if self._client is not None:
            self._client.close()

    def _connect(self, ctx: ElasticContext) -> PSClient:
        """A client of every shard, waiting up to :data:`SHARDS_BACK_S` for a replica
        the engine is restarting."""
        deadline = time.monotonic() + SHARDS_BACK_S
        while True:
            try:
                return PSClient(
                    self.config,
                    self.addresses,
                    ctx.rank,
                    ctx.world_size,
                    ctx.epoch,
                    proof=self.proof,
                )
            except PSUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _hook(
        self,
        ctx: ElasticContext,
        client: PSClient,
        active: ActiveEpoch | None,
        checkpointing: Checkpointing | None,
    ) -> None:
        cut = _cut_with(client, checkpointing, len(self.addresses))
        if active is not None:
            active.hook_commits(cut)
        else:
            self._cutting = ctx.state.add_commit_hook(cut)


def _cut_with(
    client: PSClient, checkpointing: Checkpointing | None, shards: int
) -> Callable[[ElasticState], None]:
    def cut(state: ElasticState) -> None:
        step = state.step
        if checkpointing is None or not checkpointing.will_save(step):
            client.begin(step)
            return
        chain = list(_snapshots(state))
        if len(chain) >= FULL_EVERY or any(_missing_shards(f, shards) for _, f in chain):
            chain = []  # a full snapshot every FULL_EVERY, and after one that failed
        since = chain[-1][0] if chain else None
        folder = f"{checkpointing.plan.url.rstrip('/')}/ps/cut-{step:012d}"
        client.begin(step, snapshot_to=folder, since=since)
        state.extras[EXTRAS_KEY] = {
            "step": step,
            "shards": shards,
            "snapshots": [[s, f] for s, f in [*chain, (step, folder)]],
        }

    return cut


def snapshots_complete(committed: Committed, timeout_s: float) -> str | None:
    """None once every shard's snapshot of ``committed``'s chain is written (its
    ``shard-<k>.json`` is there), else why not: the checkpoint then is not written."""
    record: Any = committed.extras.get(EXTRAS_KEY)
    if not isinstance(record, dict) or record.get("step") != committed.step:
        return f"the parameter servers took no snapshot at step {committed.step}"
    shards = int(record["shards"])
    deadline = time.monotonic() + timeout_s
    for _, folder in record["snapshots"]:
        while missing := _missing_shards(str(folder), shards):
            if time.monotonic() > deadline:
                return (
                    f"PS replicas {missing} did not finish their snapshot in {folder} within "
                    f"{timeout_s:g} s (see their logs: tidemill logs JOB --role ps)"
                )
            time.sleep(0.05)
    _drop_unreferenced(record)
    return None


def _drop_unreferenced(record: dict[str, Any]) -> None:
    """Delete the snapshot folders no checkpoint names any more (rotated out), keeping
    those of ``record`` (the checkpoint about to be written)."""
    newest = str(record["snapshots"][-1][1])
    root = newest.rsplit("/ps/", 1)[0]
    keep = {str(folder) for _, folder in record["snapshots"]}
    for listing in list_checkpoints(root):
        extras = listing.manifest.extras if listing.manifest is not None else None
        if not isinstance(extras, dict):
            return  # being written, unreadable, or extras too big to copy: keep all
        named = extras.get(EXTRAS_KEY)
        if isinstance(named, dict):
            keep |= {str(folder) for _, folder in named.get("snapshots", [])}
    fs, base = fsspec.core.url_to_fs(f"{root}/ps")
    for path in fs.glob(f"{base.rstrip('/')}/cut-*"):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if f"{root}/ps/{name}" not in keep:
            fs.rm(path, recursive=True)


def _missing_shards(folder: str, shards: int) -> list[int]:
    written = set(snapshot_shards(folder)) if _exists(folder) else set()
    return [shard for shard in range(shards) if shard not in written]


def _exists(folder: str) -> bool:
    fs, root = fsspec.core.url_to_fs(folder)
    return bool(fs.exists(root))


def _snapshots(state: ElasticState) -> list[tuple[int, str]]:
    """The snapshot chain the last checkpointed commit recorded (step, folder)."""
    record: Any = state.extras.get(EXTRAS_KEY)
    if not isinstance(record, dict):
        return []
    return [(int(step), str(folder)) for step, folder in record.get("snapshots", [])]


def _line_up(client: PSClient, state: ElasticState, checkpointing: Checkpointing | None) -> bool:
    """Rank 0: make every shard hold the tables of ``state.step``. True when that took
    restoring a checkpoint into ``state`` (the other ranks then take it from rank 0)."""
    if all(cut == state.step for cut in client.cuts()):
        return False
    restored = False
    if _recorded_step(state) != state.step:
        if checkpointing is None or not checkpointing.restore(state):
            raise PSCutMissing(
                f"a parameter server lost its tables (they are cut at steps "
                f"{client.cuts()}, the job is at step {state.step}) and no checkpoint "
                "holds them; give the job spec.checkpoint (everySteps) so it can resume",
                code=ErrorCode.CUT_MISSING,
            )
        restored = True
        if _recorded_step(state) != state.step:
            raise PSCutMissing(
                f"the checkpoint at step {state.step} holds no parameter-server tables",
                code=ErrorCode.CUT_MISSING,
            )
    client.restore([folder for _, folder in _snapshots(state)], state.step)
    return restored


def _recorded_step(state: ElasticState) -> int | None:
    record: Any = state.extras.get(EXTRAS_KEY)
    return int(record["step"]) if isinstance(record, dict) and "step" in record else None


def _anyone(restored: bool, ctx: ElasticContext) -> bool:
    """Whether rank 0 restored a checkpoint (every rank calls this together)."""
    flag = torch.tensor([1 if restored else 0], device=ctx.device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())
