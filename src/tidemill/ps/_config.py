"""What a table is: its width, optimizer, initialisation, admission and eviction policy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tidemill.ps._ids import as_ids, as_int
from tidemill.ps._kernels import init_rows_kernel
from tidemill.ps._optimizers import OptimizerConfig


@dataclass(frozen=True)
class TableConfig:
    """A sparse embedding table and how it admits, initialises and evicts rows.

    - ``dim``: weights per row (>= 1).
    - ``optimizer``: the optimizer the server runs on pushed gradients.
    - ``init_scale``, ``seed``: new rows start uniform in [-init_scale, init_scale),
      a pure function of (seed, id, column): see :func:`init_rows`.
    - ``admit_min_count``: an id gets a row once it was pulled this many times (in
      distinct pull calls); 1 admits at once. Pulls of ids without a row are counted
      in a count-min sketch of ``admission_sketch_width`` columns by 4 rows (power of
      two; 4 bytes a cell), which may over-count (admit early) but never under-counts.
    - ``ttl_steps``: :meth:`ShardTable.evict` removes rows not pulled or pushed for this
      many steps; None keeps them.
    - ``max_rows``: row budget; pulls and :meth:`ShardTable.evict` remove the least
      frequently pulled rows to stay within it; None means no budget.

    >>> TableConfig("user", dim=8).optimizer.kind
    'adagrad'
    """

    name: str
    dim: int
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    init_scale: float = 0.01
    seed: int = 0
    admit_min_count: int = 1
    ttl_steps: int | None = None
    max_rows: int | None = None
    admission_sketch_width: int = 1 << 16

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name: {self.name!r} is not valid; expected a non-empty string")
        as_int(self.dim, "dim", minimum=1)
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ValueError(f"optimizer: expected an OptimizerConfig, got {self.optimizer!r}")
        scale = self.init_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale < 1e30:
            raise ValueError(f"init_scale: {scale!r} is not valid; expected a finite number >= 0")
        as_int(self.seed, "seed")
        as_int(self.admit_min_count, "admit_min_count", minimum=1)
        if self.ttl_steps is not None:
            as_int(self.ttl_steps, "ttl_steps", minimum=1)
        if self.max_rows is not None:
            as_int(self.max_rows, "max_rows", minimum=1)
        width = as_int(self.admission_sketch_width, "admission_sketch_width", minimum=1)
        if width & (width - 1):
            raise ValueError(
                f"admission_sketch_width: {width} is not a power of two; e.g. {1 << 16}"
            )

    @property
    def state_width(self) -> int:
        """float32 columns of optimizer state stored after the weights of each row."""
        return self.optimizer.state_width(self.dim)


def init_rows(config: TableConfig, ids: object) -> npt.NDArray[np.float32]:
    """The starting weights ``[n, dim]`` of rows for ``ids``: a pure function of
    (seed, id, column), so a row gets the same start on any shard and after eviction,
    and a reference ``torch.nn.Embedding`` can be filled with exactly these rows.

    >>> config = TableConfig("t", dim=4, seed=7)
    >>> bool((init_rows(config, [3]) == init_rows(config, [9, 3])[1]).all())
    True
    """
    seed = np.uint64(config.seed)
    return init_rows_kernel(as_ids(ids), seed, float(config.init_scale), config.dim)
