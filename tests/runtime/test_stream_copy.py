"""Non-temporal byte copies give exactly numpy's result, aligned or not, with any tail."""

from __future__ import annotations

import numpy as np
import pytest

from tidemill.runtime._stream_copy import LINE, STREAM_MIN_BYTES, copy_into


def line_aligned(nbytes: int, shift: int = 0) -> np.ndarray:
    raw = np.zeros(nbytes + 2 * LINE, dtype=np.uint8)
    start = (-raw.ctypes.data) % LINE + shift
    return raw[start : start + nbytes]


@pytest.mark.parametrize(
    ("nbytes", "shift"),
    [
        (STREAM_MIN_BYTES, 0),  # whole lines, streamed
        (STREAM_MIN_BYTES * 3 + 37, 0),  # streamed, then a tail of 37 bytes
        (STREAM_MIN_BYTES * 2 + 5, 8),  # the target off a line: numpy's copy
        (1000, 0),  # small: numpy's copy
    ],
    ids=["lines", "lines-and-tail", "unaligned", "small"],
)
def test_a_copy_equals_its_source_byte_for_byte(nbytes: int, shift: int) -> None:
    source = np.random.default_rng(nbytes).integers(0, 256, nbytes + 11, dtype=np.uint8)[11:]
    target = line_aligned(nbytes, shift)
    copy_into(target, source)
    assert np.array_equal(target, source)
