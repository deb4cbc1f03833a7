"""The step directories under a checkpoint URL, each with its manifest or the reason it has none.

Listing reads manifests only (a few KiB each), never tensors, so the job master can
show a job's checkpoints and the first epoch can pick one without reading gigabytes.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

from tidemill.checkpoint._manifest import MANIFEST_NAME, Manifest
from tidemill.checkpoint._url import Location

STEP_DIR = re.compile(r"^step-(\d{12,})$")
PARTIAL = "partial: no manifest (the write did not finish)"


def step_name(step: int) -> str:
    """``step-000000001200``: zero-padded, so names sort like steps."""
    return f"step-{step:012d}"


@dataclass(frozen=True)
class Listing:
    """One step directory: its ``manifest`` when valid, else the ``problem`` with it."""

    name: str
    url: str
    manifest: Manifest | None
    problem: str | None

    @property
    def step(self) -> int:
        """The step in the directory's name (the manifest's, when it is valid)."""
        match = STEP_DIR.match(self.name)
        return int(match.group(1)) if match else -1


def list_steps(root: Location) -> list[Listing]:
    """Every ``step-*`` directory under ``root``, newest step first; [] if ``root`` is absent.

    OSError from the listing itself propagates (the caller names the URL).
    """
    if not root.fs.exists(root.path):
        return []
    names = []
    for entry in root.fs.ls(root.path, detail=True):
        name = posixpath.basename(str(entry["name"]).rstrip("/"))
        if entry.get("type") == "directory" and STEP_DIR.match(name):
            names.append(name)
    names.sort(key=lambda name: int(name.removeprefix("step-")), reverse=True)
    return [read_listing(root.child(name), name) for name in names]


def read_listing(where: Location, name: str) -> Listing:
    """The manifest of the step directory ``where``, or what is wrong with it."""
    try:
        text = where.fs.cat_file(where.child(MANIFEST_NAME).path)
    except FileNotFoundError:
        return Listing(name, where.url, None, PARTIAL)
    except OSError as exc:
        return Listing(name, where.url, None, f"manifest unreadable: {exc}")
    try:
        manifest = Manifest.from_json(text)
    except ValueError as exc:
        return Listing(name, where.url, None, f"invalid manifest: {exc}")
    match = STEP_DIR.match(name)
    if match and int(match.group(1)) != manifest.step:
        problem = f"invalid manifest: step {manifest.step} in the directory of step {match[1]}"
        return Listing(name, where.url, None, problem)
    return Listing(name, where.url, manifest, None)


def write_manifest(where: Location, manifest: Manifest) -> Manifest:
    """Write the manifest so that it appears whole or not at all; return it as stored
    (JSON turns tuple and integer keys of ``data`` and ``extras`` into lists and strings).

    Locally: a temporary name, fsync, ``os.replace``, fsync of the directory. Object
    stores make one ``pipe`` call visible at once, and have no rename worth the name.
    """
    data = manifest.to_json().encode()
    target = where.child(MANIFEST_NAME).path
    if not where.local:
        where.fs.pipe_file(target, data)
        return Manifest.from_json(data)
    temporary = target + ".tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, target)
    directory = os.open(where.path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return Manifest.from_json(data)


def stored_files(where: Location) -> dict[str, int]:
    """Size of every file in the step directory but the manifest, by relative name."""
    prefix = where.path.rstrip("/") + "/"
    found: dict[str, int] = {}
    for path, info in where.fs.find(where.path, detail=True).items():
        name = str(path)[len(prefix) :] if str(path).startswith(prefix) else str(path)
        if not name.startswith(MANIFEST_NAME):
            found[name] = int(info["size"])
    return found


def remove(where: Location) -> str | None:
    """Delete a step directory; the error text when that failed (callers go on)."""
    try:
        if where.fs.exists(where.path):
            where.fs.rm(where.path, recursive=True)
    except OSError as exc:
        return str(exc)
    return None
