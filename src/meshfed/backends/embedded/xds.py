"""What istiod pushes to a proxy: the embedded mesh's stand-in for Envoy's xDS resources.

A proxy keeps the last configuration it was given: when istiod goes away, existing proxies keep
their endpoints and policies, as Envoy does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """Where a proxy sends a request: a pod address, or the east-west gateway of the pod's network."""

    address: str
    port: int
    cluster: str
    network: str
    region: str
    zone: str
    pod: str  # the pod behind it (for a gateway endpoint: the pod the gateway will pick among)
    via_gateway: bool = False
    mtls: bool = True  # the pod has a sidecar (security.istio.io/tlsMode=istio): Istio's auto mTLS uses it


@dataclass(frozen=True)
class ServiceView:
    fqdn: str
    port: int
    target_port: int
    endpoints: tuple[Endpoint, ...]
    accounts: frozenset[str]  # SPIFFE IDs the server may present (Istio's secure naming)
    traffic_policy: Mapping[str, Any] = field(default_factory=dict)  # DestinationRule trafficPolicy


@dataclass(frozen=True)
class AuthzPolicy:
    name: str
    action: str  # ALLOW | DENY
    rules: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class GatewayServer:
    port: int
    mode: str  # AUTO_PASSTHROUGH | PASSTHROUGH | SIMPLE
    hosts: tuple[str, ...]
    credential: str = ""  # SIMPLE: the Secret (in the gateway's namespace) whose certificate it serves


@dataclass(frozen=True)
class TlsRoute:
    port: int
    sni_hosts: tuple[str, ...]
    host: str
    target_port: int
    terminated: bool = False  # an http route by port, behind a server that terminates TLS


@dataclass(frozen=True)
class ProxyConfig:
    trust_domain: str
    services: Mapping[tuple[str, int], ServiceView]
    mtls_mode: str = "PERMISSIVE"  # the PeerAuthentication that applies to this workload
    authz: tuple[AuthzPolicy, ...] = ()
    gateway_servers: tuple[GatewayServer, ...] = ()
    tls_routes: tuple[TlsRoute, ...] = ()
    trust_domain_aliases: tuple[str, ...] = ()

    def trusts_domain(self, principal: str) -> bool:
        """Envoy's inbound validation takes only SPIFFE IDs of the trust domain or its aliases."""
        domain = principal.removeprefix("spiffe://").split("/", 1)[0]
        return domain == self.trust_domain or domain in self.trust_domain_aliases

    def service(self, fqdn: str, port: int) -> ServiceView | None:
        return self.services.get((fqdn, port))


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    """Istio host matching: ``*`` matches all, ``*.local`` any name ending in ``.local``."""
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def go_duration(text: str) -> timedelta:
    """A Go duration as istiod's environment takes it: ``24h``, ``1h30m``, ``90s``."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total, number = 0.0, ""
    index = 0
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = "ms" if text[index : index + 2] == "ms" else char
        if unit not in units or not number:
            raise ValueError(f"{text!r} is not a duration like 24h or 90m")
        total += float(number) * units[unit]
        number = ""
        index += len(unit)
    if number:
        raise ValueError(f"{text!r} is not a duration like 24h or 90m: a unit is missing")
    return timedelta(seconds=total)
