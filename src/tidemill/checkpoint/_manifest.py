"""``manifest.json``: the last file of a checkpoint, and the only one read to list it.

A step directory without it is a write that did not finish. It records what loading
needs to decide cheaply (the model's keys, shapes and dtypes, the optimizer's group
sizes, every file's size and checksum) and what people and the job master want to see
without reading tensors (step, time, data positions, small extras).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

FORMAT = "tidemill.checkpoint"
VERSION = 1
MANIFEST_NAME = "manifest.json"

T = TypeVar("T")


class FileInfo(NamedTuple):
    """One file of a checkpoint, relative to its step directory."""

    size: int
    checksum: str


class TensorInfo(NamedTuple):
    """A model tensor's shape and dtype name (``float32``), for mismatch messages."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint holds; ``to_json``/``from_json`` are its stored form.

    ``time`` is unix seconds at the end of the write, ``duration_s`` how long the write
    took (DCP save and checksums), ``size_bytes`` the sum of ``files``. ``data`` and
    ``extras`` are copies of the committed ones when they are JSON of at most 64 KiB,
    else None (the checkpoint itself always holds them in full). ``optimizer_groups``
    lists the number of parameters in each optimizer parameter group, None when the
    state had no optimizer.
    """

    step: int
    world_size: int
    time: float
    job: str | None
    duration_s: float
    size_bytes: int
    checksum_algorithm: str
    files: dict[str, FileInfo]
    model: dict[str, TensorInfo]
    optimizer_groups: tuple[int, ...] | None
    data: dict[str, Any] | None
    extras: Any
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": self.version,
                "step": self.step,
                "world_size": self.world_size,
                "time": self.time,
                "job": self.job,
                "duration_s": self.duration_s,
                "size_bytes": self.size_bytes,
                "checksum_algorithm": self.checksum_algorithm,
                "files": {name: info._asdict() for name, info in self.files.items()},
                "model": {key: [list(t.shape), t.dtype] for key, t in self.model.items()},
                "optimizer_groups": None
                if self.optimizer_groups is None
                else list(self.optimizer_groups),
                "data": self.data,
                "extras": self.extras,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse and check a stored manifest; ValueError names the field that is wrong."""
        try:
            raw = json.loads(text)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise ValueError(f"field 'format': expected {FORMAT!r}, got {raw.get('format')!r}")
        version = _get(raw, "version", _count)
        if version > VERSION:
            raise ValueError(
                f"field 'version': {version} is newer than this tidemill reads ({VERSION});"
                " upgrade tidemill to load it"
            )
        return cls(
            step=_get(raw, "step", _count),
            world_size=_get(raw, "world_size", _count),
            time=_get(raw, "time", _number),
            job=_get(raw, "job", _optional_text),
            duration_s=_get(raw, "duration_s", _number),
            size_bytes=_get(raw, "size_bytes", _count),
            checksum_algorithm=_get(raw, "checksum_algorithm", _text),
            files={
                name: FileInfo(
                    _get(info, "size", _count, f"files.{name}"),
                    _get(info, "checksum", _text, f"files.{name}"),
                )
                for name, info in _get(raw, "files", _object).items()
            },
            model={
                key: _tensor_info(value, f"model.{key}")
                for key, value in _get(raw, "model", _object).items()
            },
            optimizer_groups=_get(raw, "optimizer_groups", _optional_counts),
            data=_get(raw, "data", _optional_object),
            extras=_get(raw, "extras", _any),
            version=version,
        )


def _get(raw: Any, name: str, check: Callable[[Any, str], T], parent: str | None = None) -> T:
    where = f"{parent}.{name}" if parent else name
    if not isinstance(raw, dict):
        raise ValueError(f"field {parent!r}: expected an object, got {raw!r}")
    if name not in raw:
        raise ValueError(f"field {where!r} is missing")
    return check(raw[name], where)


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"field {where!r}: expected an integer >= 0, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"field {where!r}: expected a number, got {value!r}")
    return float(value)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"field {where!r}: expected a non-empty string, got {value!r}")
    return value


def _optional_text(value: Any, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"field {where!r}: expected an object, got {value!r}")
    return value


def _optional_object(value: Any, where: str) -> dict[str, Any] | None:
    return None if value is None else _object(value, where)


def _optional_counts(value: Any, where: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"field {where!r}: expected a list of integers or null, got {value!r}")
    return tuple(_count(item, f"{where}[{i}]") for i, item in enumerate(value))


def _any(value: Any, where: str) -> Any:
    return value


def _tensor_info(value: Any, where: str) -> TensorInfo:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], list)):
        raise ValueError(f"field {where!r}: expected [shape list, dtype], got {value!r}")
    shape = tuple(_count(size, f"{where}.shape") for size in value[0])
    return TensorInfo(shape, _text(value[1], f"{where}.dtype"))
