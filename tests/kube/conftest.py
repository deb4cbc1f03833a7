"""Makes the `kube` fixture available to the emulator's own tests."""

from tests.kube.fixtures import kube

__all__ = ["kube"]
