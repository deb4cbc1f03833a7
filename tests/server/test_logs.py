"""Log tailing and following over files, as the /logs endpoint streams them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemill.server.logs import LogSource, stream_logs, tail_start


@pytest.mark.parametrize(
    ("lines", "expected"), [(0, []), (2, ["c", "d"]), (9, ["a", "b", "c", "d"])]
)
def test_tail_returns_exactly_the_last_lines(
    tmp_path: Path, lines: int, expected: list[str]
) -> None:
    log = tmp_path / "w.log"
    log.write_text("a\nb\nc\nd\n")
    source = LogSource(str(log), "", offset=tail_start(str(log), lines))

    got = list(stream_logs([source], follow=False, still_running=lambda: False))

    assert got == [f"{line}\n" for line in expected]


def test_follow_reads_lines_appended_while_running_and_prefixes_them(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("first\npart")
    writes = iter(["ial\n", "last\n"])

    def running() -> bool:
        """Each poll the job writes a little more; it ends after its last write."""
        chunk = next(writes, None)
        if chunk is not None:
            with log.open("a") as handle:
                handle.write(chunk)
        return chunk == "ial\n"

    got = list(stream_logs([LogSource(str(log), "[worker-0] ")], True, running))

    assert got == ["[worker-0] first\n", "[worker-0] partial\n", "[worker-0] last\n"]
