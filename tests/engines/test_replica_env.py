"""The variables a replica starts with: ranks, rendezvous, TF_CONFIG and GPUs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tidemill.api.job import Mode
from tidemill.engines.replica_env import (
    ReplicaContext,
    rank_of,
    replica_env,
    tf_config,
    world_size,
)

PS_ROLES = {"chief": 1, "worker": 2, "ps": 2, "evaluator": 1}
PS_ADDRESSES = {
    ("chief", 0): "c0:2222",
    ("worker", 0): "w0:2222",
    ("worker", 1): "w1:2222",
    ("ps", 0): "p0:2222",
    ("ps", 1): "p1:2222",
}


def ctx(roles: dict[str, int], role: str, index: int, **kw: object) -> ReplicaContext:
    base = ReplicaContext(
        job="ads/ctr",
        mode=Mode.PS if "ps" in roles else Mode.ALLREDUCE,
        roles=roles,
        role=role,
        index=index,
        master_addr="10.0.0.1",
        master_port=29500,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


CHIEF_AND_WORKERS = {"chief": 1, "worker": 3}


@pytest.mark.parametrize(
    ("roles", "role", "index", "rank", "size"),
    [
        pytest.param(
            {"worker": 3}, "worker", 2, "2", "3",
            id="allreduce without chief: worker i is rank i of all workers",
        ),
        pytest.param(
            CHIEF_AND_WORKERS, "chief", 0, "0", "4", id="allreduce with chief: the chief is rank 0"
        ),
        pytest.param(
            CHIEF_AND_WORKERS, "worker", 0, "1", "4",
            id="allreduce with chief: workers follow the chief",
        ),
        pytest.param(
            PS_ROLES, "worker", 1, "2", "3", id="ps mode: workers rank over chief and workers only"
        ),
        pytest.param(PS_ROLES, "ps", 1, "1", "2", id="ps mode: a ps ranks within the ps role"),
        pytest.param(
            PS_ROLES, "evaluator", 0, "0", "1", id="an evaluator ranks within the evaluator role"
        ),
    ],
)  # fmt: skip
def test_rank_and_world_size(
    roles: dict[str, int], role: str, index: int, rank: str, size: str
) -> None:
    env = replica_env(ctx(roles, role, index))
    assert (env["RANK"], env["WORLD_SIZE"]) == (rank, size)
    assert (rank_of(roles, role, index), world_size(roles, role)) == (int(rank), int(size))


def test_a_worker_gets_tidemill_and_torch_variables() -> None:
    env = replica_env(
        ctx(
            {"chief": 1, "worker": 2},
            "worker",
            1,
            tidemill_master_addr="10.0.0.9:7000",
            local_rank=1,
            attempt=2,
        )
    )
    assert env == {
        "TIDEMILL_JOB": "ads/ctr",
        "TIDEMILL_ROLE": "worker",
        "TIDEMILL_INDEX": "1",
        "TIDEMILL_ATTEMPT": "2",
        "TIDEMILL_MASTER_ADDR": "10.0.0.9:7000",
        "PYTHONUNBUFFERED": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "RANK": "2",
        "WORLD_SIZE": "3",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
    }


def test_without_a_tidemill_master_the_variable_is_absent() -> None:
    assert "TIDEMILL_MASTER_ADDR" not in replica_env(ctx({"worker": 1}, "worker", 0))


def test_ps_and_evaluator_cannot_join_the_workers_rendezvous() -> None:
    for role in ("ps", "evaluator"):
        env = replica_env(ctx(PS_ROLES, role, 0, addresses=PS_ADDRESSES))
        assert "MASTER_ADDR" not in env
        assert "MASTER_PORT" not in env


@pytest.mark.parametrize(
    ("role", "index"),
    [("chief", 0), ("worker", 1), ("ps", 0), ("evaluator", 0)],
)
def test_ps_mode_tf_config_lists_the_cluster_and_the_replicas_task(role: str, index: int) -> None:
    env = replica_env(ctx(PS_ROLES, role, index, addresses=PS_ADDRESSES))
    assert json.loads(env["TF_CONFIG"]) == {
        "cluster": {
            "chief": ["c0:2222"],
            "worker": ["w0:2222", "w1:2222"],
            "ps": ["p0:2222", "p1:2222"],
        },
        "task": {"type": role, "index": index},
    }


def test_tf_config_leaves_out_roles_the_job_does_not_have() -> None:
    roles = {"worker": 1, "ps": 1}
    addresses = {("worker", 0): "w0:1", ("ps", 0): "p0:1"}
    tf = json.loads(replica_env(ctx(roles, "worker", 0, addresses=addresses))["TF_CONFIG"])
    assert tf["cluster"] == {"worker": ["w0:1"], "ps": ["p0:1"]}


def test_without_addresses_there_is_no_tf_config() -> None:
    assert "TF_CONFIG" not in replica_env(ctx({"worker": 2}, "worker", 0))


def test_tf_config_names_the_replicas_whose_address_is_missing() -> None:
    partial = {k: v for k, v in PS_ADDRESSES.items() if k != ("worker", 1)}
    with pytest.raises(ValueError, match="missing worker-1"):
        tf_config(PS_ROLES, "ps", 0, partial)


def test_a_cluster_with_a_hole_gets_no_tf_config_but_still_the_ps_addresses() -> None:
    """An elastic worker lost with its node leaves a hole until its replacement is
    placed; a PS shard placed again meanwhile still starts, with every PS address."""
    partial = {k: v for k, v in PS_ADDRESSES.items() if k != ("worker", 0)}
    env = replica_env(ctx(PS_ROLES, "ps", 0, addresses=partial))
    assert "TF_CONFIG" not in env
    assert env["TIDEMILL_PS_ADDRS"] == "p0:2222,p1:2222"


@pytest.mark.parametrize(
    ("gpu_ids", "share", "visible", "share_var"),
    [
        ((), 1.0, "", None),
        ((3,), 1.0, "3", None),
        ((0, 1, 2, 3), 1.0, "0,1,2,3", None),
        ((2,), 0.25, "2", "0.25"),
    ],
    ids=["no gpu hides every device", "one gpu", "four gpus", "a quarter of a shared gpu"],
)
def test_gpus(gpu_ids: tuple[int, ...], share: float, visible: str, share_var: str | None) -> None:
    env = replica_env(ctx({"worker": 1}, "worker", 0, gpu_ids=gpu_ids, gpu_share=share))
    assert env["CUDA_VISIBLE_DEVICES"] == visible
    assert env.get("TIDEMILL_GPU_SHARE") == share_var


def test_the_job_master_gets_only_tidemill_variables() -> None:
    env = replica_env(ctx({"worker": 2}, "master", 0))
    assert env["TIDEMILL_ROLE"] == "master"
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "TF_CONFIG"} & set(env)


@pytest.mark.parametrize(
    ("role", "index", "kw", "message"),
    [
        ("worker", 2, {}, r"worker-2 is not a replica of job ads/ctr: roles are \{'worker': 2\}"),
        ("ps", 0, {}, "ps-0 is not a replica"),
        ("worker", 0, {"gpu_share": 0.5, "gpu_ids": (0, 1)}, "exactly one device"),
        ("worker", 0, {"gpu_share": 1.5}, r"gpu_share must be in \(0, 1\]"),
    ],
    ids=[
        "index past the role's count",
        "role the job lacks",
        "shared gpu on two devices",
        "share above one",
    ],
)
def test_impossible_replicas_are_refused_with_the_values_seen(
    role: str, index: int, kw: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        replica_env(ctx({"worker": 2}, role, index, **kw))
