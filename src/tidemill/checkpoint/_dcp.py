"""Calls into PyTorch Distributed Checkpoint (DCP) for one process, and its errors.

Rank 0 writes the whole committed state alone (``no_dist``: no collective runs on the
writer thread while training uses the process group). The private entry points
``_save_state_dict``/``_load_state_dict`` are the ones ``dcp.save``/``dcp.load`` call
after a warning that a single-process save is assumed; here that is the intent, so the
warning would only be noise in every job log. Loading without a template uses
``_EmptyStateDictLoadPlanner``, as ``torch.distributed.checkpoint.format_utils`` does.
"""

from __future__ import annotations

import errno
import io
import pickle
from types import SimpleNamespace
from typing import IO, Any, cast

import torch
from torch import _weights_only_unpickler
from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.checkpoint.state_dict_saver import _save_state_dict
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future
from torch.serialization import _load, _open_zipfile_reader

from tidemill.checkpoint._aligned import AlignedFileSystemWriter
from tidemill.checkpoint._url import Location

FAILURES = (Exception, CheckpointException)
"""What a DCP call raises when it fails: ``CheckpointException`` is a ``BaseException``."""


def save(location: Location, entries: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Write ``entries`` as a DCP checkpoint into the directory ``location``; returns
    ``{file name: (CRC-32, size)}`` of the files whose checksum was taken as they were
    written (local directories; the others must be read back)."""
    if not location.local:
        remote = FsspecWriter(location.url, sync_files=True)
        _save_state_dict(entries, storage_writer=remote, no_dist=True)
        return {}
    writer = AlignedFileSystemWriter(location.path, sync_files=True)
    _save_state_dict(entries, storage_writer=writer, no_dist=True)
    return writer.written


METADATA_FILE = ".metadata"
"""The file where DCP keeps its metadata (``FileSystemWriter``'s name for it)."""

Pieces = dict[str, dict[int, torch.UntypedStorage]]
"""A checkpoint's data files in memory: file name -> {offset: the bytes from there on}."""


def read_metadata(data: torch.UntypedStorage) -> Metadata:
    """DCP's metadata from the bytes of its file (unpickled, as ``FileSystemReader`` does)."""
    metadata = pickle.loads(_view(data))
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{METADATA_FILE} holds a {type(metadata).__name__}, not DCP metadata")
    return metadata


def entry_starts(metadata: Metadata) -> dict[str, set[int]]:
    """Where in which file each stored entry starts: how to cut the files into pieces."""
    starts: dict[str, set[int]] = {}
    for stored in (metadata.storage_data or {}).values():
        starts.setdefault(stored.relative_path, set()).add(stored.offset)
    return starts


def load(metadata: Metadata, pieces: Pieces) -> dict[str, Any]:
    """Every entry of the DCP checkpoint whose metadata and file pieces are given.

    Tensors are views into those pieces, not copies (see :class:`_PieceReader`).
    """
    reader = _PieceReader(metadata, pieces)
    entries: dict[str, Any] = {}
    planner = _EmptyStateDictLoadPlanner()  # type: ignore[no-untyped-call]
    _load_state_dict(entries, storage_reader=reader, planner=planner, no_dist=True)
    entries.update(reader.tensors)
    return entries


class _PieceReader(StorageReader):
    """A DCP ``StorageReader`` over checkpoint files already in memory (and verified).

    ``FileSystemReader`` reads each tensor with ``torch.load`` and copies it into a
    template the planner allocated: every byte read, then copied once more. Here each
    tensor is what ``torch.load(..., mmap=True)`` would make of its piece, a view into
    the bytes it was stored in (``torch.serialization._load`` with the piece as the
    ``overall_storage``). A checkpoint this package wrote holds each tensor whole, in
    one file, without stream transforms; anything else is refused rather than loaded
    wrong. The round-trip tests fail if the torch internals used here change.
    """

    def __init__(self, metadata: Metadata, pieces: Pieces) -> None:
        super().__init__()
        self.metadata = metadata
        self.pieces = pieces
        self.tensors: dict[str, torch.Tensor] = {}
        self.storage_data: dict[Any, Any] = {}

    def reset(self, checkpoint_id: Any = None) -> None:
        self.storage_data = {}

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        return self.metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.storage_data = dict(metadata.storage_data or {})

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return False

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        for item in plan.items:
            name = item.dest_index.fqn
            stored = self.storage_data[item.storage_index]
            if stored.transform_descriptors or any(item.storage_offsets):
                raise ValueError(
                    f"{name}: stored transformed or in pieces, which a tidemill checkpoint never is"
                )
            data = self.pieces.get(stored.relative_path, {}).get(stored.offset)
            if data is None or stored.length > data.nbytes():
                raise ValueError(f"{name}: not found at {stored.relative_path}:{stored.offset}")
            piece = _view(data)[: stored.length]
            if item.type == LoadItemType.BYTE_IO:
                planner.load_bytes(item, io.BytesIO(piece))
                continue
            try:
                tensor = _parse(piece, data[: stored.length], _DENSE_TENSOR)
            except pickle.UnpicklingError:
                tensor = _parse(piece, data[: stored.length], _weights_only_unpickler)
            if not isinstance(tensor, torch.Tensor) or tensor.shape != item.lengths:
                raise ValueError(f"{name}: stored as a piece of a tensor")
            self.tensors[name] = tensor
        done: Future[None] = Future()
        done.set_result(None)
        return done


def _parse(piece: memoryview, data: torch.UntypedStorage, pickle_module: Any) -> Any:
    """What ``torch.load`` makes of the archive ``piece``, its tensors viewing ``data``."""
    with _open_zipfile_reader(cast(IO[bytes], _BufferFile(piece))) as archive:
        return _load(  # type: ignore[no-untyped-call]
            archive, "cpu", pickle_module, overall_storage=data, encoding="utf-8"
        )


class _DenseTensorUnpickler(pickle.Unpickler):
    """The C unpickler, allowed only the globals ``torch.save`` writes for a dense tensor.

    torch's ``weights_only`` unpickler is pure Python: 0.2 s of a 1 GB restore (640
    entries) went to it. Anything else (a quantized or sparse tensor) fails here with
    ``UnpicklingError`` and is parsed again with torch's own.
    """

    ALLOWED = frozenset({("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")})

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a dense tensor")
        return super().find_class(module, name)


_DENSE_TENSOR = SimpleNamespace(Unpickler=_DenseTensorUnpickler)
"""A ``pickle_module`` for ``torch.serialization._load``: it subclasses ``Unpickler``
(storage classes are resolved there, by name, before ``find_class`` is asked)."""


class _BufferFile(io.RawIOBase):
    """A read-only, seekable file over a memoryview, for torch's zip reader."""

    def __init__(self, data: memoryview) -> None:
        super().__init__()
        self._data = data
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}
        self._position = base[whence] + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        count = max(0, min(len(buffer), len(self._data) - self._position))
        buffer[:count] = self._data[self._position : self._position + count]
        self._position += count
        return count


def _view(data: torch.UntypedStorage) -> memoryview:
    """The bytes of ``data`` as a memoryview (no copy)."""
    return torch.empty(0, dtype=torch.uint8).set_(data).numpy().data


def failure_text(exc: BaseException) -> str:
    """The OS error behind a DCP failure, else the innermost error, as one line, with
    what to do about the common OS errors."""
    cause = root_cause(exc)
    if isinstance(cause, OSError):
        hint = _HINTS.get(cause.errno or 0)
        return f"{cause}" + (f"; {hint}" if hint else "")
    return f"{type(cause).__name__}: {cause}"


_HINTS = {
    errno.ENOSPC: "free space there, or keep fewer checkpoints",
    errno.EDQUOT: "free space there, or keep fewer checkpoints",
    errno.EACCES: "make the directory writable for this user, or choose another location",
    errno.EPERM: "make the directory writable for this user, or choose another location",
    errno.EROFS: "the filesystem is read-only; choose another location",
    errno.ENOTDIR: "a part of the path is a file; choose a path under a directory",
}


def root_cause(exc: BaseException) -> BaseException:
    """The ``OSError`` behind ``exc`` if there is one, else the innermost error.

    DCP wraps what its writer threads raise (``CheckpointException`` holds them per
    rank), and ``torch.save`` reports a full disk as a zip writer position mismatch
    with the ``OSError`` as its context; the person reading the job event wants the
    ``[Errno 28] No space left on device``.
    """
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if current in seen:
            continue
        seen.append(current)
        if isinstance(current, OSError):
            return current
        failures = getattr(current, "failures", None)
        if isinstance(failures, dict):
            pending += [f[0] for f in failures.values() if isinstance(f, tuple) and f]
            pending += [f for f in failures.values() if isinstance(f, BaseException)]
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return seen[-1]
