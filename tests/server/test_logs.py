"""Log tailing and following over files, as the /logs endpoint streams them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tidemill.server.logs import (
    CHUNK_BYTES,
    LINE_LIMIT_CHARS,
    LogSource,
    cut_note,
    stream_logs,
    tail_start,
)


def collect(
    sources: list[LogSource],
    follow: bool = False,
    running: Callable[[], bool] = lambda: False,
    limit_bytes: int = 1 << 30,
) -> list[str]:
    async def run() -> list[str]:
        return [text async for text in stream_logs(sources, follow, running, None, limit_bytes)]

    return "".join(asyncio.run(run())).splitlines(keepends=True)


@pytest.mark.parametrize(
    ("lines", "expected"), [(0, []), (2, ["c", "d"]), (9, ["a", "b", "c", "d"])]
)
def test_tail_returns_exactly_the_last_lines(
    tmp_path: Path, lines: int, expected: list[str]
) -> None:
    log = tmp_path / "w.log"
    log.write_text("a\nb\nc\nd\n")
    source = LogSource(str(log), "", offset=tail_start(str(log), lines))

    assert collect([source]) == [f"{line}\n" for line in expected]


def test_tail_counts_an_unfinished_last_line_as_a_line(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("a\nb\nc")

    assert collect([LogSource(str(log), "", offset=tail_start(str(log), 2))]) == ["b\n", "c\n"]


def test_tail_of_a_large_file_reads_back_from_the_end_only_as_far_as_allowed(
    tmp_path: Path,
) -> None:
    log = tmp_path / "w.log"
    line = "x" * 99 + "\n"
    log.write_text(line * 50_000 + "last-but-one\nlast\n")
    size = log.stat().st_size

    assert tail_start(str(log), 2) == size - len("last-but-one\nlast\n")
    # Asked for more lines than the window holds: the first whole line inside it.
    start = tail_start(str(log), 10_000, within_bytes=1000)
    assert size - 1000 <= start < size - 1000 + 100
    assert log.read_bytes()[start - 1 : start] == b"\n"


def test_follow_reads_lines_appended_while_running_and_prefixes_them(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("first\npart")
    writes = iter(["ial\n", "last\n"])

    def running() -> bool:
        """Each check the job writes a little more; it ends after its last write."""
        chunk = next(writes, None)
        if chunk is not None:
            with log.open("a") as handle:
                handle.write(chunk)
        return chunk == "ial\n"

    got = collect([LogSource(str(log), "[worker-0] ")], True, running)

    assert got == ["[worker-0] first\n", "[worker-0] partial\n", "[worker-0] last\n"]


def test_a_line_longer_than_the_limit_is_passed_on_in_pieces_with_its_prefix(
    tmp_path: Path,
) -> None:
    log = tmp_path / "w.log"
    log.write_text("short\n" + "y" * (2 * LINE_LIMIT_CHARS + 5) + "\nend\n")

    got = collect([LogSource(str(log), "[w-0] ")])

    assert got[0] == "[w-0] short\n"
    assert all(line.startswith("[w-0] ") for line in got)
    assert "".join(line.removeprefix("[w-0] ").rstrip("\n") for line in got[1:-1]) == "y" * (
        2 * LINE_LIMIT_CHARS + 5
    )
    assert len(got) > 3
    assert got[-1] == "[w-0] end\n"


def test_characters_split_across_reads_arrive_whole(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    text = "é" * CHUNK_BYTES + "\n"  # two bytes each: reads end mid-character
    log.write_text(text, encoding="utf-8")

    assert collect([LogSource(str(log), "")]) == [text]


def test_a_download_stops_at_the_byte_limit_and_says_so_in_its_last_line(
    tmp_path: Path,
) -> None:
    log = tmp_path / "w.log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))

    got = collect([LogSource(str(log), "")], limit_bytes=20)  # two lines and most of a third

    assert got == ["line 0\n", "line 1\n", "line 2\n", cut_note(20)]


def test_a_download_that_fits_the_limit_exactly_has_no_note(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_text("abc\n")

    assert collect([LogSource(str(log), "")], limit_bytes=4) == ["abc\n"]
