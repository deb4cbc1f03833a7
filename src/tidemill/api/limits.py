"""Hard limits on what a job or cluster file may ask for, and the text rules behind them.

The control plane does work in proportion to what a job declares (one object per pod,
one argv per replica), so a job must declare what it could really use: the limits
below are far above any real training job and far below what would stall the
scheduler for everyone else. Each is refused at submit with ``path: message``.
"""

from __future__ import annotations

import re

MAX_DOCUMENT_BYTES = 2**20
"""A job or cluster file (or REST body) larger than 1 MiB is refused unread."""
MAX_NESTING_DEPTH = 64
"""Lists and mappings nested deeper than this are refused (a job file needs about 8)."""
MAX_ALIAS_NODES = 10_000
"""YAML aliases may add at most this many nodes to a document (anchors and merge keys
in real files add tens; a "billion laughs" bomb adds billions)."""

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
"""Every integer in a document fits a signed 64-bit column."""

MAX_REPLICAS_PER_ROLE = 10_000
"""replicas, minReplicas and maxReplicas of one role."""
MAX_PODS_PER_JOB = 20_000
"""Replicas of all roles together, each role at its maxReplicas."""

MAX_ARGV_ITEMS = 4_096
"""command and args together."""
MAX_ENV_ITEMS = 4_096
MAX_ARG_BYTES = 64 * 2**10
"""One argument, or one environment value (the kernel refuses strings over 128 KiB)."""
MAX_REPLICA_ARGV_ENV_BYTES = 256 * 2**10
"""argv plus environment of one replica, UTF-8, one NUL after each string."""

MAX_CPU_CORES = 1_000_000
MAX_MEMORY_BYTES = 2**60
"""1 EiB."""
MAX_GPUS = 1_024
"""GPUs of one replica or one node."""
MAX_EXTENDED_RESOURCES = 32
"""Extended resource names on one role or one node."""
MAX_EXTENDED_AMOUNT = 1_000_000
"""Of one extended resource (``rdma/hca``) per replica or per node; hugepages are bytes
and bounded like memory instead."""
MAX_QUEUE_GPUS = 10_000_000
"""A queue's guaranteed or max GPUs (a quota over the whole cluster)."""
MAX_BACKOFF_S = 300.0
"""The restart delay never grows beyond this, so a first delay above it means nothing."""
MAX_CLUSTER_NODES = 10_000
"""Nodes of a cluster file, after ``count`` expands."""
MAX_TOPOLOGY_LEVELS = 8
"""Topology levels a cluster declares (``nvlink-domain, rack, zone`` is three)."""
MAX_NUMA_NODES = 64
"""NUMA nodes one node's layout lists."""
MAX_CPU_ID = 8_191
"""The highest CPU number a NUMA layout may name (Linux's largest NR_CPUS)."""
MAX_JOBS_PER_NAMESPACE = 5_000
"""Unfinished jobs (pending, running or suspended) one namespace may hold by default: each
pending job costs every scheduling pass (Slurm's ``MaxJobCount``, 10,000 by default,
bounds a whole cluster the same way)."""
JOBS_PAGE_MAX = 10_000
"""Most jobs one page of ``GET /api/v1/jobs`` holds (its ``limit``, ``tidemill jobs --last``)."""
MIN_QUEUE_WEIGHT = 1e-3
MAX_QUEUE_WEIGHT = 1e6

MAX_LABELS = 64
MAX_LABEL_NAME = 63
MAX_LABEL_PREFIX = 253
MAX_LABEL_VALUE = 63
MAX_LINE_BYTES = 4_096
"""Images, working directories, gpu models and other one-line text fields."""

_BAD_LINE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""Control characters (C0, DEL, C1) and lone surrogates."""
_BAD_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
"""The same, less tab and line breaks: scripts passed as an argument (``python -c``)."""


def shown(value: object, width: int = 40) -> str:
    """``repr(value)`` cut to ``width`` characters, so an error never echoes a megabyte."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 5]}...{text[-2:]}"


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """What makes ``value`` unusable as text, or None.

    Lone surrogates ("\\ud800") cannot be written as UTF-8, so a stored job holding one
    could never be read back; NUL cannot reach a process at all. ``multiline`` text
    (arguments, environment values) may hold tabs and line breaks; other control
    characters are refused everywhere.
    """
    found = (_BAD_MULTILINE if multiline else _BAD_LINE).search(value)
    if found is None:
        return None
    code, index = ord(found.group()), found.start()
    if 0xD800 <= code <= 0xDFFF:
        return (
            f"is not valid UTF-8 text: a lone surrogate \\u{code:04x} at character {index}; "
            "send well-formed Unicode"
        )
    if code == 0:
        return f"contains a NUL character at character {index}; remove it"
    allowed = (
        "tab and line breaks are the only control characters allowed here"
        if multiline
        else "write it as one line of printable text"
    )
    return f"contains the control character \\x{code:02x} at character {index}; {allowed}"


def utf8_size(value: str) -> int:
    """Bytes ``value`` takes as UTF-8 (lone surrogates count as the 3 bytes they would)."""
    return len(value.encode("utf-8", errors="surrogatepass"))
