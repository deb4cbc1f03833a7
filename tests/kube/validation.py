"""Validation and defaulting of built-in objects, the subset an engine's manifests go through.

Strict on purpose: names, label syntax, required pod/service fields and pod spec immutability are
checked as the real server checks them, so a manifest accepted here is accepted by a cluster.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from .errors import ApiError, invalid

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

Causes = list[tuple[str, str]]


def dns_label_errors(value: str, path: str) -> Causes:
    """RFC 1123 label: 63 chars, lower-case alphanumerics and '-'."""
    if len(value) > 63:
        return [(path, f'Invalid value: "{value}": must be no more than 63 characters')]
    if not _DNS_LABEL.match(value):
        return [(path, f'Invalid value: "{value}": a lowercase RFC 1123 label must consist of '
                       "lower case alphanumeric characters or '-', and must start and end with "
                       "an alphanumeric character")]
    return []


def dns_1035_errors(value: str, path: str) -> Causes:
    """RFC 1035 label (Service names): must start with a letter."""
    if len(value) > 63 or not _DNS_1035.match(value):
        return [(path, f'Invalid value: "{value}": a DNS-1035 label must consist of lower case '
                       "alphanumeric characters or '-', start with an alphabetic character, and "
                       "end with an alphanumeric character")]
    return []


def subdomain_errors(value: str, path: str) -> Causes:
    """RFC 1123 subdomain (most object names): 253 chars, dot-separated labels."""
    if len(value) > 253 or not _SUBDOMAIN.match(value):
        return [(path, f'Invalid value: "{value}": a lowercase RFC 1123 subdomain must consist of '
                       "lower case alphanumeric characters, '-' or '.', and must start and end "
                       "with an alphanumeric character")]
    return []


def qualified_name_errors(key: str, path: str) -> Causes:
    prefix, _, name = key.rpartition("/")
    out: Causes = []
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        out.append((path, f'Invalid value: "{key}": prefix part must be a DNS-1123 subdomain'))
    if not name or len(name) > 63 or not _LABEL_NAME.match(name):
        out.append((path, f'Invalid value: "{key}": name part must consist of alphanumeric '
                          "characters, '-', '_' or '.', and must start and end with an "
                          "alphanumeric character, and be no more than 63 characters"))
    return out


def label_value_errors(value: Any, path: str) -> Causes:
    """Empty, or 63 alphanumerics, '-', '_' or '.' starting and ending alphanumeric."""
    if isinstance(value, str) and len(value) <= 63 and _LABEL_VALUE.match(value):
        return []
    return [(path, f'Invalid value: "{value}": a valid label must be an empty string or '
                   "consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                   "with an alphanumeric character, at most 63 characters")]


def label_selector_errors(selector: Any, path: str) -> Causes:
    """A LabelSelector (`matchLabels`, `matchExpressions`), as `ValidateLabelSelector`."""
    if not isinstance(selector, dict):
        return [(path, "Invalid value: must be a label selector object")]
    out: Causes = []
    for key, value in (selector.get("matchLabels") or {}).items():
        out += qualified_name_errors(key, f"{path}.matchLabels")
        out += label_value_errors(value, f"{path}.matchLabels")
    for i, expression in enumerate(selector.get("matchExpressions") or []):
        where = f"{path}.matchExpressions[{i}]"
        out += qualified_name_errors(str(expression.get("key", "")), f"{where}.key")
        operator, values = expression.get("operator"), expression.get("values") or []
        if operator in ("In", "NotIn") and not values:
            out.append((f"{where}.values", "Required value: must be specified when `operator` "
                                           "is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist") and values:
            out.append((f"{where}.values", "Forbidden: may not be specified when `operator` "
                                           "is 'Exists' or 'DoesNotExist'"))
        elif operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            out.append((f"{where}.operator", f'Invalid value: "{operator}": not a valid '
                                             "selector operator"))
        for value in values:
            out += label_value_errors(value, f"{where}.values")
    return out


def metadata_errors(meta: dict[str, Any], name_check: str) -> Causes:
    """Name, labels and annotations keys as ObjectMeta validation checks them."""
    out: Causes = []
    name = meta.get("name")
    if not name:
        out.append(("metadata.name", "Required value: name or generateName is required"))
    elif name_check == "label":
        out += dns_label_errors(name, "metadata.name")
    elif name_check == "1035":
        out += dns_1035_errors(name, "metadata.name")
    else:
        out += subdomain_errors(name, "metadata.name")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        return [*out, ("metadata.labels", "Invalid value: must be a map of strings")]
    for key, value in labels.items():
        out += qualified_name_errors(key, "metadata.labels")
        out += label_value_errors(value, "metadata.labels")
    for key, value in (meta.get("annotations") or {}).items():
        out += qualified_name_errors(key, "metadata.annotations")
        if not isinstance(value, str):
            out.append(("metadata.annotations", f"Invalid value: {key} must be a string"))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for fld in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(fld):
                out.append((f"metadata.ownerReferences[{i}].{fld}", "Invalid value: \"\": "
                            f"{fld} must not be empty"))
    controllers = [r for r in meta.get("ownerReferences") or [] if r.get("controller")]
    if len(controllers) > 1:
        out.append(("metadata.ownerReferences", "Invalid value: Only one reference can have "
                                                "Controller set to true"))
    return out


# ---------------------------------------------------------------- pods


def default_pod(pod: dict[str, Any]) -> None:
    """The defaults the real server fills in (the ones an engine may read back)."""
    spec = pod.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        image = c.get("image") or ""
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        latest = not tagged or image.endswith(":latest")
        c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        c.setdefault("resources", {})
        for p in c.get("ports") or []:
            p.setdefault("protocol", "TCP")
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("fieldRef")
            if ref is not None:
                ref.setdefault("apiVersion", "v1")


def _quantity_ok(value: Any) -> bool:
    return isinstance(value, int | float) or bool(
        re.match(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i?|[mkMGTPE]|n|u)?$", str(value))
    )


def pod_spec_errors(spec: dict[str, Any]) -> Causes:
    """The required fields and enumerations of a PodSpec."""
    out: Causes = []
    containers = spec.get("containers")
    if not containers:
        out.append(("spec.containers", "Required value"))
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            path = f"spec.{group}[{i}]"
            name = c.get("name") or ""
            if not name:
                out.append((f"{path}.name", "Required value"))
            else:
                out += dns_label_errors(name, f"{path}.name")
                if name in names:
                    out.append((f"{path}.name", f'Duplicate value: "{name}"'))
                names.add(name)
            if not c.get("image"):
                out.append((f"{path}.image", "Required value"))
            for j, e in enumerate(c.get("env") or []):
                if not e.get("name") or not _ENV_NAME.match(e["name"]):
                    out.append((f"{path}.env[{j}].name", f'Invalid value: "{e.get("name", "")}": '
                                "a valid environment variable name must consist of alphabetic "
                                "characters, digits, '_', '-', or '.', and must not start with a "
                                "digit"))
                if "value" in e and "valueFrom" in e and e["value"]:
                    out.append((f"{path}.env[{j}].valueFrom", "Invalid value: \"\": may not be "
                                "specified when `value` is not empty"))
            for kind in ("requests", "limits"):
                for res, qty in ((c.get("resources") or {}).get(kind) or {}).items():
                    if not _quantity_ok(qty):
                        out.append((f"{path}.resources.{kind}[{res}]", f'Invalid value: "{qty}": '
                                    "must match the regex "
                                    "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"))
            policy = c.get("terminationMessagePolicy", "File")
            if policy not in ("File", "FallbackToLogsOnError"):
                out.append((f"{path}.terminationMessagePolicy", f'Unsupported value: "{policy}": '
                            'supported values: "File", "FallbackToLogsOnError"'))
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        out.append(("spec.restartPolicy", f'Unsupported value: "{policy}": supported values: '
                    '"Always", "OnFailure", "Never"'))
    for fld in ("hostname", "subdomain"):
        if spec.get(fld):
            out += dns_label_errors(spec[fld], f"spec.{fld}")
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or grace < 0):
        out.append(("spec.terminationGracePeriodSeconds", f"Invalid value: {grace}: must be "
                    "greater than or equal to 0"))
    return out


_MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds",
                     "schedulingGates")


def pod_update_errors(old: dict[str, Any], new: dict[str, Any]) -> Causes:
    """A pod's spec is immutable except images and a few fields (real message kept)."""
    def strip(spec: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in spec.items() if k not in _MUTABLE_POD_SPEC}
        for group in ("containers", "initContainers"):
            if group in out:
                out[group] = [{k: v for k, v in c.items() if k != "image"} for c in out[group]]
        return out

    if strip(old.get("spec") or {}) != strip(new.get("spec") or {}):
        return [("spec", "Forbidden: pod updates may not change fields other than "
                 "`spec.containers[*].image`,`spec.initContainers[*].image`,"
                 "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing "
                 "tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if "
                 "it was previously negative)")]
    return []


def qos_class(pod: dict[str, Any]) -> str:
    """BestEffort / Burstable / Guaranteed from the containers' requests and limits."""
    containers = pod.get("spec", {}).get("containers") or []
    any_set, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or str(req.get(r, lim[r])) != str(lim[r]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# ---------------------------------------------------------------- services, secrets


def default_service(svc: dict[str, Any], allocate_ip: Any) -> None:
    """Type ClusterIP, an allocated cluster IP unless headless, ports' protocol/targetPort."""
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("clusterIP") != "None":
        spec.setdefault("clusterIP", allocate_ip())
    spec["clusterIPs"] = [spec["clusterIP"]]
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        p.setdefault("protocol", "TCP")
        if "port" in p:
            p.setdefault("targetPort", p["port"])


def service_errors(svc: dict[str, Any]) -> Causes:
    """Ports are required unless the service is headless; each port needs a number."""
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or []
    out: Causes = []
    if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
        out.append(("spec.ports", "Required value"))
    for i, p in enumerate(ports):
        port = p.get("port")
        if not isinstance(port, int) or not 0 < port < 65536:
            out.append((f"spec.ports[{i}].port", f"Invalid value: {port}: must be between 1 and "
                        "65535, inclusive"))
        if len(ports) > 1 and not p.get("name"):
            out.append((f"spec.ports[{i}].name", "Required value"))
    return out


def normalize_secret(secret: dict[str, Any]) -> Causes:
    """Fold `stringData` into base64 `data` and check keys/values, as the server does."""
    out: Causes = []
    data = dict(secret.get("data") or {})
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    for key, value in data.items():
        if not _SECRET_KEY.match(key):
            out.append((f"data[{key}]", f'Invalid value: "{key}": a valid config key must consist '
                        "of alphanumeric characters, '-', '_' or '.'"))
        try:
            base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "illegal base64 data in secret value") from None
    if data:
        secret["data"] = data
    secret.setdefault("type", "Opaque")
    return out


def check(kind: str, group: str, name: str, causes: Causes) -> None:
    """Raise 422 Invalid when there are causes."""
    if causes:
        raise invalid(kind, group, name, causes)
