"""``spec.data`` in job files: each refusal as ``path: message``, the plan as replicas
get it (``TIDEMILL_DATA``), and relative data locations pinned to the job file's folder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import load_catalog

from tidemill.api.data import DataSpec, StageSource
from tidemill.api.errors import SpecError
from tidemill.api.loader import load_job_file
from tidemill.controller.launcher import data_env
from tidemill.data import plan_shards, read_shard

HEAD = """\
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: ctr}
spec:
  roles:
    worker: {replicas: 2, command: [python, train.py]}
  data:
"""


def write_job(folder: Path, data: str) -> Path:
    """A job file in ``folder`` whose ``spec.data`` is ``data`` (YAML, any indent)."""
    path = folder / "job.yaml"
    path.write_text(HEAD + textwrap.indent(textwrap.dedent(data), "    "))
    return path


def errors_of(tmp_path: Path, data: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_job_file(write_job(tmp_path, data))
    return [str(error) for error in caught.value.errors]


BAD = {
    "a kafka source starting at a timestamp without startTime": (
        """
        stages:
          - {name: live, sources: [{kafka: {bootstrap: "b:9092", topic: c, start: timestamp}}]}
        """,
        "spec.data.stages.0.sources.0.kafka: start: timestamp needs startTime "
        "(e.g. 2026-11-01T00:00:00Z)",
    ),
    "two stages with the same name": (
        """
        stages:
          - {name: backfill, sources: [{parquet: {path: a/}}]}
          - {name: backfill, sources: [{parquet: {path: b/}}]}
        """,
        "spec.data: stage names must be unique; ['backfill'] appear twice",
    ),
    "a stage before the last that never ends": (
        """
        stages:
          - {name: live, sources: [{kafka: {bootstrap: "b:9092", topic: clicks}}]}
          - {name: replay, sources: [{parquet: {path: a/}}]}
        """,
        "spec.data: stage 'live' never ends (its kafka source 'clicks' has end: never), so "
        "the stages after it would never run; give that source end: timestamp or end: "
        "offsets, or make it the last stage",
    ),
    "a source of two kinds": (
        """
        stages:
          - name: mixed
            sources: [{parquet: {path: a/}, kafka: {bootstrap: "b:9092", topic: clicks}}]
        """,
        "spec.data.stages.0.sources.0: a source needs exactly one of parquet, iceberg, kafka "
        "(got parquet, kafka)",
    ),
    "a source weighing nothing": (
        """
        stages:
          - {name: a, sources: [{parquet: {path: a/}}, {parquet: {path: b/}, weight: 0}]}
        """,
        "spec.data.stages.0.sources.1.weight: Input should be greater than 0",
    ),
    "a misspelt stage field": (
        """
        stages:
          - {name: a, epoch: 2, sources: [{parquet: {path: a/}}]}
        """,
        "spec.data.stages.0.epoch: unknown field; did you mean 'epochs'?",
    ),
    "a misspelt source field": (
        """
        stages:
          - {name: a, sources: [{parquet: {path: a/, colums: [user]}}]}
        """,
        "spec.data.stages.0.sources.0.parquet.colums: unknown field; did you mean 'columns'?",
    ),
    "an iceberg-only field on a parquet source": (
        """
        stages:
          - {name: a, sources: [{parquet: {path: a/, filter: "day > 1"}}]}
        """,
        "spec.data.stages.0.sources.0.parquet.filter: unknown field here; 'filter' belongs "
        "in spec.data.stages.<i>.sources.<j>.iceberg",
    ),
}


@pytest.mark.parametrize(("data", "expected"), BAD.values(), ids=BAD.keys())
def test_a_bad_data_plan_is_refused_with_the_fields_path(
    tmp_path: Path, data: str, expected: str
) -> None:
    assert errors_of(tmp_path, data) == [expected]


def test_an_iceberg_filter_that_does_not_parse_is_named_with_an_example(
    tmp_path: Path,
) -> None:
    [error] = errors_of(
        tmp_path,
        """
        stages:
          - {name: a, sources: [{iceberg: {table: ads.clicks, filter: "day >= "}}]}
        """,
    )

    assert error == (
        "spec.data.stages.0.sources.0.iceberg.filter: cannot parse row filter 'day >= ' at "
        'character 1; write comparisons joined by and/or, e.g. "day >= 20261101 and '
        "country = 'NL'\""
    )


def test_every_problem_in_the_plan_is_reported_at_once(tmp_path: Path) -> None:
    errors = errors_of(
        tmp_path,
        """
        shufle: {seed: 1}
        stages:
          - {name: a, sources: [{parquet: {path: a/}, weight: -1}]}
          - {name: b, sources: [{kafka: {bootstrap: "b:9092", topic: c, start: committed}}]}
        """,
    )

    assert errors == [
        "spec.data.stages.0.sources.0.weight: Input should be greater than 0",
        "spec.data.stages.1.sources.0.kafka: start: committed needs groupId, the group "
        "whose offsets to use",
        "spec.data.shufle: unknown field; did you mean 'shuffle'?",
    ]


PLAN = """
shuffle: {seed: 7, bufferRows: 4096}
rowsPerShard: 5000
stages:
  - name: backfill
    epochs: 2
    sources:
      - {iceberg: {catalog: prod, table: ads.clicks, filter: "day >= 20261101",
                   asOf: "2026-11-02T00:00:00Z"}}
  - name: catch-up
    sources:
      - {name: recent, kafka: {bootstrap: "b:9092", topic: clicks, start: timestamp,
                              startTime: "2026-11-02T00:00:00Z", end: offsets,
                              endOffsets: {clicks: {0: 100, 1: 120}}}, priority: 1}
      - {parquet: {path: "s3://bucket/replay/", columns: [user, label]}, weight: 0.25}
  - {name: online, sources: [{kafka: {bootstrap: "b:9092", topics: [clicks, views]}}]}
"""


def test_tidemill_data_is_compact_job_file_json_that_reads_back_as_the_plan(
    tmp_path: Path,
) -> None:
    job = load_job_file(write_job(tmp_path, PLAN))
    assert job.spec.data is not None

    text = data_env(job, "worker")["TIDEMILL_DATA"]

    assert DataSpec.model_validate_json(text) == job.spec.data
    assert text == json.dumps(json.loads(text), separators=(",", ":"))
    stages = json.loads(text)["stages"]
    assert stages[1]["sources"][0]["kafka"]["endOffsets"] == {"clicks": {"0": 100, "1": 120}}
    assert "asOf" in stages[0]["sources"][0]["iceberg"]
    assert "name" not in stages[0]["sources"][0]


def test_tidemill_data_goes_to_the_master_chief_and_workers_only(tmp_path: Path) -> None:
    job = load_job_file(write_job(tmp_path, PLAN))
    without = job.model_copy(update={"spec": job.spec.model_copy(update={"data": None})})
    roles = ("master", "chief", "worker", "ps", "evaluator")

    given = [role for role in roles if "TIDEMILL_DATA" in data_env(job, role)]

    assert given == ["master", "chief", "worker"]
    assert data_env(without, "worker") == {}


def test_relative_data_locations_resolve_against_the_job_files_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    job = load_job_file(
        write_job(
            project,
            f"""
            stages:
              - name: a
                sources:
                  - {{parquet: {{path: "data/*.parquet"}}}}
                  - {{parquet: {{path: "{tmp_path}/elsewhere/"}}}}
                  - {{parquet: {{path: "s3://bucket/clicks/"}}}}
                  - {{parquet: {{path: "file:///srv/clicks/"}}}}
                  - {{iceberg: {{table: ads.a, catalog: {{uri: "sqlite:///cat.db",
                                                          warehouse: "file://wh"}}}}}}
                  - {{iceberg: {{table: ads.b, catalog: {{uri: "sqlite:///../cat.db",
                                                          warehouse: "wh"}}}}}}
                  - {{iceberg: {{table: ads.c, catalog: {{uri: "sqlite:////srv/cat.db",
                                                          warehouse: "file:///srv/wh"}}}}}}
                  - {{iceberg: {{table: ads.d, catalog: {{uri: "postgresql://db/ice",
                                                          warehouse: "s3://bucket/wh"}}}}}}
                  - {{iceberg: {{table: ads.e, catalog: prod}}}}
            """,
        )
    )
    assert job.spec.data is not None

    specs = [source.spec for source in job.spec.data.stages[0].sources]
    locations = [getattr(spec, "path", None) or getattr(spec, "catalog", None) for spec in specs]

    assert locations == [
        f"{project}/data/*.parquet",
        f"{tmp_path}/elsewhere",
        "s3://bucket/clicks/",
        "file:///srv/clicks/",
        {"uri": f"sqlite:///{project}/cat.db", "warehouse": f"file://{project}/wh"},
        {"uri": f"sqlite:///{project}/../cat.db", "warehouse": f"file://{project}/wh"},
        {"uri": "sqlite:////srv/cat.db", "warehouse": "file:///srv/wh"},
        {"uri": "postgresql://db/ice", "warehouse": "s3://bucket/wh"},
        "prod",
    ]


def test_a_job_files_relative_data_is_found_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "wh").mkdir()
    rows = pa.table({"user": ["a", "b", "c"], "label": [0, 1, 0]})
    pq.write_table(rows, project / "data" / "part-0.parquet")
    catalog = load_catalog(
        "default", uri=f"sqlite:///{project}/cat.db", warehouse=f"file://{project}/wh"
    )
    catalog.create_namespace("ads")
    catalog.create_table("ads.clicks", rows.schema).append(rows)
    path = write_job(
        project,
        """
        stages:
          - name: both
            sources:
              - {parquet: {path: data/}}
              - {iceberg: {table: ads.clicks, catalog: {uri: "sqlite:///cat.db",
                                                        warehouse: "file://wh"}}}
        """,
    )
    monkeypatch.chdir(tmp_path)

    job = load_job_file(path)
    assert job.spec.data is not None

    assert [rows_in(source) for source in job.spec.data.stages[0].sources] == [3, 3]


def rows_in(source: StageSource) -> int:
    """Rows a worker reads from ``source``: every planned shard, read to the end."""
    total = 0
    for shard in plan_shards(source):
        with read_shard(shard) as reader:
            total += sum(batch.num_rows for batch in reader)
    return total
