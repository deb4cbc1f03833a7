"""Reading a CSV file row by row, each value checked, every refusal naming its line."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from tidemill.scheduler.sim.errors import SimInputError

MAX_ROWS = 2_000_000
"""More rows than any public trace; a bigger file is refused instead of filling memory."""


def rows(
    path: Path, required: tuple[str, ...], optional: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, str]]]:
    """(file line number, row) for every data row, once the header has every required column."""
    source = str(path)
    try:
        stream = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise SimInputError(source, None, f"cannot read the file: {exc.strerror}") from None
    with stream:
        reader = csv.reader(stream)
        try:
            header = [name.strip() for name in next(reader, [])]
            missing = [name for name in required if name not in header]
            if missing:
                raise SimInputError(
                    source, 1, f"the header lacks {', '.join(missing)}; it has {', '.join(header)}"
                )
            unknown = [name for name in header if name not in required + optional]
            if unknown:
                raise SimInputError(
                    source,
                    1,
                    f"unknown column(s) {', '.join(unknown)}; known: "
                    f"{', '.join(required + optional)}",
                )
            for count, values in enumerate(reader, start=1):
                line = reader.line_num
                if count > MAX_ROWS:
                    raise SimInputError(source, line, f"more than {MAX_ROWS:,} rows")
                if not values:
                    continue
                if len(values) != len(header):
                    raise SimInputError(
                        source, line, f"has {len(values)} values; the header names {len(header)}"
                    )
                yield line, {k: v.strip() for k, v in zip(header, values, strict=True)}
        except UnicodeDecodeError:
            raise SimInputError(source, None, "the file is not UTF-8 text") from None
        except csv.Error as exc:
            raise SimInputError(source, reader.line_num, f"not valid CSV: {exc}") from None


class Fields:
    """Typed access to one row's values; every refusal names the line and the column."""

    def __init__(self, source: str, line: int, row: dict[str, str]) -> None:
        self._source = source
        self._line = line
        self._row = row

    def fail(self, column: str, message: str) -> NoReturn:
        raise SimInputError(self._source, self._line, f"{column}: {message}")

    def text(self, column: str) -> str:
        value = self._row.get(column, "")
        if not value:
            self.fail(column, "is empty; every row needs one")
        return value

    def number(self, column: str, *, minimum: float, default: float | None = None) -> float:
        raw = self._row.get(column, "")
        if not raw and default is not None:
            return default
        return self._float(column, raw, minimum)

    def optional_number(self, column: str) -> float | None:
        raw = self._row.get(column, "")
        return None if not raw else self._float(column, raw, 0.0)

    def integer(
        self, column: str, *, minimum: int, maximum: int, default: int | None = None
    ) -> int:
        raw = self._row.get(column, "")
        if not raw and default is not None:
            return default
        try:
            value = int(raw)
        except ValueError:
            self.fail(column, f"{raw!r} is not a whole number")
        if not minimum <= value <= maximum:
            self.fail(column, f"{value} is out of range; expected {minimum} to {maximum}")
        return value

    def _float(self, column: str, raw: str, minimum: float) -> float:
        try:
            value = float(raw)
        except ValueError:
            self.fail(column, f"{raw!r} is not a number")
        if not math.isfinite(value) or value < minimum:
            self.fail(column, f"{raw} is out of range; expected a number >= {minimum:g}")
        return value
