"""Accept Kubeflow (kubeflow.org/v1 PyTorchJob, TFJob) manifests as they are."""

from __future__ import annotations

from typing import Any

from tidemill.api.compat.kubeflow import KUBEFLOW_KINDS, convert_kubeflow


def convert_foreign(document: dict[str, Any]) -> dict[str, Any]:
    """Return a tidemill job document; tidemill documents pass through untouched."""
    api_version = str(document.get("apiVersion", ""))
    kind = str(document.get("kind", ""))
    if api_version.startswith("kubeflow.org/") and kind in KUBEFLOW_KINDS:
        return convert_kubeflow(document)
    return document


__all__ = ["convert_foreign"]
