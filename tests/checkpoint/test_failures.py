"""Storage that fails mid-write: the save raises, cleans up after itself, and spares the past.

Uses a real 2 MiB tmpfs filled to the last byte and a real immutable directory
(``chattr +i``); both need root, and the tests skip with the reason where they cannot.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.checkpoint.conftest import adam, assert_same, train, trained
from tidemill.checkpoint import CheckpointError, CheckpointStore


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, always unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = run("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        run("umount", "-l", str(mount_point))


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Directories the test made immutable, made mutable again afterwards."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        run("chattr", "-i", str(path))


def fill(directory: Path) -> None:
    """Write zeros until the filesystem has no byte left."""
    descriptor = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)


def test_a_full_disk_fails_the_save_and_leaves_the_previous_checkpoint_loadable(
    small_disk: Path,
) -> None:
    store = CheckpointStore(str(small_disk / "ckpt"))
    state = trained(adam, steps=1)
    store.save(state.committed)
    fill(small_disk)

    train(state, 1)
    with pytest.raises(CheckpointError) as raised:
        store.save(state.committed)
    assert "No space left on device" in str(raised.value)
    assert f"checkpoint {small_disk}/ckpt/step-000000000002: saving step 2 failed" in str(
        raised.value
    )
    assert sorted(p.name for p in (small_disk / "ckpt").iterdir()) == ["step-000000000001"]
    loaded = store.load_newest(*adam())
    assert loaded.committed is not None and loaded.committed.step == 1
    assert loaded.skipped == []


def test_an_unwritable_directory_fails_the_save_and_spares_the_previous_checkpoint(
    store_url: str, immutable: list[Path]
) -> None:
    store = CheckpointStore(store_url)
    state = trained(adam, steps=1)
    first = store.save(state.committed)
    chattr = run("chattr", "+i", store_url)
    if chattr.returncode != 0:
        pytest.skip(f"chattr +i is not permitted here: {chattr.stderr.strip()}")
    immutable.append(Path(store_url))

    train(state, 1)
    with pytest.raises(CheckpointError, match="Operation not permitted"):
        store.save(state.committed)
    [listing] = store.list()
    assert listing.manifest == first
    loaded = store.load_newest(*adam())
    assert loaded.committed is not None
    assert_same(trained(adam, steps=1).committed.model, loaded.committed.model, "model")


def test_a_path_under_a_file_fails_with_the_os_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = CheckpointStore(str(tmp_path / "file" / "ckpt"))
    with pytest.raises(CheckpointError, match="Not a directory"):
        store.save(trained(adam, steps=1).committed)
