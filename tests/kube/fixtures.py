"""The `kube` pytest fixture: a started KubeEmulator and its kubeconfig, closed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import KubeEmulator


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeEmulator]:
    """A fresh emulated cluster; `kube.kubeconfig` is the path of its kubeconfig file."""
    emulator = KubeEmulator().start()
    emulator.kubeconfig = emulator.write_kubeconfig(str(tmp_path / "kubeconfig"))  # type: ignore[attr-defined]
    try:
        yield emulator
    finally:
        emulator.close()
