"""Where checkpoints live: a local directory or an fsspec URL, checked before a job starts.

Both functions here are cheap and need neither torch nor credentials, so the CLI and the
server can refuse a bad ``--checkpoint`` value at submit time instead of at the first
checkpoint, minutes or hours into training.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.registry import known_implementations

_PROTOCOL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
_LOCAL = ("file", "local")
_PACKAGES = {
    "s3": "s3fs",
    "s3a": "s3fs",
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "az": "adlfs",
    "abfs": "adlfs",
    "hdfs": "pyarrow",
    "hf": "huggingface_hub",
    "sftp": "paramiko",
    "oci": "ocifs",
    "oss": "ossfs",
}
"""The pip package behind each common protocol, for the "needs ..." message."""
_COMMON = "a local path, file://, memory://, s3://, gs://, az://, abfs://, hdfs://"


def parse_checkpoint_url(text: str) -> str:
    """The normalised form of a checkpoint location, or ValueError saying what is wrong.

    A plain path is local and becomes absolute (``~`` expanded); ``file://`` URLs become
    plain paths; other URLs keep their protocol and lose trailing slashes. The protocol
    must be one fsspec knows and its package must be installed here.

    Example::

        >>> parse_checkpoint_url("memory://runs/a/")
        'memory://runs/a'
        >>> parse_checkpoint_url("file:///tmp/ckpt")
        '/tmp/ckpt'
        >>> parse_checkpoint_url("ftp2://host/x")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: checkpoint URL 'ftp2://host/x': unknown protocol 'ftp2'; ...
    """
    if not text.strip():
        raise ValueError("checkpoint URL is empty; give a directory or a URL like s3://b/ckpt")
    bad = next((i for i, ch in enumerate(text) if ord(ch) < 32 or ord(ch) == 127), None)
    if bad is not None:
        raise ValueError(
            f"checkpoint URL {text!r}: control character {text[bad]!r} at position {bad};"
            " remove it (a stray newline or tab from a shell variable?)"
        )
    if "::" in text:
        raise ValueError(
            f"checkpoint URL {text!r}: chained fsspec URLs (a::b) are not supported;"
            " give one location"
        )
    match = _PROTOCOL.match(text)
    if match is None:
        return os.path.abspath(os.path.expanduser(text))
    protocol, rest = match.group(1).lower(), match.group(2)
    if protocol in _LOCAL:
        if not rest.startswith("/"):
            raise ValueError(
                f"checkpoint URL {text!r}: a file:// URL needs an absolute path"
                " (file:///data/ckpt); or give the path without file://"
            )
        return os.path.abspath(rest)
    if protocol not in known_implementations:
        raise ValueError(
            f"checkpoint URL {text!r}: unknown protocol {protocol!r}; use {_COMMON}"
            " (or another protocol fsspec knows)"
        )
    if not rest.strip("/"):
        raise ValueError(f"checkpoint URL {text!r}: names no bucket or path after {protocol}://")
    _require_implementation(text, protocol)
    return f"{protocol}://{rest.rstrip('/')}"


def _require_implementation(text: str, protocol: str) -> None:
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package = _PACKAGES.get(protocol)
        needs = f"{package}: pip install {package}" if package else f"more packages ({exc})"
        raise ValueError(f"checkpoint URL {text!r}: {protocol}:// needs {needs}") from None


def writable_problem(url: str) -> str | None:
    """Why checkpoints cannot be written at ``url``, or None when they can (or it is unknown).

    A local path must be a directory, or not exist yet below a directory this user may
    write to (the store creates the rest). Remote storage needs credentials only the
    job has (and maybe packages only its image has), so it is not checked here.

    Example::

        >>> print(writable_problem("/proc/version/ckpt"))  # doctest: +NORMALIZE_WHITESPACE
        checkpoint path /proc/version/ckpt: /proc/version is a file, not a directory;
        choose a path under a directory
        >>> writable_problem("s3://bucket/ckpt") is None
        True
    """
    match = _PROTOCOL.match(url)
    if match is not None and match.group(1).lower() not in _LOCAL:
        return None
    location = parse_checkpoint_url(url)
    existing = Path(location)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return (
            f"checkpoint path {location}: {existing} is a file, not a directory;"
            " choose a path under a directory"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"checkpoint path {location}: directory {existing} is not writable by this user"
            f" (uid {os.getuid()}); choose another path or change its permissions"
        )
    return None


@dataclass(frozen=True)
class Location:
    """A parsed checkpoint URL with its filesystem: ``path`` is what ``fs`` calls it."""

    url: str
    fs: Any
    path: str

    @property
    def local(self) -> bool:
        return "://" not in self.url

    def child(self, name: str) -> Location:
        return Location(f"{self.url}/{name}", self.fs, f"{self.path.rstrip('/')}/{name}")


def locate(url: str) -> Location:
    """The filesystem and path behind a URL :func:`parse_checkpoint_url` returned."""
    if "://" not in url:
        return Location(url, fsspec.filesystem("file"), url)
    fs, path = fsspec.core.url_to_fs(url)
    return Location(url, fs, str(path))
