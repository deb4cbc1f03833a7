"""Table snapshots taken at a cut, for durable checkpoints: written by each PS replica
into ``<folder>`` while training goes on, and read back in order (a full snapshot, then
the deltas after it) when a job restores.

A replica writes ``<table>.shard<k>.npz`` per table (a :class:`TableExport`: full, or
the rows changed after the previous snapshot's cut plus the ids evicted since), then
``shard-<k>.json`` LAST: its files with sizes and CRC-32s. A snapshot is complete when
every replica's ``shard-<k>.json`` is there and its files match it; the folder may be
any fsspec URL the checkpoints use.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec

from tidemill.ps._export import TableExport
from tidemill.ps._snapshot import export_bytes, export_from_bytes

SIDECAR = "shard-{index}.json"


@dataclass(frozen=True)
class CutFile:
    name: str
    size: int
    crc32: str


@dataclass(frozen=True)
class ShardSnapshot:
    """What one replica wrote for one cut (its ``shard-<k>.json``)."""

    shard: int
    step: int
    since: int | None
    """None: full; else the rows changed after the cut of step ``since``."""
    files: tuple[CutFile, ...]


def write_snapshot(
    folder: str, shard: int, step: int, since: int | None, exports: dict[str, TableExport]
) -> ShardSnapshot:
    """Write every table's export, then the sidecar naming them; returns the sidecar."""
    files = []
    for table, export in exports.items():
        name = f"{table}.shard{shard}.npz"
        data = export_bytes(export)
        with fsspec.open(f"{folder.rstrip('/')}/{name}", "wb") as handle:
            handle.write(data)
        files.append(CutFile(name, len(data), f"{zlib.crc32(data):08x}"))
    snapshot = ShardSnapshot(shard, step, since, tuple(files))
    with fsspec.open(f"{folder.rstrip('/')}/{SIDECAR.format(index=shard)}", "w") as handle:
        handle.write(json.dumps(asdict(snapshot)))
    return snapshot


def read_snapshot(folder: str, shard: int) -> dict[str, TableExport]:
    """The tables a replica wrote at ``folder``, checked against its sidecar; ValueError
    naming the file when one is missing, short or corrupt."""
    where = f"{folder.rstrip('/')}/{SIDECAR.format(index=shard)}"
    try:
        with fsspec.open(where, "r") as handle:
            sidecar = json.loads(handle.read())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: no complete snapshot of PS replica {shard} ({exc})") from exc
    exports: dict[str, TableExport] = {}
    for item in sidecar["files"]:
        path = f"{folder.rstrip('/')}/{item['name']}"
        with fsspec.open(path, "rb") as handle:
            data = handle.read()
        if len(data) != item["size"] or f"{zlib.crc32(data):08x}" != item["crc32"]:
            raise ValueError(f"{path}: size or CRC-32 differs from {where}; the file is damaged")
        export = export_from_bytes(data)
        exports[export.name] = export
    return exports


def snapshot_shards(folder: str) -> list[int]:
    """The replica indexes whose complete snapshots are in ``folder``."""
    fs, root = fsspec.core.url_to_fs(folder)
    names = [Path(path).name for path in fs.glob(f"{root.rstrip('/')}/shard-*.json")]
    return sorted(int(name.removeprefix("shard-").removesuffix(".json")) for name in names)
