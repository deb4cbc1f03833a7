"""What the checkpoint store raises; each message names the checkpoint's URL.

Tree::

    CheckpointError (Exception)       a write or read failed: the URL and the OS error
      └─ CheckpointMismatch           the checkpoint does not fit this model or optimizer

A :class:`CheckpointError` on save leaves earlier checkpoints as they were, so the job
can go on and try again at the next commit. A :class:`CheckpointMismatch` on load is
never answered by falling back to an older checkpoint: they were all written by the same
training script, so it is the script or the ``--resume-from`` URL that has to change.
"""

from __future__ import annotations

from collections.abc import Sequence

SHOWN = 5
"""How many items of each kind a mismatch message shows before it only counts."""


class CheckpointError(Exception):
    """Writing or reading the checkpoint at ``url`` failed; ``detail`` says why."""

    def __init__(self, url: str, detail: str) -> None:
        self.url = url
        self.detail = detail
        super().__init__(f"checkpoint {url}: {detail}")


class CheckpointMismatch(CheckpointError):
    """The checkpoint at ``url`` holds state of another shape than the model or optimizer.

    ``missing``: keys the model has and the checkpoint lacks; ``unexpected``: the
    reverse; ``different``: one line per key whose shape or dtype differs, or per
    optimizer parameter group whose size differs. ``what`` is "model" or "optimizer".
    """

    def __init__(
        self,
        url: str,
        what: str,
        *,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        different: Sequence[str] = (),
    ) -> None:
        self.what = what
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.different = list(different)
        parts = [
            _counted(self.different, "difference", "; "),
            _counted(self.missing, f"key of the {what} missing from the checkpoint", ", "),
            _counted(self.unexpected, f"key in the checkpoint that the {what} lacks", ", "),
        ]
        super().__init__(
            url,
            f"does not fit the {what}: "
            + "; ".join(part for part in parts if part)
            + ". Resume with the model and optimizer this checkpoint was saved from"
            " (same layers, sizes, dtypes and parameter groups), or from another checkpoint.",
        )


def _counted(items: Sequence[str], noun: str, separator: str) -> str:
    """``3 differences (a; b; c)``: the count, then the first :data:`SHOWN` items."""
    if not items:
        return ""
    first, rest = noun.split(" ", 1) if " " in noun else (noun, "")
    plural = first + ("s" if len(items) != 1 else "")
    label = f"{len(items)} {plural}" + (f" {rest}" if rest else "")
    more = f"{separator}and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return f"{label} ({separator.join(items[:SHOWN])}{more})"
