"""Hard limits: a job that asks for what nothing could hold is refused at the door, with
the field and the limit, instead of stalling the scheduler or failing every GET."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.job import TrainingJob
from tidemill.api.limits import (
    MAX_ARG_BYTES,
    MAX_ARGV_ITEMS,
    MAX_PODS_PER_JOB,
    MAX_REPLICA_ARGV_ENV_BYTES,
    MAX_REPLICAS_PER_ROLE,
)
from tidemill.api.loader import job_from_document, load_job_text

Change = Callable[[dict[str, Any]], None]


def document() -> dict[str, Any]:
    return {
        "apiVersion": "tidemill/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "poison", "labels": {"team": "ads"}},
        "spec": {
            "roles": {
                "worker": {
                    "replicas": 2,
                    "command": [sys.executable, "-c", "print('ok')"],
                    "env": {"SEED": "7"},
                }
            }
        },
    }


def changed(change: Change) -> dict[str, Any]:
    result = copy.deepcopy(document())
    change(result)
    return result


def spec(**fields: Any) -> Change:
    return lambda d: d["spec"].update(fields)


def worker(**fields: Any) -> Change:
    return lambda d: d["spec"]["roles"]["worker"].update(fields)


def resources(**amounts: Any) -> Change:
    return worker(resources=amounts)


def labels(**values: Any) -> Change:
    return lambda d: d["metadata"].update(labels=values)


def errors_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        job_from_document(doc)
    return [str(error) for error in caught.value.errors]


REFUSED: dict[str, tuple[Change, str]] = {
    "replicas beyond int64 (the snapshot would build one object per pod)": (
        worker(replicas=2**63),
        "spec.roles.worker.replicas: 9223372036854775808 is beyond the 64-bit integer range",
    ),
    "more replicas in one role than the per-role cap": (
        worker(replicas=MAX_REPLICAS_PER_ROLE + 1),
        f"spec.roles.worker.replicas: Input should be less than or equal to "
        f"{MAX_REPLICAS_PER_ROLE}",
    ),
    "a maxReplicas beyond the per-role cap": (
        worker(minReplicas=1, maxReplicas=10**6),
        f"spec.roles.worker.maxReplicas: Input should be less than or equal to "
        f"{MAX_REPLICAS_PER_ROLE}",
    ),
    "roles that may grow past the per-job cap together": (
        lambda d: d["spec"].update(
            mode="ps",
            roles={
                "worker": {"replicas": 1, "maxReplicas": 10_000, "command": ["x"]},
                "ps": {"replicas": 1, "maxReplicas": 10_000, "command": ["x"]},
                "evaluator": {"replicas": 1, "maxReplicas": 10_000, "command": ["x"]},
            },
        ),
        f"spec: the job may grow to 30,000 replicas (10,000 worker + 10,000 ps + 10,000 "
        f"evaluator); at most {MAX_PODS_PER_JOB:,} per job",
    ),
    "a NUL byte in the command": (
        worker(command=["python", "-c", "print(1)\x00"]),
        "spec.roles.worker.command.2: contains a NUL character at character 8; remove it",
    ),
    "an escape character in an argument": (
        worker(args=["--name", "a\x1bb"]),
        "spec.roles.worker.args.1: contains the control character \\x1b at character 1; "
        "tab and line breaks are the only control characters allowed here",
    ),
    "an env value of 200 KiB": (
        worker(env={"BLOB": "x" * 200 * 2**10}),
        f"spec.roles.worker.env.BLOB: is 204,800 bytes; at most {MAX_ARG_BYTES:,} (64 KiB) "
        "per argument or env value",
    ),
    "a NUL byte in an env value": (
        worker(env={"A": "x\x00"}),
        "spec.roles.worker.env.A: contains a NUL character at character 1",
    ),
    "an argument of 100 KiB": (
        worker(args=["y" * 100 * 2**10]),
        "spec.roles.worker.args.0: is 102,400 bytes; at most 65,536 (64 KiB)",
    ),
    "too many arguments": (
        worker(args=["a"] * MAX_ARGV_ITEMS),
        f"spec.roles.worker: command and args have {MAX_ARGV_ITEMS + 3:,} items together; "
        f"at most {MAX_ARGV_ITEMS:,}",
    ),
    "argv and env over 256 KiB together": (
        worker(env={f"V{i}": "z" * 60 * 2**10 for i in range(5)}),
        f"at most {MAX_REPLICA_ARGV_ENV_BYTES:,} (256 KiB) per replica",
    ),
    "an env value that is a mapping": (
        worker(env={"A": {"nested": 1}}),
        "spec.roles.worker.env: env names and values are text, not dict",
    ),
    "a control character in the working directory": (
        worker(workingDir="/tmp/a\nb"),
        "spec.roles.worker.workingDir: the working directory contains the control character "
        "\\x0a at character 6",
    ),
    "a control character in the image": (
        worker(image="python:3\t"),
        "spec.roles.worker.image: the image contains the control character \\x09",
    ),
    "ttlSecondsAfterFinished of 1e400 (inf once parsed)": (
        spec(ttlSecondsAfterFinished=float("inf")),
        "spec.ttlSecondsAfterFinished: inf is not a finite number",
    ),
    "ttlSecondsAfterFinished of 1e300 (a float beyond int64)": (
        spec(ttlSecondsAfterFinished=1e300),
        "spec.ttlSecondsAfterFinished: 1e+300 is beyond the 64-bit range every field fits in",
    ),
    "a priority of 2**70": (
        spec(priority=2**70),
        "spec.priority: 1180591620717411303424 is beyond the 64-bit integer range",
    ),
    "an activeDeadlineSeconds of nan": (
        spec(activeDeadlineSeconds=float("nan")),
        "spec.activeDeadlineSeconds: nan is not a finite number",
    ),
    "a maxRestarts below int64": (
        worker(maxRestarts=-(2**64)),
        "spec.roles.worker.maxRestarts: -18446744073709551616 is beyond the 64-bit integer range",
    ),
    "restartBackoffSeconds of infinity": (
        spec(restartBackoffSeconds=float("inf")),
        "spec.restartBackoffSeconds: inf is not a finite number",
    ),
    "restartBackoffSeconds beyond the backoff cap": (
        spec(restartBackoffSeconds=1e9),
        "spec.restartBackoffSeconds: Input should be less than or equal to 300",
    ),
    'memory "1e400Gi"': (
        resources(memory="1e400Gi"),
        "spec.roles.worker.resources.memory: '1e400Gi' is not a memory size",
    ),
    "memory of 2**62 bytes": (
        resources(memory=2**62),
        "spec.roles.worker.resources.memory: 4611686018427387904 is more memory than any "
        "machine has; at most 1Ei",
    ),
    "negative memory written as a number": (
        resources(memory=-1),
        "spec.roles.worker.resources.memory: memory must not be negative",
    ),
    'cpu "inf"': (
        resources(cpu="inf"),
        "spec.roles.worker.resources.cpu: 'inf' is not a cpu quantity",
    ),
    "cpu infinity as a number (JSON 1e400)": (
        resources(cpu=float("inf")),
        "spec.roles.worker.resources.cpu: inf is not a finite number",
    ),
    "cpu of a 400-digit string": (
        resources(cpu="9" * 400),
        "...9' is not a finite cpu quantity",
    ),
    "cpu beyond a million cores": (
        resources(cpu=2e6),
        "spec.roles.worker.resources.cpu: 2000000.0 is more cpu than any machine has; at "
        "most 1,000,000 cores",
    ),
    'gpu "nan"': (
        resources(gpu="nan"),
        "spec.roles.worker.resources.gpu: 'nan' is not a number of GPUs",
    ),
    "gpu beyond any node": (
        resources(gpu=4096),
        "spec.roles.worker.resources.gpu: 4096 GPUs is more than any node has; at most 1024",
    ),
    "a lone surrogate in a label value": (
        labels(team="\ud800"),
        "metadata.labels.team: is not valid UTF-8 text: a lone surrogate \\ud800 at "
        "character 0; send well-formed Unicode",
    ),
    "a lone surrogate in a label key": (
        labels(**{"t\udc00": "x"}),
        "metadata.labels.'t\\udc00': the field name is not valid UTF-8 text",
    ),
    "a label value with a space": (
        labels(team="ads team"),
        "metadata.labels: label 'team' has the invalid value 'ads team'",
    ),
    "a label value over 63 characters": (
        labels(team="a" * 64),
        "metadata.labels: label 'team' has the invalid value",
    ),
    "a label key with a bad prefix": (
        labels(**{"Example.com/team": "ads"}),
        "metadata.labels: label key 'Example.com/team' has an invalid prefix",
    ),
    "a lone surrogate in the name": (
        lambda d: d["metadata"].update(name="a\ud800"),
        "metadata.name: is not valid UTF-8 text: a lone surrogate",
    ),
    "a lone surrogate in a data source path": (
        lambda d: d["spec"].update(
            data={"stages": [{"name": "s", "sources": [{"parquet": {"path": "\udfff"}}]}]}
        ),
        "spec.data.stages.0.sources.0.parquet.path: is not valid UTF-8 text",
    ),
    "a queue name that is not a DNS label": (
        spec(queue="Ads Queue"),
        "spec.queue: 'Ads Queue' is not a valid queue name",
    ),
    "a long name is cut in the message, not echoed whole": (
        lambda d: d["metadata"].update(name="n" * 100_000),
        "...n' is not a valid job name",
    ),
}


@pytest.mark.parametrize(("change", "expected"), REFUSED.values(), ids=REFUSED.keys())
def test_poison_jobs_are_refused_with_the_field_and_the_limit(
    change: Change, expected: str
) -> None:
    errors = errors_of(changed(change))

    assert any(expected in error for error in errors), errors
    assert all(len(error) < 500 for error in errors)


ACCEPTED: dict[str, Change] = {
    "a script with tabs and line breaks in python -c": worker(
        command=["python", "-c", "import time\nfor i in range(3):\n\ttime.sleep(0)"]
    ),
    "replicas at the per-role cap": worker(replicas=MAX_REPLICAS_PER_ROLE),
    "an env value of exactly 64 KiB": worker(env={"BLOB": "x" * MAX_ARG_BYTES}),
    "int64 extremes for priority": spec(priority=-(2**63)),
    "Unicode text outside the ASCII range": worker(args=["--greeting", "grüß dich, 世界 🚀"]),
    "Kubernetes labels with a prefix and an empty value": labels(
        **{"example.com/team": "ads", "tier": ""}
    ),
    "a kubernetes env list with numbers": worker(env=[{"name": "SEED", "value": 7}]),
}


@pytest.mark.parametrize("change", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_ordinary_jobs_near_the_limits_are_accepted(change: Change) -> None:
    assert isinstance(job_from_document(changed(change)), TrainingJob)


def test_every_problem_is_reported_at_once_and_messages_stay_short() -> None:
    doc = changed(worker(replicas=2**64, env={"A": "\x00" * 2**20}, args=["\ud800"] * 100))

    errors = errors_of(doc)

    assert "spec.roles.worker.replicas" in errors[0]
    assert len(errors) <= 20
    assert all(len(error) < 400 for error in errors)


def test_a_refused_job_never_echoes_a_surrogate_into_its_own_message() -> None:
    doc = changed(labels(**{"\ud800" * 3: "\udfff"}))

    for error in errors_of(doc):
        error.encode("utf-8")


def test_yaml_and_json_forms_of_a_poison_job_say_the_same() -> None:
    doc = changed(worker(replicas=2**63))
    as_yaml = (
        "apiVersion: tidemill/v1\nkind: TrainingJob\nmetadata: {name: poison}\nspec:\n"
        "  roles:\n    worker: {replicas: 9223372036854775808, command: [x]}\n"
    )

    with pytest.raises(SpecError) as from_yaml:
        load_job_text(as_yaml)
    with pytest.raises(SpecError) as from_json:
        load_job_text(json.dumps(doc))

    assert str(from_yaml.value.errors[0]) == str(from_json.value.errors[0])


def test_a_hundred_thousand_bad_items_are_reported_by_the_first_fifty() -> None:
    errors = errors_of(changed(worker(args=[[]] * 100_000)))

    assert len(errors) == 51
    assert errors[0] == "spec.roles.worker.args.0: Input should be a valid string"
    assert errors[-1] == "... and 99,950 more problems"
