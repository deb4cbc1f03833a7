"""Checkpoint locations are checked at submit time, with messages that say what to change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tidemill.checkpoint import parse_checkpoint_url, writable_problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("memory://runs/a/", "memory://runs/a"),
        ("file:///data/ckpt/", "/data/ckpt"),
        ("/data/../data/ckpt", "/data/ckpt"),
        ("hdfs://namenode/ckpt", "hdfs://namenode/ckpt"),
    ],
)
def test_locations_are_normalised(text: str, expected: str) -> None:
    assert parse_checkpoint_url(text) == expected


def test_a_relative_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_checkpoint_url("ckpt/run-1") == str(tmp_path / "ckpt" / "run-1")
    assert parse_checkpoint_url("~/ckpt") == os.path.expanduser("~/ckpt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "checkpoint URL is empty; give a directory or a URL like s3://b/ckpt"),
        ("  ", "checkpoint URL is empty"),
        ("/data/ckpt\n", "control character '\\n' at position 10; remove it"),
        ("/data/\x00ckpt", "control character '\\x00' at position 6"),
        ("ftp2://host/x", "unknown protocol 'ftp2'; use a local path, file://, memory://, s3://"),
        ("s3://", "names no bucket or path after s3://"),
        ("file://relative", "a file:// URL needs an absolute path"),
        ("simplecache::s3://b/x", "chained fsspec URLs (a::b) are not supported"),
    ],
)
def test_bad_locations_are_refused_with_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_checkpoint_url(text)
    assert message in str(raised.value)


def test_a_protocol_whose_package_is_missing_names_the_package_to_install() -> None:
    pytest.importorskip("fsspec")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"s3:// needs s3fs: pip install s3fs"):
            parse_checkpoint_url("s3://bucket/ckpt")
    else:
        pytest.skip("s3fs is installed here, so s3:// is accepted")


def test_writable_local_locations_have_no_problem(tmp_path: Path) -> None:
    assert writable_problem(str(tmp_path)) is None
    assert writable_problem(str(tmp_path / "not" / "yet" / "there")) is None
    assert writable_problem("memory://anything") is None


def test_a_location_under_a_file_is_a_problem_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert writable_problem(str(tmp_path / "file" / "ckpt")) == (
        f"checkpoint path {tmp_path}/file/ckpt: {tmp_path}/file is a file, not a directory;"
        " choose a path under a directory"
    )


def test_a_directory_without_write_permission_is_a_problem_naming_it(tmp_path: Path) -> None:
    if os.getuid() == 0:
        pytest.skip("root may write anywhere, so os.access cannot refuse (tested as non-root)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    problem = writable_problem(str(locked / "ckpt"))
    assert problem is not None and f"directory {locked} is not writable by this user" in problem
