"""An emulated Kubernetes API server, controllers and kubelets for testing the Kubernetes engine
with the official client and no cluster (see README.md)."""

from .emulator import KubeEmulator
from .rbac import Call

__all__ = ["Call", "KubeEmulator"]
