"""Durable checkpoints under one URL: ``{url}/step-{step:012d}/``, the manifest written last."""

from __future__ import annotations

import logging
import posixpath
import time

import torch

from tidemill.checkpoint import _dcp
from tidemill.checkpoint._checksum import ALGORITHM, file_checksum
from tidemill.checkpoint._errors import CheckpointError
from tidemill.checkpoint._fit import tensor_info
from tidemill.checkpoint._layout import to_entries
from tidemill.checkpoint._listing import (
    PARTIAL,
    STEP_DIR,
    Listing,
    list_steps,
    read_listing,
    remove,
    step_name,
    stored_files,
    write_manifest,
)
from tidemill.checkpoint._load import Loaded, Skipped, Unusable, load_checkpoint
from tidemill.checkpoint._manifest import FileInfo, Manifest
from tidemill.checkpoint._url import Location, locate, parse_checkpoint_url
from tidemill.runtime.elastic_state import Committed, small_json

log = logging.getLogger(__name__)


class CheckpointStore:
    """Saves committed states as DCP checkpoints under ``url`` and finds the newest usable one.

    Only one process writes to a URL (rank 0's writer thread). ``keep`` valid
    checkpoints stay; older ones, and unfinished writes older than the newest valid
    one, are deleted after each successful save.

    Example::

        >>> import tempfile, torch
        >>> folder = tempfile.TemporaryDirectory()
        >>> from tidemill.checkpoint import CheckpointStore
        >>> from tidemill.runtime import ElasticState
        >>> model = torch.nn.Linear(2, 1)
        >>> state = ElasticState(model, torch.optim.SGD(model.parameters(), lr=0.1))
        >>> state.step = 10
        >>> state.commit()
        >>> store = CheckpointStore(folder.name, keep=2)
        >>> store.save(state.committed, job="demo").step
        10
        >>> loaded = store.load_newest(model, state.optimizer)
        >>> state.adopt(loaded.committed)
        >>> [listing.name for listing in store.list()]
        ['step-000000000010']
        >>> folder.cleanup()
    """

    def __init__(self, url: str, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: a checkpoint store keeps at least 1 checkpoint")
        self.url = parse_checkpoint_url(url)
        self.keep = keep
        self._root = locate(self.url)

    def save(self, committed: Committed, job: str | None = None) -> Manifest:
        """Write ``committed`` durably and return its manifest; CheckpointError on failure.

        Synchronous: the :class:`CheckpointWriter` thread calls it. A failed save
        removes what it wrote and touches no earlier checkpoint. A step that already
        has a valid checkpoint is not written again.
        """
        if committed.step < 0:
            raise CheckpointError(self.url, f"step {committed.step}: only steps >= 0 are saved")
        name = step_name(committed.step)
        where = self._root.child(name)
        try:
            existing = read_listing(where, name)
            if existing.manifest is not None:
                return existing.manifest
            remove(where)
            manifest = self._write(where, committed, job)
        except _dcp.FAILURES as exc:
            left = remove(where)
            cleanup = f" (removing the partial write failed too: {left})" if left else ""
            raise CheckpointError(
                where.url, f"saving step {committed.step} failed: {_dcp.failure_text(exc)}{cleanup}"
            ) from exc
        self._rotate(keep_name=name)
        return manifest

    def list(self) -> list[Listing]:
        """Every step directory, newest first, with its manifest or its problem."""
        try:
            return list_steps(self._root)
        except OSError as exc:
            raise CheckpointError(self.url, f"listing checkpoints failed: {exc}") from exc

    def load_newest(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> Loaded:
        """The newest checkpoint that loads, passing over damaged or partial ones.

        Raises CheckpointMismatch when the newest intact checkpoint does not fit
        ``model`` or ``optimizer``. Neither is modified; adopt the result with
        ``ElasticState.adopt(loaded.committed)``. ``committed`` is None when no
        checkpoint was usable: ``skipped`` then says why for each.
        """
        skipped: list[Skipped] = []
        for listing in self.list():
            if listing.manifest is None:
                skipped.append(Skipped(listing.name, listing.problem or PARTIAL))
                continue
            try:
                committed = load_checkpoint(
                    self._root.child(listing.name), listing.manifest, model, optimizer
                )
            except Unusable as exc:
                log.warning("checkpoint %s skipped: %s", listing.url, exc)
                skipped.append(Skipped(listing.name, str(exc)))
                continue
            return Loaded(committed, listing.manifest, skipped)
        return Loaded(None, None, skipped)

    def load(
        self, name_or_url: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
    ) -> Loaded:
        """One checkpoint: a step directory name in this store, or the URL of any step directory.

        Unlike :meth:`load_newest` nothing is passed over: a damaged or partial
        checkpoint raises CheckpointError, one that does not fit CheckpointMismatch.
        """
        if STEP_DIR.match(name_or_url):
            where = self._root.child(name_or_url)
        else:
            where = locate(parse_checkpoint_url(name_or_url))
        name = posixpath.basename(where.path.rstrip("/"))
        listing = _listing_of(where, name)
        if listing.manifest is None:
            raise CheckpointError(where.url, listing.problem or PARTIAL)
        try:
            committed = load_checkpoint(where, listing.manifest, model, optimizer)
        except Unusable as exc:
            raise CheckpointError(where.url, str(exc)) from exc
        return Loaded(committed, listing.manifest, [])

    def _write(self, where: Location, committed: Committed, job: str | None) -> Manifest:
        started = time.monotonic()
        written = _dcp.save(where, to_entries(committed))

        def checksum(name: str, size: int) -> str:
            """Taken as it was written, unless the file is not what was written; else read."""
            crc, written_size = written.get(name, ("", -1))
            return crc if written_size == size else file_checksum(where.fs, where.child(name).path)

        files = {
            name: FileInfo(size, checksum(name, size))
            for name, size in sorted(stored_files(where).items())
        }
        optimizer = committed.optimizer
        manifest = Manifest(
            step=committed.step,
            world_size=committed.world_size,
            time=round(time.time(), 3),
            job=job,
            duration_s=round(time.monotonic() - started, 3),
            size_bytes=sum(info.size for info in files.values()),
            checksum_algorithm=ALGORITHM,
            files=files,
            model={key: tensor_info(value) for key, value in committed.model.items()},
            optimizer_groups=None
            if optimizer is None
            else tuple(len(group["params"]) for group in optimizer["param_groups"]),
            data=small_json(committed.data),
            extras=small_json(committed.extras),
        )
        return write_manifest(where, manifest)

    def _rotate(self, keep_name: str) -> None:
        """Delete valid checkpoints beyond ``keep`` and partial writes older than the newest
        valid one; never the one just written. Failures are logged: the save succeeded."""
        try:
            listings = self.list()
        except CheckpointError as exc:
            log.warning("checkpoint rotation skipped: %s", exc)
            return
        valid = [listing for listing in listings if listing.manifest is not None]
        doomed = valid[self.keep :]
        if valid:
            newest = valid[0].step
            doomed += [x for x in listings if x.problem == PARTIAL and x.step < newest]
        for listing in doomed:
            if listing.name != keep_name:
                problem = remove(self._root.child(listing.name))
                if problem:
                    log.warning("could not delete old checkpoint %s: %s", listing.url, problem)


def _listing_of(where: Location, name: str) -> Listing:
    listing = read_listing(where, name)
    if listing.manifest is not None or listing.problem != PARTIAL:
        return listing
    try:
        exists = where.fs.exists(where.path)
        inner = list_steps(where) if exists else []
    except OSError as exc:
        return Listing(name, where.url, None, f"unreadable: {exc}")
    if not exists:
        return Listing(name, where.url, None, "nothing is stored at this URL")
    if inner:
        return Listing(
            name,
            where.url,
            None,
            f"this holds checkpoints, not one checkpoint: give one of them ({inner[0].url})"
            " or use this URL as the checkpoint directory to load the newest",
        )
    return listing
