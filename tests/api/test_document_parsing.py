"""Parsing costs what the text weighs: alias bombs, deep nesting and huge files are refused
quickly, as ``path: message``, and ordinary anchors and merge keys keep working."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.limits import MAX_DOCUMENT_BYTES
from tidemill.api.loader import (
    load_cluster_file,
    load_job_file,
    load_job_text,
    parse_document,
)

JOB = "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: ok}\n"


def alias_bomb(levels: int = 9, fan_out: int = 9, into: str = "apiVersion") -> str:
    """A "billion laughs": each level is a list of ``fan_out`` aliases to the one below."""
    lines = [f"l0: &l0 [{','.join(['lol'] * fan_out)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{','.join([f'*l{level - 1}'] * fan_out)}]")
    return "\n".join(lines) + f"\n{into}: *l{levels - 1}\n"


def message_of(text: str) -> str:
    with pytest.raises(SpecError) as caught:
        load_job_text(text, "job.yaml")
    [error] = caught.value.errors
    return str(error)


def test_a_billion_laughs_is_refused_in_well_under_100_ms() -> None:
    bomb = alias_bomb()
    assert len(bomb) < 450

    started = time.perf_counter()
    message = message_of(bomb)
    elapsed_s = time.perf_counter() - started

    assert elapsed_s < 0.1
    assert message.startswith("job.yaml: aliases expand this document to 926,177,115 nodes")
    assert "aliases may add at most 10,000" in message


def test_a_bomb_hidden_in_a_merge_key_is_refused_too() -> None:
    bomb = alias_bomb(levels=6, fan_out=12, into="x").replace("x: *l5", "x: {<<: {a: *l5}}")

    assert "aliases expand this document" in message_of(JOB + bomb)


def test_an_alias_inside_its_own_anchor_is_refused_not_followed_forever() -> None:
    assert message_of(JOB + "spec: &loop {roles: *loop}\n") == (
        "job.yaml: line 4: an alias inside its own anchor makes the document infinite; "
        "refer only to anchors outside the alias"
    )


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    text = """
x-defaults: &defaults
  command: [python, train.py]
  resources: {cpu: 1, memory: 1Gi}
  env: &env {SEED: "7"}
apiVersion: tidemill/v1
kind: TrainingJob
metadata: {name: shared}
spec:
  mode: ps
  roles:
    ps: {<<: *defaults, replicas: 2}
    worker: {<<: *defaults, replicas: 4, env: *env}
"""
    document = parse_document(text)
    document.pop("x-defaults")

    job = load_job_text(json.dumps(document))

    assert job.spec.roles["ps"].command == job.spec.roles["worker"].command
    assert (job.spec.roles["ps"].replicas, job.spec.roles["worker"].env) == (2, {"SEED": "7"})


DEEP = {
    "10,000 nested JSON objects": '{"a":' * 10_000 + "1" + "}" * 10_000,
    "10,000 nested JSON lists in a field": '{"a":' + "[" * 10_000 + "]" * 10_000 + "}",
    "10,000 nested YAML flow lists": "a: " + "[" * 10_000 + "]" * 10_000,
    "100 nested JSON lists (under the stack, over the limit)": (
        '{"spec":' + "[" * 100 + "]" * 100 + "}"
    ),
    "100 nested YAML block mappings": (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(100)) + "  " * 100 + "end: 1\n"
    ),
}


@pytest.mark.parametrize("text", DEEP.values(), ids=DEEP.keys())
def test_deep_nesting_is_a_clear_error_not_a_recursion_error(text: str) -> None:
    message = message_of(text)

    assert "nest" in message
    assert len(message) < 300


def test_a_document_over_the_size_limit_is_refused_with_its_size() -> None:
    text = JOB + "# " + "x" * MAX_DOCUMENT_BYTES + "\n"

    assert message_of(text).startswith(f"job.yaml: the document is {len(text):,} bytes; at most")


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    text = JOB + "# " + "€" * (MAX_DOCUMENT_BYTES // 3 + 1) + "\n"

    assert "bytes; at most 1,048,576 bytes (1 MiB)" in message_of(text)


def test_validate_reads_no_more_of_a_huge_file_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(JOB + "# " + "x" * (3 * MAX_DOCUMENT_BYTES) + "\n")

    with pytest.raises(SpecError) as caught:
        load_job_file(path)

    assert str(caught.value) == (
        f"{path}: the file is larger than 1,048,576 bytes (1 MiB), the most a document may "
        "be; job and cluster files are a few KiB: move data out of it"
    )


def test_an_endless_device_is_refused_instead_of_read_forever() -> None:
    with pytest.raises(SpecError, match="larger than 1,048,576 bytes"):
        load_job_file("/dev/zero")


def test_a_file_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(JOB.encode() + b"# caf\xe9\n")

    with pytest.raises(SpecError) as caught:
        load_job_file(path)

    at = len(JOB) + len("# caf")
    assert str(caught.value) == f"{path}: byte {at} is not UTF-8 text; save the file as UTF-8"


def test_json_with_nan_and_infinity_literals_is_refused_at_the_field() -> None:
    text = '{"apiVersion": "tidemill/v1", "spec": {"priority": NaN, "ttlSecondsAfterFinished": '
    text += "1e400}}"

    with pytest.raises(SpecError) as caught:
        load_job_text(text)

    assert [str(e) for e in caught.value.errors] == [
        "spec.priority: nan is not a finite number; write an ordinary number such as 1 or 0.5",
        "spec.ttlSecondsAfterFinished: inf is not a finite number; write an ordinary number "
        "such as 1 or 0.5",
    ]


def test_cluster_files_get_the_same_bounds(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(alias_bomb(into="nodes"))

    with pytest.raises(SpecError, match="aliases expand this document"):
        load_cluster_file(path)


def test_yaml_text_with_a_lone_surrogate_is_refused_not_a_crash() -> None:
    text = JOB + "spec: {queue: \ud800}\n"
    at = len(JOB) + len("spec: {queue: ")

    assert message_of(text) == (
        f"job.yaml: character {at} is a lone surrogate, not valid UTF-8 text; send "
        "well-formed Unicode"
    )
