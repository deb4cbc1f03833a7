"""Read a job file (YAML or JSON; tidemill, Kubeflow or Volcano form) into a TrainingJob.

Every problem found is reported at once, each as ``path: message``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tidemill.api.cluster import ClusterSpec
from tidemill.api.data import DataSpec, StageSource
from tidemill.api.errors import FieldError, SpecError, from_validation_error
from tidemill.api.job import TrainingJob, spec_field_names

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader when PyYAML was built with it: several times faster."""
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SQLITE_FILE = re.compile(r"^(sqlite(?:\+\w+)?:///)(?!/|:memory:)(.+)$")


def _fast_json(text: str) -> Any | None:
    """JSON bodies (what the CLI and SDK send) skip the YAML parser entirely."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None  # let the YAML parser report it, with a line number


def parse_document(text: str, source: str = "<input>") -> dict[str, Any]:
    """Parse YAML (JSON is a subset) into a mapping, with line numbers on syntax errors."""
    try:
        document = _fast_json(text)
        if document is None:
            document = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError.single(source, f"{where}not valid YAML: {problem}") from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else type(document).__name__
        raise SpecError.single(source, f"expected a mapping with apiVersion/kind, got {kind}")
    return document


def job_from_document(document: dict[str, Any]) -> TrainingJob:
    """Validate a parsed document; Kubeflow and Volcano kinds are converted first."""
    from tidemill.api.compat import convert_foreign

    native = convert_foreign(document)
    try:
        return TrainingJob.model_validate(native)
    except ValidationError as exc:
        raise from_validation_error(exc, spec_field_names()) from None


def load_job_text(text: str, source: str = "<input>") -> TrainingJob:
    return job_from_document(parse_document(text, source))


def load_job_file(path: str | Path) -> TrainingJob:
    """Load a job file; relative ``workingDir`` values and data locations resolve against
    the file's folder."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise SpecError.single(str(path), f"cannot read the file: {exc.strerror}") from None
    base = file.resolve().parent
    job = with_working_dirs(load_job_text(text, str(path)), base)
    if job.spec.data is None:
        return job
    data = with_data_paths(job.spec.data, base)
    return job.model_copy(update={"spec": job.spec.model_copy(update={"data": data})})


def with_working_dirs(job: TrainingJob, base: Path) -> TrainingJob:
    """Pin every role's working directory to an absolute path (the job file's folder)."""
    roles = {
        name: role.model_copy(update={"working_dir": str(base / (role.working_dir or "."))})
        for name, role in job.spec.roles.items()
    }
    return job.model_copy(update={"spec": job.spec.model_copy(update={"roles": roles})})


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


def load_cluster_file(path: str | Path) -> ClusterSpec:
    file = Path(path)
    try:
        document = parse_document(file.read_text(), str(path))
    except OSError as exc:
        raise SpecError.single(str(path), f"cannot read the file: {exc.strerror}") from None
    try:
        return ClusterSpec.model_validate(document)
    except ValidationError as exc:
        known = set(ClusterSpec.model_fields) | {"gpus", "gpuModel", "labels", "count"}
        raise from_validation_error(exc, known) from None


__all__ = [
    "FieldError",
    "SpecError",
    "job_from_document",
    "load_cluster_file",
    "load_job_file",
    "load_job_text",
    "parse_document",
    "with_data_paths",
]
