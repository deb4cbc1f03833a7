"""Numbers, sizes and times as people read them in tidemill's tables."""

from __future__ import annotations

import time

from rich.table import Table

_UNITS = (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10))


def age(since: float | None, now: float) -> str:
    """Compact elapsed time like kubectl's AGE column: 42s, 7m, 3h, 2d."""
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def duration(seconds: float) -> str:
    """Exact enough for a summary: 4.2s, 3m07s, 2h05m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def clock(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def memory(amount: float) -> str:
    for unit, size in _UNITS:
        if amount >= size:
            value = round(amount / size, 1)
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{amount:.0f}"


def number(value: float) -> str:
    return f"{value:g}"


def byte_size(amount: float) -> str:
    """640000 -> 625KiB."""
    return f"{memory(amount)}B"


def rate(per_second: float) -> str:
    """51234.5 -> 51,234; 12.25 -> 12.2: whole numbers once the decimals stop mattering."""
    return f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:,.1f}"


def plain_table(*headers: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    return table
