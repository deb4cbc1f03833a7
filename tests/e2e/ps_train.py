"""A PS job's worker for the end-to-end tests: a ledger kept on the parameter servers.

Step ``t``'s global batch is a fixed list of ids, split over the ranks of the epoch.
The loss is minus the sum of the looked-up rows, the table's optimizer is SGD with lr 1
and rows start at 0, so each occurrence of an id adds exactly 1 to its row: after
``STEPS`` steps trained exactly once, a row equals the number of times its id occurs
in the batches, whatever the world sizes and failures on the way.

    python ps_train.py STEPS RESULT_JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import tidemill.runtime as rt
from tidemill.ps import PSEmbedding
from tidemill.ps.elastic import JobPS

IDS_PER_STEP = 8
ID_SPACE = 40


def global_batch(step: int) -> list[int]:
    """Repeated and new ids: each step revisits some ids and reaches new ones."""
    return [(step * 7 + k * 13) % ID_SPACE + (step // 10) * ID_SPACE for k in range(IDS_PER_STEP)]


def main() -> None:
    steps, result = int(sys.argv[1]), Path(sys.argv[2])
    state = rt.ElasticState(torch.nn.Linear(1, 1))
    ps = JobPS()

    @rt.elastic(state)
    def train(ctx: rt.ElasticContext) -> None:
        client = ps.join(ctx)
        embedding = PSEmbedding(client, "ledger", grad_scale=1.0)
        for _ in ctx.steps(until=steps):
            ids = global_batch(state.step)[ctx.rank :: ctx.world_size]
            rows = embedding(torch.tensor(ids, dtype=torch.int64))
            loss = -rows.sum() + 0.0 * ctx.model(torch.ones(1, 1)).sum()
            loss.backward()
            client.advance()
            state.step += 1
            print(f"step {state.step} world {ctx.world_size}", flush=True)
            time.sleep(0.05)
            if state.step % 5 == 0:
                state.commit()
        if ctx.rank == 0:
            ids = sorted({i for step in range(steps) for i in global_batch(step)})
            values = client.pull("ledger", ids)[:, 0].tolist()
            result.write_text(json.dumps(dict(zip(map(str, ids), values, strict=True))))

    train()
    ps.close()


if __name__ == "__main__":
    main()
