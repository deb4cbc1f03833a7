"""Property test: any sequence of pulls, pushes, evictions, begins and rollbacks leaves
the table holding exactly the rows a plain dict model holds, each findable with its value.

Tables start at capacity 2, so the index rehashes and rows move (deletion fills a hole
with the last row, the index shifts entries back) again and again along the way.
"push_pulled" pushes the last pull's ids, the push that reuses the rows that pull
found: it must never reuse them after rows moved in between.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidemill.ps._config import TableConfig, init_rows
from tidemill.ps._optimizers import OptimizerConfig
from tidemill.ps._table import ShardTable

TTL = 3
POOL = sorted(
    {0, 1, 2, 3, 1023, 2**63 - 1, 2**63 - 2}
    | {2**k for k in range(4, 63, 4)}
    | {m * 2**40 for m in range(1, 12)}
)
ids_lists = st.lists(st.sampled_from(POOL), min_size=1, max_size=10)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pull"), ids_lists),
        st.tuples(st.just("push"), ids_lists, st.integers(-4, 4)),
        st.tuples(st.just("push_pulled"), st.just([]), st.integers(-4, 4)),
        st.tuples(st.just("evict"), st.just([])),
        st.tuples(st.just("begin"), st.just([])),
        st.tuples(st.just("rollback"), st.just([])),
    ),
    max_size=40,
)


class Model:
    """What the table should hold: id -> (weights, last step)."""

    def __init__(self, config: TableConfig) -> None:
        self.config = config
        self.rows: dict[int, tuple[np.ndarray, int]] = {}
        self.saved: dict[int, tuple[np.ndarray, int]] | None = None

    def pull(self, ids: list[int], step: int) -> np.ndarray:
        for key in ids:
            weights = self.rows[key][0] if key in self.rows else init_rows(self.config, [key])[0]
            self.rows[key] = (weights, step)
        return np.array([self.rows[key][0] for key in ids])

    def push(self, ids: list[int], grads: np.ndarray, step: int) -> int:
        present = [(key, g) for key, g in zip(ids, grads, strict=True) if key in self.rows]
        for key, g in present:
            self.rows[key] = (self.rows[key][0] - g, step)  # SGD, lr 1
        return len(present)

    def evict(self, step: int) -> list[int]:
        stale = sorted(key for key, (_, last) in self.rows.items() if last <= step - TTL)
        for key in stale:
            del self.rows[key]
        return stale


def check_same(table: ShardTable, model: Model) -> None:
    exported = table.export()
    assert exported.ids.tolist() == sorted(model.rows)
    expected = [model.rows[key][0] for key in sorted(model.rows)]
    assert np.array_equal(exported.weights, np.array(expected).reshape(-1, 2))
    assert table.rows == len(model.rows)


@pytest.mark.parametrize("max_rows", [None, 12])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_the_table_holds_exactly_what_a_dict_model_holds(
    max_rows: int | None, ops: list[tuple[object, ...]]
) -> None:
    config = TableConfig(
        "t",
        dim=2,
        optimizer=OptimizerConfig("sgd", lr=1.0),
        init_scale=0.5,
        ttl_steps=TTL,
        max_rows=max_rows,
    )
    table = ShardTable(config, capacity=2)
    model = Model(config)
    began = False
    pulled: list[int] = []
    for step, (name, ids, *rest) in enumerate(ops):
        assert isinstance(ids, list)
        if name == "push_pulled":
            name, ids = "push", pulled
        if name == "pull":
            pulled = list(dict.fromkeys(ids))
            out = table.pull(ids, step=step)
            assert np.array_equal(out, model.pull(ids, step))
            if max_rows is not None:  # rows the pull evicted to stay in budget leave the model
                kept = table.has_rows(list(model.rows))
                lost = [key for key, held in zip(model.rows, kept, strict=True) if not held]
                assert not set(lost) & set(ids)
                for key in lost:
                    del model.rows[key]
                assert table.rows <= max_rows
        elif name == "push":
            unique = list(dict.fromkeys(ids))
            grads = np.full((len(unique), 2), float(rest[0]), np.float32)
            grads[:, 1] += np.arange(len(unique), dtype=np.float32)
            assert table.push(unique, grads, step=step) == model.push(unique, grads, step)
        elif name == "evict":
            assert table.evict(step=step).tolist() == model.evict(step)
        elif name == "begin":
            table.begin(0)
            model.saved, began = copy.deepcopy(model.rows), True
        elif began:
            table.rollback()
            assert model.saved is not None
            model.rows = copy.deepcopy(model.saved)
        check_same(table, model)
