"""Read a job file (YAML or JSON; tidemill, Kubeflow or Volcano form) into a TrainingJob.

Every problem found is reported at once, each as ``path: message``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tidemill.api.checkpoint import CheckpointSpec, is_url
from tidemill.api.cluster import ClusterSpec
from tidemill.api.data import DataSpec, StageSource
from tidemill.api.document import check_document, parse_document
from tidemill.api.errors import FieldError, SpecError, from_validation_error
from tidemill.api.job import CRD_API_VERSION, KIND, TrainingJob, spec_field_names
from tidemill.api.limits import MAX_DOCUMENT_BYTES, shown

STDIN = "-"
"""A job file named ``-`` is read from standard input (``envsubst < job.yaml | tidemill
submit -``); its relative paths resolve against the current folder."""
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SQLITE_FILE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/|:memory:)(.+)$")
_SERVER_FIELDS = ("status",)
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "annotations",
    "ownerReferences",
    "finalizers",
    "generateName",
    "selfLink",
)
"""What the Kubernetes API adds to a custom object (or kubectl to what it applies), none of
which the job model holds."""


def job_from_document(document: dict[str, Any]) -> TrainingJob:
    """Validate a parsed document; Kubeflow and Volcano kinds are converted first, and a
    ``tidemill.io/v1`` custom object (``kubectl get tj X -o yaml``) loses its server fields."""
    from tidemill.api.compat import convert_foreign

    check_document(document)
    if document.get("apiVersion") == CRD_API_VERSION:
        document = without_server_fields(document)
    native = convert_foreign(document)
    try:
        return TrainingJob.model_validate(native)
    except ValidationError as exc:
        raise from_validation_error(exc, spec_field_names()) from None


def job_from_custom_object(obj: dict[str, Any]) -> TrainingJob:
    """Read a TrainingJob custom object as the Kubernetes API returns it.

    Anything other than a ``tidemill.io/v1`` TrainingJob is refused with the usual
    ``path: message`` errors, as is a spec the model refuses.
    """
    problems = [
        FieldError(
            field, f"{shown(obj.get(field))} is not a TrainingJob custom object's; use {want!r}"
        )
        for field, want in (("apiVersion", CRD_API_VERSION), ("kind", KIND))
        if obj.get(field) != want
    ]
    if problems:
        raise SpecError(problems)
    return job_from_document(obj)


def without_server_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """The custom object without what Kubernetes keeps beside the job (status, uid, ...)."""
    document = {key: value for key, value in obj.items() if key not in _SERVER_FIELDS}
    metadata = document.get("metadata")
    if isinstance(metadata, dict):
        document["metadata"] = {
            key: value for key, value in metadata.items() if key not in _SERVER_METADATA
        }
    return document


def load_job_text(text: str, source: str = "<input>") -> TrainingJob:
    return job_from_document(parse_document(text, source))


def load_job_file(path: str | Path) -> TrainingJob:
    """Load a job file; relative ``workingDir`` values and data locations resolve against
    the file's folder."""
    file = Path(path)
    text = read_document_text(file)
    base = file.resolve().parent
    job = with_working_dirs(load_job_text(text, str(path)), base)
    update: dict[str, object] = {}
    if job.spec.data is not None:
        update["data"] = with_data_paths(job.spec.data, base)
    if job.spec.checkpoint is not None:
        update["checkpoint"] = with_checkpoint_paths(job.spec.checkpoint, base)
    if job.spec.tensorboard is not None:
        folder = Path(job.spec.tensorboard.dir).expanduser()
        update["tensorboard"] = job.spec.tensorboard.model_copy(
            update={"dir": os.path.normpath(base / folder)}
        )
    return job.model_copy(update={"spec": job.spec.model_copy(update=update)})


def with_working_dirs(job: TrainingJob, base: Path) -> TrainingJob:
    """Pin every role's working directory to an absolute path (the job file's folder)."""
    roles = {
        name: role.model_copy(update={"working_dir": str(base / (role.working_dir or "."))})
        for name, role in job.spec.roles.items()
    }
    return job.model_copy(update={"spec": job.spec.model_copy(update={"roles": roles})})


def with_checkpoint_paths(checkpoint: CheckpointSpec, base: Path) -> CheckpointSpec:
    """Pin a relative checkpoint ``dir`` and ``resumeFrom`` to ``base`` (URLs are kept)."""

    def pinned(location: str | None) -> str | None:
        if location is None or is_url(location):
            return location
        return os.path.normpath(base / Path(location).expanduser())

    return checkpoint.model_copy(
        update={"dir": pinned(checkpoint.dir), "resume_from": pinned(checkpoint.resume_from)}
    )


def with_data_paths(data: DataSpec, base: Path) -> DataSpec:
    """Pin relative data locations to ``base`` (the job file's folder), as ``workingDir``
    is: the master and the replicas run in other folders, where a relative path would
    name another file or none.

    Resolved: a local ``parquet.path`` (URLs such as ``s3://`` or ``file://`` are kept),
    and in an iceberg ``catalog`` mapping a SQLite ``uri`` (``sqlite:///cat.db`` becomes
    ``sqlite:////abs/cat.db``) and a ``warehouse`` written as a bare path or a relative
    ``file://`` URL (both become ``file:///abs/...``).
    """

    def absolute(path: str) -> str:
        return str(base / Path(path).expanduser())

    def resolved(source: StageSource) -> StageSource:
        if source.parquet is not None and not _URL.match(source.parquet.path):
            parquet = source.parquet.model_copy(update={"path": absolute(source.parquet.path)})
            return source.model_copy(update={"parquet": parquet})
        if source.iceberg is None or not isinstance(source.iceberg.catalog, dict):
            return source
        catalog = dict(source.iceberg.catalog)
        sqlite = _SQLITE_FILE.match(catalog.get("uri", ""))
        if sqlite:
            catalog["uri"] = sqlite[1] + absolute(sqlite[2])
        warehouse = catalog.get("warehouse")
        if warehouse is not None:
            local = warehouse.removeprefix("file://")
            if not _URL.match(local) and not local.startswith("/"):
                catalog["warehouse"] = "file://" + absolute(local)
        iceberg = source.iceberg.model_copy(update={"catalog": catalog})
        return source.model_copy(update={"iceberg": iceberg})

    stages = [
        stage.model_copy(update={"sources": [resolved(source) for source in stage.sources]})
        for stage in data.stages
    ]
    return data.model_copy(update={"stages": stages})


def read_document_text(file: Path) -> str:
    """The file's text (standard input for :data:`STDIN`); reading stops past
    :data:`MAX_DOCUMENT_BYTES` (a device such as /dev/zero, or a huge file, is refused
    instead of read to the end)."""
    try:
        if str(file) == STDIN:
            data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        else:
            with file.open("rb") as stream:
                data = stream.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise SpecError.single(str(file), f"cannot read the file: {exc.strerror}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise SpecError.single(
            str(file),
            f"the file is larger than {MAX_DOCUMENT_BYTES:,} bytes (1 MiB), the most a "
            "document may be; job and cluster files are a few KiB: move data out of it",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError.single(
            str(file), f"byte {exc.start} is not UTF-8 text; save the file as UTF-8"
        ) from None


def load_cluster_file(path: str | Path) -> ClusterSpec:
    file = Path(path)
    document = parse_document(read_document_text(file), str(path))
    check_document(document)
    try:
        return ClusterSpec.model_validate(document)
    except ValidationError as exc:
        known = set(ClusterSpec.model_fields) | {
            *("gpus", "gpuModel", "labels", "extended", "count", "numa", "levels", "cpus"),
        }
        raise from_validation_error(exc, known) from None


__all__ = [
    "FieldError",
    "SpecError",
    "job_from_custom_object",
    "job_from_document",
    "load_cluster_file",
    "load_job_file",
    "load_job_text",
    "parse_document",
    "with_data_paths",
    "without_server_fields",
]
