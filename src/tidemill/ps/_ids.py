"""Validation of embedding ids at the door: every kernel trusts its ids to be int64 in 0 .. 2**63-1.

Ids come from user data (feature hashes, Python lists, pandas columns), so the checks
name the first bad index and say what would be right instead of letting a negative id
probe the hash index or a float id be truncated silently.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

INT64_MAX = 2**63 - 1
_RANGE = "ids must be integers in 0 .. 2**63-1"


def as_ids(values: object, field: str = "ids") -> npt.NDArray[np.int64]:
    """``values`` as a contiguous 1-D int64 array, or ValueError naming the first bad id.

    Any integer dtype whose values fit is accepted (int8 .. uint64, Python ints); floats,
    bools and other objects are refused, as are negative ids and ids above 2**63-1.

    >>> as_ids([3, 0, 2**63 - 1]).tolist()
    [3, 0, 9223372036854775807]
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{field}: expected a 1-D sequence of ids, got shape {array.shape}")
    if array.size == 0:
        return np.empty(0, np.int64)
    kind = array.dtype.kind
    if kind == "O" or (kind not in "iu" and not isinstance(values, np.ndarray)):
        # a Python sequence with an id past int64 becomes float64 or object: check each
        return _object_ids(np.array(values, dtype=object), field)
    if kind not in "iu":
        raise ValueError(
            f"{field}: dtype {array.dtype} is not an integer dtype; {_RANGE} "
            "(any integer dtype that fits is accepted; floats and bools are refused)"
        )
    if kind == "i":
        negative = np.flatnonzero(array < 0)
        if negative.size:
            first = int(negative[0])
            raise ValueError(f"{field}[{first}]: {int(array[first])} is negative; {_RANGE}")
    elif array.dtype.itemsize == 8:
        too_big = np.flatnonzero(array > np.uint64(INT64_MAX))
        if too_big.size:
            first = int(too_big[0])
            raise ValueError(f"{field}[{first}]: {int(array[first])} is above 2**63-1; {_RANGE}")
    return np.ascontiguousarray(array, dtype=np.int64)


def _object_ids(array: npt.NDArray[np.object_], field: str) -> npt.NDArray[np.int64]:
    for index, value in enumerate(array.tolist()):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ValueError(f"{field}[{index}]: {value!r} is not an integer; {_RANGE}")
        if int(value) < 0:
            raise ValueError(f"{field}[{index}]: {int(value)} is negative; {_RANGE}")
        if int(value) > INT64_MAX:
            raise ValueError(f"{field}[{index}]: {int(value)} is above 2**63-1; {_RANGE}")
    return np.array(array.tolist(), dtype=np.int64)


def as_int(value: object, field: str, minimum: int = 0) -> int:
    """``value`` as a Python int in ``minimum .. 2**63-1``, or ValueError naming ``field``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{field}: expected an integer, got {value!r}")
    if not minimum <= int(value) <= INT64_MAX:
        raise ValueError(f"{field}: {int(value)} is out of range; expected {minimum} .. 2**63-1")
    return int(value)
