"""``GET /api/v1/jobs/{name}/checkpoints`` and the submit-time checks of spec.checkpoint,
against a real server; the checkpoints are written by the real store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import torch

from tests.e2e.harness import idle_elastic_job
from tidemill.checkpoint import CheckpointStore
from tidemill.client import Client, InvalidSpec, NotFound
from tidemill.runtime import ElasticState
from tidemill.server.runner import ServerRunner


def save_steps(url: str, steps: list[int]) -> None:
    model = torch.nn.Linear(3, 1)
    state = ElasticState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    store = CheckpointStore(url, keep=10)
    for step in steps:
        state.step = step
        state.data = {"tidemill.data": {"stage": 0, "pass": 0, "done": {"t": [[0, step]]}}}
        state.commit()
        store.save(state.committed, job="default/x")


def test_a_jobs_checkpoints_are_listed_newest_first_with_their_data_position(
    start_runner: Callable[..., ServerRunner], tmp_path: Path
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(idle_elastic_job("listed", {"dir": str(tmp_path / "ckpt"), "everySteps": 10}))
        listing = client.checkpoints("listed")
        assert listing.url is not None and listing.items == []
        assert listing.url.startswith(str(tmp_path / "ckpt" / "default" / "listed"))
        save_steps(listing.url, [10, 20])
        (Path(listing.url) / "step-000000000030").mkdir()  # a write that never finished
        items = client.checkpoints("listed").items
    assert [(i.name, i.step) for i in items] == [
        ("step-000000000030", None),
        ("step-000000000020", 20),
        ("step-000000000010", 10),
    ]
    assert items[0].problem is not None and "partial" in items[0].problem
    assert items[1].data == {"tidemill.data": {"stage": 0, "pass": 0, "done": {"t": [[0, 20]]}}}
    assert items[1].size_bytes and items[1].world_size == 1


def test_jobs_without_a_dir_keep_checkpoints_in_the_state_folder(
    start_runner: Callable[..., ServerRunner],
) -> None:
    runner = start_runner()
    with Client(runner.url) as client:
        client.submit(idle_elastic_job("defaults"))
        listing = client.checkpoints("defaults")
        assert listing.url is not None
        assert listing.url.startswith(str(runner.state_dir / "checkpoints" / "default"))
        with pytest.raises(NotFound):
            client.checkpoints("nobody")


def test_a_dir_that_cannot_be_written_or_parsed_is_refused_at_submit(
    start_runner: Callable[..., ServerRunner], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    runner = start_runner()
    with Client(runner.url) as client:
        for bad, expected in [
            (str(blocker / "ckpt"), "a-file"),
            ("nosuchfs://bucket/ckpt", "nosuchfs"),
        ]:
            with pytest.raises(InvalidSpec) as caught:
                client.submit(idle_elastic_job("bad", {"dir": bad}))
            errors = {e.path: e.message for e in caught.value.errors}
            assert expected in errors["spec.checkpoint.dir"], errors


def test_resume_from_must_name_a_usable_checkpoint(
    start_runner: Callable[..., ServerRunner], tmp_path: Path
) -> None:
    runner = start_runner()
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = tmp_path / "partial"
    (partial / "step-000000000005").mkdir(parents=True)
    good = tmp_path / "good"
    save_steps(str(good), [7])
    with Client(runner.url) as client:
        for where, expected in [(empty, "no checkpoint in"), (partial, "partial")]:
            with pytest.raises(InvalidSpec) as caught:
                client.submit(idle_elastic_job("resumed", {"resumeFrom": str(where)}))
            errors = {e.path: e.message for e in caught.value.errors}
            assert expected in errors["spec.checkpoint.resumeFrom"], errors
        uid = client.submit(idle_elastic_job("resumed", {"resumeFrom": str(good)})).uid
        client.submit(idle_elastic_job("one", {"resumeFrom": str(good / "step-000000000007")}))
        raw = httpx.get(f"{runner.url}/api/v1/jobs/resumed/checkpoints").json()
    assert raw["items"] == [], "a job that has not trained yet has no checkpoints"
    assert raw["url"].endswith(f"/default/resumed/{uid}")
