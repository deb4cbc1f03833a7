"""Non-temporal byte copies give exactly numpy's result, aligned or not, with any tail."""

from __future__ import annotations

import numpy as np
import pytest

from tidemill.runtime._stream_copy import LINE, STREAM_MIN_BYTES, copy_spans


def line_aligned(nbytes: int, shift: int = 0) -> np.ndarray:
    raw = np.zeros(nbytes + 2 * LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % LINE + shift
    return raw[start : start + nbytes]


@pytest.mark.parametrize(
    ("nbytes", "shift"),
    [
        (STREAM_MIN_BYTES, 0),  # whole lines, streamed
        (STREAM_MIN_BYTES * 3 + 37, 0),  # streamed, then a tail of 37 bytes
        (STREAM_MIN_BYTES * 2 + 5, 8),  # the target off a line: ordinary stores
        (1000, 0),  # small: ordinary stores
    ],
    ids=["lines", "lines-and-tail", "unaligned", "small"],
)
def test_a_copy_equals_its_source_byte_for_byte(nbytes: int, shift: int) -> None:
    source = np.random.default_rng(nbytes).integers(0, 256, nbytes + 11, dtype=np.uint8)[11:]
    target = line_aligned(nbytes, shift)
    copy_spans(
        *(np.array([value], np.int64) for value in (target.ctypes.data, source.ctypes.data, nbytes))
    )
    assert np.array_equal(target, source)


def test_spans_copied_by_address_equal_their_sources_and_touch_nothing_else() -> None:
    rng = np.random.default_rng(7)
    shapes = [(STREAM_MIN_BYTES * 2 + 13, 0), (STREAM_MIN_BYTES, 8), (1, 0), (777, 3), (0, 0)]
    sources = [rng.integers(0, 256, n, dtype=np.uint8) for n, _ in shapes]
    targets = [line_aligned(n + 16, shift) for n, shift in shapes]  # 16 bytes of margin

    copy_spans(
        np.array([t.ctypes.data for t in targets], np.int64),
        np.array([s.ctypes.data for s in sources], np.int64),
        np.array([s.size for s in sources], np.int64),
    )

    for source, target in zip(sources, targets, strict=True):
        assert np.array_equal(target[: source.size], source)
        assert not target[source.size :].any()
