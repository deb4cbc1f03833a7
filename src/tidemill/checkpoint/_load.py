"""Reading one checkpoint back: fit check, file checks, DCP load, then a ``Committed``.

Order matters for cost: the fit check reads only the manifest; sizes come from one
listing; then every file is read once into memory and checksummed as it is read, and
the DCP load parses the verified bytes in place (the tensors it returns are views into
them, which become the committed copy that ``adopt`` copies into the model). A
checkpoint that fails any check after the fit check is :class:`Unusable` (the store
tries the previous one); one that does not fit raises :class:`CheckpointMismatch`
(nothing older will fit either).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch.distributed.checkpoint.metadata import Metadata

from tidemill.checkpoint import _dcp
from tidemill.checkpoint._checksum import ALGORITHM
from tidemill.checkpoint._files import read_pieces
from tidemill.checkpoint._fit import check_model, check_optimizer, tensor_info
from tidemill.checkpoint._layout import from_entries, model_entries
from tidemill.checkpoint._listing import stored_files
from tidemill.checkpoint._manifest import Manifest
from tidemill.checkpoint._url import Location
from tidemill.runtime.elastic_state import Committed


@dataclass(frozen=True)
class Skipped:
    """A newer checkpoint that was not loaded, and why (for the job's events)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Loaded:
    """What a load found: the state to ``ElasticState.adopt`` (None when no checkpoint
    was usable), its manifest, and every newer checkpoint passed over on the way."""

    committed: Committed | None
    manifest: Manifest | None
    skipped: list[Skipped]


class Unusable(Exception):
    """This checkpoint cannot be loaded (damaged, incomplete, unreadable); the message says why."""


def load_checkpoint(
    where: Location,
    manifest: Manifest,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
) -> Committed:
    """The state stored at ``where``, shaped for ``model`` and ``optimizer`` (not applied)."""
    check_model(where.url, manifest, model)
    check_optimizer(where.url, manifest, optimizer)
    verify_sizes(where, manifest)
    metadata, pieces = read_verified(where, manifest)
    try:
        entries = _dcp.load(metadata, pieces)
    except _dcp.FAILURES as exc:
        raise Unusable(f"DCP could not read it: {_dcp.failure_text(exc)}") from exc
    loaded = {key: tensor_info(value) for key, value in model_entries(entries).items()}
    if loaded != manifest.model:
        raise Unusable("its DCP metadata lists other model tensors than its manifest")
    reference = model.state_dict()
    try:
        committed = from_entries(entries, list(reference))
    except Exception as exc:
        raise Unusable(
            f"its step, data, extras or optimizer could not be decoded:"
            f" {type(exc).__name__}: {exc} (a class pickled into extras that no longer"
            " imports?)"
        ) from exc
    placed = {
        key: value if value.device == reference[key].device else value.to(reference[key].device)
        for key, value in committed.model.items()
    }
    return dataclasses.replace(
        committed, model=placed, optimizer=None if optimizer is None else committed.optimizer
    )


def verify_sizes(where: Location, manifest: Manifest) -> None:
    """Unusable unless every file the manifest lists is there with its size (one listing)."""
    if manifest.checksum_algorithm != ALGORITHM:
        raise Unusable(
            f"checksum algorithm {manifest.checksum_algorithm!r} is not one this tidemill"
            f" verifies ({ALGORITHM}); load it with the tidemill version that wrote it"
        )
    try:
        sizes = stored_files(where)
    except OSError as exc:
        raise Unusable(f"its files could not be listed: {exc}") from exc
    for name, info in sorted(manifest.files.items()):
        if name not in sizes:
            raise Unusable(f"file {name} is missing")
        if sizes[name] != info.size:
            raise Unusable(
                f"file {name} has {sizes[name]} bytes, the manifest says {info.size}"
                " (truncated or rewritten after the write)"
            )


def read_verified(where: Location, manifest: Manifest) -> tuple[Metadata, _dcp.Pieces]:
    """DCP's metadata and every data file, in memory, each byte read once; Unusable unless
    every file the manifest lists has its checksum. Nothing is parsed before its file
    is verified (DCP's metadata first: it says where the data files' entries start)."""
    if _dcp.METADATA_FILE not in manifest.files:
        raise Unusable(f"its manifest lists no {_dcp.METADATA_FILE} file (not a DCP checkpoint)")
    metadata_file = _read_verified(where, manifest, _dcp.METADATA_FILE, set())
    try:
        metadata = _dcp.read_metadata(metadata_file[0])
    except Exception as exc:
        raise Unusable(f"its DCP metadata could not be read: {type(exc).__name__}: {exc}") from exc
    starts = _dcp.entry_starts(metadata)
    pieces = {
        name: _read_verified(where, manifest, name, starts.get(name, set()))
        for name in sorted(manifest.files)
        if name != _dcp.METADATA_FILE
    }
    return metadata, pieces


def _read_verified(
    where: Location, manifest: Manifest, name: str, starts: set[int]
) -> dict[int, torch.UntypedStorage]:
    info = manifest.files[name]
    try:
        pieces, checksum = read_pieces(where, name, info.size, starts)
    except OSError as exc:
        raise Unusable(f"file {name} could not be read: {exc}") from exc
    if checksum != info.checksum:
        raise Unusable(
            f"file {name} has {ALGORITHM} {checksum}, the manifest says {info.checksum}"
            " (its bytes changed after the write)"
        )
    return pieces
