"""Sparse optimizers applied on the server, one row at a time, with torch's defaults.

A row is stored as ``[weights (dim) | optimizer state (state_width)]`` in one float32
row of the table, so an update reads and writes one contiguous stretch of memory.
SGD, Adagrad and Adam follow the single-tensor code of ``torch.optim`` (float32
arithmetic, L2 ``weight_decay`` added to the gradient), so a table matches a dense
``torch.nn.Embedding`` trained by the torch optimizer on the same gradients; FTRL
follows McMahan et al. 2013, "Ad Click Prediction: a View from the Trenches", Algorithm 1
(per-coordinate FTRL-Proximal) with TensorFlow's ``lr_power`` generalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
import numpy.typing as npt

from tidemill.ps._prefetch import AHEAD, prefetch_row

KINDS = ("sgd", "adagrad", "adam", "ftrl")
SGD, ADAGRAD, ADAM, FTRL = range(4)
_DEFAULT_LR = {"sgd": 1e-3, "adagrad": 1e-2, "adam": 1e-3, "ftrl": 5e-2}
_DEFAULT_EPS = {"sgd": 0.0, "adagrad": 1e-10, "adam": 1e-8, "ftrl": 0.0}
# positions in OptimizerConfig.params, the float64 vector the kernels read
LR, EPS, BETA1, BETA2, WEIGHT_DECAY, L1, L2, BETA, LR_POWER, INITIAL_ACCUMULATOR = range(10)


@dataclass(frozen=True)
class OptimizerConfig:
    """Which optimizer a table runs and its hyper-parameters (torch's defaults when unset).

    ``lr`` defaults per kind as torch does (SGD 1e-3, Adagrad 1e-2, Adam 1e-3; FTRL 0.05,
    the paper's alpha scale); ``eps`` too (Adagrad 1e-10, Adam 1e-8).
    ``initial_accumulator`` starts Adagrad's sum of squares and FTRL's ``n``.
    Adam counts steps per row: a row's step is the number of pushes that touched it,
    while torch's dense Adam counts global steps, so the two agree only for rows touched
    at every step (rows of a sparse table are not decayed when absent from a push).
    FTRL rows start from the table's init weights with ``z = 0``; the first push
    replaces the weights by the closed form of ``z`` and ``n`` (as TensorFlow's Ftrl).

    >>> OptimizerConfig("adam").lr, OptimizerConfig("adam").state_width(8)
    (0.001, 16)
    """

    kind: str = "adagrad"
    lr: float | None = None
    eps: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    initial_accumulator: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    beta: float = 1.0
    lr_power: float = -0.5
    params: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        lr = _DEFAULT_LR[self.kind] if self.lr is None else self.lr
        eps = _DEFAULT_EPS[self.kind] if self.eps is None else self.eps
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "eps", eps)
        _check("lr", lr, "a finite number > 0", lambda v: v > 0)
        _check("eps", eps, "a finite number >= 0", lambda v: v >= 0)
        for name in ("beta1", "beta2"):
            _check(name, getattr(self, name), "a number in [0, 1)", lambda v: 0 <= v < 1)
        for name in ("weight_decay", "initial_accumulator", "l1", "l2", "beta"):
            _check(name, getattr(self, name), "a finite number >= 0", lambda v: v >= 0)
        _check("lr_power", self.lr_power, "a finite number <= 0", lambda v: v <= 0)
        if self.kind == "ftrl" and self.weight_decay:
            raise ValueError("weight_decay: not used by ftrl; set l2 for L2 regularisation")
        values = [lr, eps, self.beta1, self.beta2, self.weight_decay, self.l1, self.l2]
        values += [self.beta, self.lr_power, self.initial_accumulator]
        object.__setattr__(self, "params", tuple(float(v) for v in values))

    @property
    def code(self) -> int:
        """The kind as the small integer the kernels branch on."""
        return KINDS.index(self.kind)

    def state_width(self, dim: int) -> int:
        """float32 columns of optimizer state per row: sgd 0, adagrad dim, adam and ftrl 2*dim."""
        return {"sgd": 0, "adagrad": dim, "adam": 2 * dim, "ftrl": 2 * dim}[self.kind]

    def initial_state(self, dim: int) -> npt.NDArray[np.float32]:
        """The optimizer state of a new row (Adagrad's sum and FTRL's ``n`` start at
        ``initial_accumulator``; everything else at zero)."""
        state = np.zeros(self.state_width(dim), np.float32)
        if self.kind == "adagrad":
            state[:] = self.initial_accumulator
        elif self.kind == "ftrl":
            state[dim:] = self.initial_accumulator
        return state


def _check(name: str, value: object, expected: str, ok: Callable[[float], bool]) -> None:
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name}: {value!r} is not valid; expected {expected}")


@numba.njit(nogil=True, cache=True, error_model="numpy")
def apply_updates(
    kind: int,
    params: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float32],
    slots: npt.NDArray[np.int64],
    grads: npt.NDArray[np.float32],
    steps: npt.NDArray[np.uint32],
) -> None:
    """Update table row ``rows[slots[i]]`` (weights then state) in place with ``grads[i]``,
    for every ``i`` whose slot is not -1.

    ``steps[i]`` is that row's own update count including this one (Adam's bias
    correction). One loop per kind over the whole batch, with the row's parts taken as
    views inside it, and the numpy error model (a division by zero gives inf or nan, as
    torch's does; Python's model adds a check per division): all three are needed for
    the per-row loops to compile to SIMD instructions, which makes a push 2-3x faster.
    """
    if kind == SGD:
        _sgd(params, rows, slots, grads)
    elif kind == ADAGRAD:
        _adagrad(params, rows, slots, grads)
    elif kind == ADAM:
        _adam(params, rows, slots, grads, steps)
    else:
        _ftrl(params, rows, slots, grads)


@numba.njit(nogil=True, cache=True)
def _fetch_ahead(rows: npt.NDArray[np.float32], slots: npt.NDArray[np.int64], i: int) -> None:
    """Ask for the row updated ``AHEAD`` ids after ``i`` (see ``_prefetch``)."""
    if i + AHEAD < slots.size and slots[i + AHEAD] >= 0:
        prefetch_row(rows, slots[i + AHEAD], rows.shape[1])


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _sgd(
    params: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float32],
    slots: npt.NDArray[np.int64],
    grads: npt.NDArray[np.float32],
) -> None:
    dim = grads.shape[1]
    lr = np.float32(params[LR])
    decay = np.float32(params[WEIGHT_DECAY])
    for i in range(slots.size):
        _fetch_ahead(rows, slots, i)
        if slots[i] < 0:
            continue
        weights = rows[slots[i], :dim]
        grad = grads[i]
        for j in range(dim):
            weights[j] = weights[j] - lr * (grad[j] + decay * weights[j])


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _adagrad(
    params: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float32],
    slots: npt.NDArray[np.int64],
    grads: npt.NDArray[np.float32],
) -> None:
    dim = grads.shape[1]
    lr = np.float32(params[LR])
    decay = np.float32(params[WEIGHT_DECAY])
    eps = np.float32(params[EPS])
    for i in range(slots.size):
        _fetch_ahead(rows, slots, i)
        if slots[i] < 0:
            continue
        weights = rows[slots[i], :dim]
        total = rows[slots[i], dim : 2 * dim]
        grad = grads[i]
        for j in range(dim):
            g = grad[j] + decay * weights[j]
            total[j] = total[j] + g * g
            weights[j] = weights[j] - lr * (g / (np.sqrt(total[j]) + eps))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _adam(
    params: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float32],
    slots: npt.NDArray[np.int64],
    grads: npt.NDArray[np.float32],
    steps: npt.NDArray[np.uint32],
) -> None:
    dim = grads.shape[1]
    beta1 = params[BETA1]
    beta2 = params[BETA2]
    eps = np.float32(params[EPS])
    decay = np.float32(params[WEIGHT_DECAY])
    keep1 = np.float32(1.0 - beta1)
    keep2 = np.float32(1.0 - beta2)
    beta2_32 = np.float32(beta2)
    for i in range(slots.size):
        _fetch_ahead(rows, slots, i)
        if slots[i] < 0:
            continue
        step = steps[i]
        step_size = np.float32(params[LR] / (1.0 - beta1**step))
        correction2_sqrt = np.float32(math.sqrt(1.0 - beta2**step))
        weights = rows[slots[i], :dim]
        means = rows[slots[i], dim : 2 * dim]
        squares = rows[slots[i], 2 * dim : 3 * dim]
        grad = grads[i]
        for j in range(dim):
            g = grad[j] + decay * weights[j]
            m = means[j] + keep1 * (g - means[j])
            v = squares[j] * beta2_32 + keep2 * (g * g)
            means[j] = m
            squares[j] = v
            weights[j] = weights[j] - step_size * (m / (np.sqrt(v) / correction2_sqrt + eps))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _ftrl(
    params: npt.NDArray[np.float64],
    rows: npt.NDArray[np.float32],
    slots: npt.NDArray[np.int64],
    grads: npt.NDArray[np.float32],
) -> None:
    dim = grads.shape[1]
    alpha = params[LR]
    l1 = params[L1]
    l2 = params[L2]
    beta = params[BETA]
    power = -params[LR_POWER]
    for i in range(slots.size):
        _fetch_ahead(rows, slots, i)
        if slots[i] < 0:
            continue
        weights = rows[slots[i], :dim]
        zs = rows[slots[i], dim : 2 * dim]
        ns = rows[slots[i], 2 * dim : 3 * dim]
        for j in range(dim):
            g = np.float64(grads[i, j])
            n = np.float64(ns[j])
            n_new = n + g * g
            sigma = (n_new**power - n**power) / alpha
            z = np.float64(zs[j]) + g - sigma * np.float64(weights[j])
            zs[j] = np.float32(z)
            ns[j] = np.float32(n_new)
            if abs(z) <= l1:
                weights[j] = np.float32(0.0)
            else:
                sign = 1.0 if z > 0 else -1.0
                weights[j] = np.float32(-(z - sign * l1) / ((beta + n_new**power) / alpha + l2))
