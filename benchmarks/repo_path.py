"""Imported first by benchmarks that use the emulated API server (``tests/kube``): run as
a script, a benchmark's own folder comes first on ``sys.path``, where ``kubernetes.py``
hides the `kubernetes` package. This puts the repository's ``src`` and root there
instead."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path[:] = [str(ROOT / "src"), str(ROOT)] + [
    p for p in sys.path if Path(p or ".").resolve() != HERE
]
