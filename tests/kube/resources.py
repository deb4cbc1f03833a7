"""The resource types the emulator serves: built-in ones and those CRDs add at run time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One served group/version/plural with the behaviour the server gives it."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    has_status: bool
    custom: bool = False
    # the CRD version's openAPIV3Schema (custom resources only)
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    # whether a delete answers with the object (pods, services...) or a Status
    returns_object: bool = True

    @property
    def api_version(self) -> str:
        """`v1` for the core group, `group/version` otherwise."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """Storage key: one store per group/plural whatever the version."""
        return f"{self.group}/{self.plural}"


BUILTINS: tuple[Resource, ...] = (
    Resource("", "v1", "namespaces", "Namespace", False, True),
    Resource("", "v1", "nodes", "Node", False, True),
    Resource("", "v1", "pods", "Pod", True, True),
    Resource("", "v1", "services", "Service", True, True),
    Resource("", "v1", "secrets", "Secret", True, False, returns_object=False),
    Resource("", "v1", "configmaps", "ConfigMap", True, False, returns_object=False),
    Resource("", "v1", "events", "Event", True, False, returns_object=False),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, False, returns_object=False),
    Resource(
        "networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, False,
        returns_object=False,
    ),
    Resource(
        "apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
        False, True,
    ),
)

KINDS_WITHOUT_SPEC_GENERATION = {"Secret", "ConfigMap", "Event", "ServiceAccount", "Namespace"}
