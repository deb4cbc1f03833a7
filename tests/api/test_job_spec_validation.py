"""Job files as people write them: good ones load, bad ones get exact ``path: message`` lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.api.errors import SpecError
from tidemill.api.job import Mode, RestartPolicy
from tidemill.api.loader import job_from_document, load_job_file, load_job_text

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_FILES = sorted((ROOT / "examples").rglob("*.yaml"))


def job_yaml(roles: str, *, name: str = "ok", mode: str = "allreduce", extra: str = "") -> str:
    return (
        "apiVersion: tidemill/v1\nkind: TrainingJob\n"
        f"metadata: {{name: {name}}}\nspec:\n  mode: {mode}\n{extra}  roles:\n{roles}\n"
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_job_text(text, "job.yaml")
    return [str(error) for error in caught.value.errors]


def test_the_examples_folder_has_the_files_these_tests_expect() -> None:
    names = {path.relative_to(ROOT / "examples").as_posix() for path in EXAMPLE_FILES}
    assert {"digits_ddp/job.yaml", "kubeflow/pytorchjob.yaml", "kubeflow/tfjob.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_example_job_file_loads(path: Path) -> None:
    job = load_job_file(path)

    assert job.spec.roles
    for role in job.spec.roles.values():
        assert role.runs_ps_server or role.argv[0] == "python"
        assert role.working_dir == str(path.parent)


def test_the_digits_example_is_two_allreduce_workers_that_restart_on_failure() -> None:
    job = load_job_file(ROOT / "examples" / "digits_ddp" / "job.yaml")

    worker = job.spec.roles["worker"]
    assert (job.metadata.name, job.spec.mode) == ("digits-ddp", Mode.ALLREDUCE)
    assert list(job.spec.roles) == ["worker"]
    assert (worker.replicas, worker.resources.cpu, worker.resources.memory) == (2, 1.0, 2**30)
    assert worker.command == ["python", "train.py"]
    assert (worker.restart_policy, worker.max_restarts) == (RestartPolicy.ON_FAILURE, 2)


GOOD = {
    "an elastic worker with replicas inside its bounds": (
        "    worker: {replicas: 2, minReplicas: 1, maxReplicas: 4, command: [python, t.py]}",
        "allreduce",
    ),
    "half a gpu shares a device": (
        "    worker: {command: [x], resources: {gpu: 0.5, cpu: 500m, memory: 512Mi}}",
        "allreduce",
    ),
    "ps mode with parameter servers, a chief and an evaluator": (
        "    ps: {replicas: 2, command: [x]}\n    chief: {command: [x]}\n"
        "    worker: {replicas: 3, command: [x]}\n    evaluator: {command: [x]}",
        "ps",
    ),
    "env written the Kubernetes way as a list of name/value": (
        "    worker:\n      command: [x]\n      env: [{name: SEED, value: '7'}]",
        "allreduce",
    ),
}


@pytest.mark.parametrize(("roles", "mode"), GOOD.values(), ids=GOOD.keys())
def test_good_job_files_load(roles: str, mode: str) -> None:
    job = load_job_text(job_yaml(roles, mode=mode))

    assert job.spec.mode == mode


BAD = {
    "a misspelt field gets a did-you-mean hint": (
        job_yaml("    worker: {replicas: 2, comand: [python, t.py], command: [x]}"),
        ["spec.roles.worker.comand: unknown field; did you mean 'command'?"],
    ),
    "a misspelt spec field is caught at its own level": (
        job_yaml("    worker: {command: [x]}", extra="  priorty: 3\n"),
        ["spec.priorty: unknown field; did you mean 'priority'?"],
    ),
    "a cpu with an unknown unit": (
        job_yaml("    worker: {command: [x], resources: {cpu: 2x}}"),
        ["spec.roles.worker.resources.cpu: '2x' has unknown cpu unit 'x'; use cores or 'm'"],
    ),
    "a negative cpu": (
        job_yaml("    worker: {command: [x], resources: {cpu: -1}}"),
        ["spec.roles.worker.resources.cpu: cpu must not be negative"],
    ),
    "memory in GB, which Kubernetes does not know": (
        job_yaml("    worker: {command: [x], resources: {memory: 2GB}}"),
        [
            "spec.roles.worker.resources.memory: '2GB' has unknown memory unit 'GB'; "
            "use Ki, Mi, Gi or Ti"
        ],
    ),
    "one and a half gpus": (
        job_yaml("    worker: {command: [x], resources: {gpu: 1.5}}"),
        [
            "spec.roles.worker.resources.gpu: 1.5 mixes whole and shared GPUs; ask for a "
            "whole number (1, 2, 8) or a fraction below 1 (0.5, 0.25)"
        ],
    ),
    "a gpu count in words": (
        job_yaml("    worker: {command: [x], resources: {gpu: two}}"),
        ["spec.roles.worker.resources.gpu: 'two' is not a number of GPUs; write 1, 2 or 0.5"],
    ),
    "a gpu fraction finer than a hundredth": (
        job_yaml("    worker: {command: [x], resources: {gpu: 0.333}}"),
        [
            "spec.roles.worker.resources.gpu: 0.333 is finer than 0.01 of a GPU; "
            "round it (e.g. 0.25)"
        ],
    ),
    "replicas above maxReplicas": (
        job_yaml("    worker: {command: [x], replicas: 5, minReplicas: 1, maxReplicas: 4}"),
        ["spec.roles.worker: replicas=5 must lie within minReplicas=1 and maxReplicas=4"],
    ),
    "replicas below minReplicas": (
        job_yaml("    worker: {command: [x], replicas: 1, minReplicas: 2}"),
        ["spec.roles.worker: replicas=1 must lie within minReplicas=2 and maxReplicas=1"],
    ),
    "a role called master, which tidemill reserves": (
        job_yaml("    master: {command: [x]}\n    worker: {command: [x]}"),
        [
            "spec.roles: 'master' is reserved for tidemill's own per-job master; "
            "call the rank-0 role 'chief'"
        ],
    ),
    "ps mode without parameter servers": (
        job_yaml("    worker: {command: [x]}", mode="ps"),
        ["spec: mode 'ps' needs a 'ps' role with the parameter servers"],
    ),
    "a job name with capitals and an underscore": (
        job_yaml("    worker: {command: [x]}", name="Bad_Name"),
        [
            "metadata.name: 'Bad_Name' is not a valid job name: use at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit "
            "(e.g. 'ctr-daily')"
        ],
    ),
    "a role without a command": (
        job_yaml("    worker: {replicas: 1}"),
        ["spec.roles.worker.command: required field is missing"],
    ),
    "a ps role with neither a command nor tables": (
        job_yaml("    ps: {replicas: 2, command: []}\n    worker: {command: [x]}", mode="ps"),
        [
            "spec.roles.ps: command: is empty; give the argv of the replica process "
            "(e.g. [python, train.py]), or, for a ps role, tables for tidemill's PS server"
        ],
    ),
    "a ps role with both a command and tables": (
        job_yaml(
            "    ps: {command: [x], tables: [{name: t, dim: 4, optimizer: {name: sgd}}]}\n"
            "    worker: {command: [x]}",
            mode="ps",
        ),
        [
            "spec.roles.ps: give tables (tidemill's PS server runs them) or a command (your "
            "own parameter server), not both"
        ],
    ),
    "a table with dim 0 and an optimizer that does not exist": (
        job_yaml(
            "    ps: {tables: [{name: t, dim: 0, optimizer: {name: adamw}}]}\n"
            "    worker: {command: [x]}",
            mode="ps",
        ),
        [
            "spec.roles.ps.tables.0.dim: Input should be greater than or equal to 1",
            "spec.roles.ps.tables.0.optimizer.name: 'adamw' is not an optimizer tidemill's PS "
            "runs; use sgd, adagrad, adam, ftrl",
        ],
    ),
    "two tables of one name, and staleness with sync": (
        job_yaml(
            "    ps:\n      maxStalenessSteps: 2\n      tables:\n"
            "        - {name: t, dim: 4, optimizer: {name: sgd}}\n"
            "        - {name: t, dim: 8, optimizer: {name: sgd}}\n"
            "    worker: {command: [x]}",
            mode="ps",
        ),
        [
            "spec.roles.ps: tables.1.name: 't' is declared twice; table names are unique "
            "within a job; maxStalenessSteps=2 has no effect with consistency: sync; set "
            "consistency: async, or drop maxStalenessSteps"
        ],
    ),
    "an elastic PS role": (
        job_yaml(
            "    ps: {replicas: 2, maxReplicas: 4, tables: [{name: t, dim: 4, "
            "optimizer: {name: sgd}}]}\n    worker: {command: [x]}",
            mode="ps",
        ),
        [
            "spec.roles.ps: tidemill's PS replicas are not elastic (the tables are sharded "
            "over them): drop minReplicas/maxReplicas, keep replicas: 2"
        ],
    ),
    "PS settings on a worker": (
        job_yaml("    worker: {command: [x], consistency: async}"),
        [
            "spec.roles.worker: consistency, maxStalenessSteps and virtualShards configure "
            "tidemill's PS server: they belong to a ps role with tables and no command"
        ],
    ),
    "two chiefs": (
        job_yaml("    chief: {command: [x], replicas: 2}"),
        ["spec: roles.chief: there is at most one chief (replicas: 1)"],
    ),
    "every problem in one file is reported at once": (
        job_yaml(
            "    worker: {command: [x], replicas: -1, resources: {cpu: 2x, gpu: 1.5}}",
            name="Bad_Name",
        ),
        [
            "metadata.name: 'Bad_Name' is not a valid job name: use at most 63 lowercase "
            "letters, digits and '-', starting and ending with a letter or digit "
            "(e.g. 'ctr-daily')",
            "spec.roles.worker.replicas: Input should be greater than or equal to 0",
            "spec.roles.worker.resources.cpu: '2x' has unknown cpu unit 'x'; use cores or 'm'",
            "spec.roles.worker.resources.gpu: 1.5 mixes whole and shared GPUs; ask for a "
            "whole number (1, 2, 8) or a fraction below 1 (0.5, 0.25)",
        ],
    ),
}


@pytest.mark.parametrize(("text", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_job_files_are_refused_with_the_field_and_the_fix(
    text: str, expected: list[str]
) -> None:
    assert errors_of(text) == expected


def test_a_field_at_the_wrong_level_says_where_it_belongs() -> None:
    document = {
        "metadata": {"name": "x"},
        "spec": {"roles": {"worker": {"command": ["true"], "restartBackoffSeconds": 2}}},
    }
    with pytest.raises(SpecError) as caught:
        job_from_document(document)
    assert [str(e) for e in caught.value.errors] == [
        "spec.roles.worker.restartBackoffSeconds: unknown field here; "
        "'restartBackoffSeconds' belongs in spec"
    ]
