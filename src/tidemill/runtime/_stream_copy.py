"""Byte copies with non-temporal stores, for state copies nobody reads soon.

A commit copies the whole state into memory read only at a rollback or by the
checkpoint writer. Ordinary stores first read every destination line into the cache
(read for ownership) and push live data out of it; non-temporal stores write whole
lines straight to memory. glibc's ``memcpy`` switches to them only for copies above
a threshold set from the cache size (190 MB on the development VM, far above one
tensor), so numpy's copies of tensors never use them. Measured there, 1 GB copied in
4 MB pieces into memory already touched: 192 ms with numpy, 114 ms with glibc's
non-temporal path (one 1 GB copy); under load (average 3.5) 364 ms with numpy and
270 ms streamed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numba
import numpy as np
from llvmlite import ir  # type: ignore[import-untyped]
from numba.core import types
from numba.extending import intrinsic
from numba.np.numpy_support import carray

LINE = 64
"""Bytes per non-temporal store (a cache line); the target must start on a line."""
STREAM_MIN_BYTES = 64 << 10
"""Smaller copies use ordinary stores: a line or two of savings does not repay the call."""


def _stream_line_intrinsic(typing_context: Any, target: Any, source: Any, offset: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        into, out_of, at = args
        into_array = context.make_array(signature.args[0])(context, builder, into)
        out_of_array = context.make_array(signature.args[1])(context, builder, out_of)
        line = ir.VectorType(ir.IntType(64), LINE // 8).as_pointer()
        read = builder.bitcast(builder.gep(out_of_array.data, [at]), line)
        written = builder.bitcast(builder.gep(into_array.data, [at]), line)
        store = builder.store(builder.load(read, align=1), written, align=LINE)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
        return context.get_dummy_value()

    return types.void(target, source, offset), codegen


def _fence_intrinsic(typing_context: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


_stream_line = cast(Callable[[Any, Any, int], None], intrinsic(_stream_line_intrinsic))
"""``_stream_line(target, source, offset)``: the 64 bytes at ``offset`` of ``source``
stored into ``target`` past the cache (``target + offset`` on a line)."""
_fence = cast(Callable[[], None], intrinsic(_fence_intrinsic))
"""A full fence: non-temporal stores are weakly ordered until one."""


@numba.njit(nogil=True, cache=True)
def _stream(target: Any, source: Any) -> None:
    lines = target.size // LINE
    for line in range(lines):
        _stream_line(target, source, line * LINE)
    _fence()
    for tail in range(lines * LINE, target.size):
        target[tail] = source[tail]


def _address_intrinsic(typing_context: Any, address: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(address), codegen


_address = cast(Callable[[int], Any], intrinsic(_address_intrinsic))
"""``_address(int)``: the integer as a pointer, for ``carray``."""


@numba.njit(nogil=True, cache=True)
def copy_spans(targets: Any, sources: Any, sizes: Any) -> None:
    """For each i, copy ``sizes[i]`` bytes from address ``sources[i]`` to ``targets[i]``
    (int64 arrays) in one call without the GIL: streamed when the target starts on a
    cache line and is at least :data:`STREAM_MIN_BYTES`, else with ordinary stores; the
    bytes are visible to other threads and processes when this returns.

    For many small tensors: building a numpy view of each costs microseconds of Python
    (4,000 tensors of a commit: 27 ms of byte views, where their addresses take 2 ms).
    The caller keeps every tensor whose bytes these are alive until this returns.
    """
    for span in range(sizes.size):
        size = sizes[span]
        into = carray(_address(targets[span]), size, np.uint8)
        out_of = carray(_address(sources[span]), size, np.uint8)
        if size >= STREAM_MIN_BYTES and targets[span] % LINE == 0:
            _stream(into, out_of)
        else:
            into[:] = out_of


def load_kernel() -> None:
    """Load the compiled copy now rather than at the first commit: numba loads a
    cached kernel at its first call, and the first load in a process sets up LLVM
    (``_stream`` is compiled into it: loading it on its own would only cost time)."""
    no_spans = np.empty(0, np.int64)
    copy_spans(no_spans, no_spans, no_spans)
