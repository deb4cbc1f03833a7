"""A worker's PS client inside the elastic loop: it follows the group from epoch to epoch.

The tables and the dense model must move together. Rank 0's every ``state.commit()``
cuts the tables at that step (the shards wait for every rank's pushes of the steps
before it); when a group re-forms, it resumes at its last commit, and each shard takes
its tables back to the cut of that step. A clean resize undoes nothing; after a lost
worker the steps since the commit are undone on the servers as on the survivors, so
no row sees a sample twice.

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
from collections.abc import Callable, Mapping

from tidemill.ps._client import PSClient
from tidemill.ps._psconfig import Address, PSConfig, addresses_from_env
from tidemill.runtime._active import current
from tidemill.runtime.elastic_context import ElasticContext
from tidemill.runtime.elastic_state import CommitHook, ElasticState


class JobPS:
    """The job's parameter servers as its environment names them, for one worker."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.config = PSConfig.from_env(env)
        self.addresses: tuple[Address, ...] = addresses_from_env(env)
        self._client: PSClient | None = None
        self._cutting: CommitHook | None = None

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
        client = PSClient(self.config, self.addresses, ctx.rank, ctx.world_size, ctx.epoch)
        client.reconfigure(ctx.epoch, ctx.rank, ctx.world_size, ctx.state.step)
        self._client = client
        active = current()
        if active is not None:
            active.on_abort(client.close)
        if ctx.rank == 0:
            cut = _cut_with(client)
            if active is not None:
                active.hook_commits(cut)
            else:
                self._cutting = ctx.state.add_commit_hook(cut)
        return client

    def close(self) -> None:
        if self._cutting is not None:
            self._cutting.remove()
        if self._client is not None:
            self._client.close()


def _cut_with(client: PSClient) -> Callable[[ElasticState], None]:
    def cut(state: ElasticState) -> None:
        client.begin(state.step)

    return cut
