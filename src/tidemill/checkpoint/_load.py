"""Reading one checkpoint back: fit check, file checks, DCP load, then a ``Committed``.

Order matters for cost: the fit check reads only the manifest; sizes come from one
listing; then checksums and the DCP load each read every byte, side by side. A
checkpoint that fails any check after the fit check is :class:`Unusable` (the store
tries the previous one); one that does not fit raises :class:`CheckpointMismatch`
(nothing older will fit either).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from tidemill.checkpoint import _dcp
from tidemill.checkpoint._checksum import ALGORITHM, file_checksum
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
    if where.local:
        with ThreadPoolExecutor(1, thread_name_prefix="tidemill-checksum") as pool:
            verified = pool.submit(verify_checksums, where, manifest)
            entries, failure = _load_entries(where)
            verified.result()
    else:
        # Other file systems may share one handle per file between readers (fsspec's
        # memory:// does): verify first, then load.
        verify_checksums(where, manifest)
        entries, failure = _load_entries(where)
    if failure is not None:
        raise Unusable(f"DCP could not read it: {_dcp.failure_text(failure)}") from failure
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


def _load_entries(where: Location) -> tuple[dict[str, Any], BaseException | None]:
    """DCP's entries, or the failure that stopped the load (reported after the checksums)."""
    try:
        return _dcp.load(where), None
    except _dcp.FAILURES as exc:
        return {}, exc


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


def verify_checksums(where: Location, manifest: Manifest) -> None:
    """Unusable unless every file's checksum is the manifest's.

    Runs beside the DCP load, which reads the same bytes: ``zlib.crc32`` and file reads
    release the GIL, so with a spare core verification adds little to the restore time.
    A mismatch wins over whatever the load made of the damaged bytes.
    """
    for name, info in sorted(manifest.files.items()):
        try:
            checksum = file_checksum(where.fs, where.child(name).path)
        except OSError as exc:
            raise Unusable(f"file {name} could not be read: {exc}") from exc
        if checksum != info.checksum:
            raise Unusable(
                f"file {name} has {ALGORITHM} {checksum}, the manifest says {info.checksum}"
                " (its bytes changed after the write)"
            )
