"""Where a restore may come from, checked without torch: a job's checkpoint folder
(``step-*`` folders under it) or a single ``step-*`` folder.

The server lists a job's checkpoints and checks ``resumeFrom`` at submit time with
these; neither needs the tensors, so they read manifests only.
"""

from __future__ import annotations

import posixpath

from tidemill.checkpoint._listing import Listing, list_steps, read_listing
from tidemill.checkpoint._url import locate, parse_checkpoint_url


def list_checkpoints(url: str) -> list[Listing]:
    """The step folders under ``url``, newest first ([] when there is none); OSError
    when the storage cannot be read."""
    return list_steps(locate(parse_checkpoint_url(url)))


def single_checkpoint(url: str) -> Listing | None:
    """``url`` as one step folder with a valid manifest, else None."""
    where = locate(parse_checkpoint_url(url))
    listing = read_listing(where, posixpath.basename(where.path.rstrip("/")))
    return listing if listing.manifest is not None else None


def resumable_problem(url: str) -> str | None:
    """Why ``url`` holds no checkpoint a job could start from; None when it holds one."""
    try:
        listings = list_checkpoints(url)
        if any(listing.manifest is not None for listing in listings):
            return None
        if not listings and single_checkpoint(url) is not None:
            return None
    except OSError as exc:
        return f"cannot read {url}: {exc}"
    if listings:
        found = "; ".join(f"{listing.name}: {listing.problem}" for listing in listings[:3])
        return f"no usable checkpoint in {url} ({found})"
    return (
        f"no checkpoint in {url}: give a job's checkpoint folder (`tidemill checkpoints "
        "JOB` shows it), one of its step-NNNNNNNNNNNN folders, or a job's name"
    )
