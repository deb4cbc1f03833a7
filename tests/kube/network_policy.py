"""NetworkPolicy (networking.k8s.io/v1) defaulting and validation, as the API server does them.

The emulator stores policies and cascades them with their owners; it does not enforce them
(emulated pods share the host's network stack). Checked here, as upstream's
`ValidateNetworkPolicySpec` checks them: label selectors, peers (exactly one of `ipBlock` or
pod/namespace selectors), ports (protocol, number or name, `endPort`), CIDRs and
`policyTypes`. Stricter than the server in one place, on purpose: a missing `podSelector`
is refused, as the OpenAPI schema (and so kubectl and kubernetes-validate) require it,
where the server would read it as `{}` (every pod of the namespace).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from .validation import Causes, label_selector_errors

PROTOCOLS = ("SCTP", "TCP", "UDP")
POLICY_TYPES = ("Egress", "Ingress")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def default_network_policy(policy: dict[str, Any]) -> None:
    """`policyTypes` from the rules given (Ingress always, Egress with egress rules), and
    TCP for ports naming no protocol (upstream's `SetDefaults_NetworkPolicy`)."""
    spec = policy.setdefault("spec", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")


def network_policy_errors(policy: dict[str, Any]) -> Causes:
    spec = policy.get("spec")
    if not isinstance(spec, dict):
        return [("spec", "Required value")]
    out: Causes = []
    if "podSelector" not in spec:
        out.append(("spec.podSelector", "Required value"))
    else:
        out += label_selector_errors(spec["podSelector"], "spec.podSelector")
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(spec.get(direction) or []):
            path = f"spec.{direction}[{i}]"
            for j, port in enumerate(rule.get("ports") or []):
                out += _port_errors(port, f"{path}.ports[{j}]")
            for j, peer in enumerate(rule.get(peers) or []):
                out += _peer_errors(peer, f"{path}.{peers}[{j}]")
    types = spec.get("policyTypes") or []
    for i, kind in enumerate(types):
        if kind not in POLICY_TYPES:
            supported = ", ".join(f'"{t}"' for t in POLICY_TYPES)
            out.append((f"spec.policyTypes[{i}]",
                        f'Unsupported value: "{kind}": supported values: {supported}'))
    if len(types) > len(POLICY_TYPES):
        out.append(("spec.policyTypes", f"Invalid value: {types}: may not have more than 2"))
    return out


def _peer_errors(peer: dict[str, Any], path: str) -> Causes:
    selectors = [key for key in ("podSelector", "namespaceSelector") if key in peer]
    out: Causes = []
    if "ipBlock" in peer and selectors:
        out.append((path, "Forbidden: may not specify both ipBlock and another peer"))
    elif "ipBlock" not in peer and not selectors:
        out.append((path, "Required value: must specify a peer"))
    for key in selectors:
        out += label_selector_errors(peer[key], f"{path}.{key}")
    if "ipBlock" in peer:
        out += _ip_block_errors(peer["ipBlock"], f"{path}.ipBlock")
    return out


def _ip_block_errors(block: dict[str, Any], path: str) -> Causes:
    try:
        network = ipaddress.ip_network(str(block.get("cidr", "")), strict=False)
    except ValueError:
        return [(f"{path}.cidr", f'Invalid value: "{block.get("cidr", "")}": must be a valid CIDR')]
    out: Causes = []
    for i, text in enumerate(block.get("except") or []):
        try:
            excluded = ipaddress.ip_network(str(text), strict=False)
        except ValueError:
            out.append((f"{path}.except[{i}]", f'Invalid value: "{text}": must be a valid CIDR'))
            continue
        if excluded.version != network.version or not excluded.subnet_of(network):
            out.append((f"{path}.except[{i}]",
                        f'Invalid value: "{text}": must be a strict subset of `cidr`'))
    return out


def _port_errors(port: dict[str, Any], path: str) -> Causes:
    out: Causes = []
    protocol = port.get("protocol", "TCP")
    if protocol not in PROTOCOLS:
        supported = ", ".join(f'"{p}"' for p in PROTOCOLS)
        out.append((f"{path}.protocol",
                    f'Unsupported value: "{protocol}": supported values: {supported}'))
    number = port.get("port")
    if isinstance(number, bool) or not isinstance(number, int | str | None):
        out.append((f"{path}.port", f"Invalid value: {number!r}: must be a number or a name"))
    elif isinstance(number, int) and not 0 < number < 65536:
        out.append((f"{path}.port",
                    f"Invalid value: {number}: must be between 1 and 65535, inclusive"))
    elif isinstance(number, str) and (len(number) > 15 or not _PORT_NAME.match(number)):
        out.append((f"{path}.port", f'Invalid value: "{number}": must be an IANA_SVC_NAME'))
    end = port.get("endPort")
    if end is not None:
        if not isinstance(number, int) or isinstance(number, bool):
            out.append((f"{path}.endPort", "Required value: may not be specified when `port` "
                                           "is not a number"))
        elif not isinstance(end, int) or end < number:
            out.append((f"{path}.endPort",
                        f"Invalid value: {end}: must be greater than or equal to `port`"))
    return out
