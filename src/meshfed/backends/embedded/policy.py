"""The Istio configuration istiod turns into a proxy's policies, decided as istiod decides it.

* DestinationRule: the one whose host (a short name is relative to the rule's namespace) is the service's.
* PeerAuthentication: workload selector over namespace over the root namespace (MeshConfig ``rootNamespace``,
  istiod's namespace by default); the oldest policy wins at each level (``ComposePeerAuthentication``); UNSET
  inherits from above.
* AuthorizationPolicy: those of the workload's namespace and of the root namespace that select it.
* Gateway and VirtualService: the servers of the Gateways whose selector takes the gateway proxy's labels, the TLS
  routes of the VirtualServices bound to them.

Each reads the store of istiod's own cluster (its kube client's): see ``istiod``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshfed.backends.embedded import xds
from meshfed.backends.embedded.store import ObjectStore, matches


def destination_rule(store: ObjectStore, fqdn: str) -> dict[str, Any]:
    """The trafficPolicy of the DestinationRule whose host (short names are relative to its namespace) is ``fqdn``."""
    for rule in store.list("DestinationRule"):
        if _qualify(rule["spec"].get("host", ""), rule["metadata"]["namespace"]) == fqdn:
            return dict(rule["spec"].get("trafficPolicy") or {})
    return {}


def mtls_mode(store: ObjectStore, root: str, namespace: str, labels: Mapping[str, str]) -> str:
    """PeerAuthentication precedence: workload selector > namespace > mesh (``root``: the root namespace)."""
    best: tuple[int, str] = (-1, "PERMISSIVE")
    # The oldest policy wins at each level (ComposePeerAuthentication); UNSET inherits from above.
    policies = sorted(
        store.list("PeerAuthentication"),
        key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]),
    )
    for policy in policies:
        ns = policy["metadata"]["namespace"]
        selector = (policy["spec"].get("selector") or {}).get("matchLabels")
        mode = ((policy["spec"].get("mtls") or {}).get("mode") or "UNSET").upper()
        if mode == "UNSET":
            continue
        if ns == namespace and selector and matches(labels, selector):
            rank = 2
        elif ns == namespace and not selector:
            rank = 1
        elif ns == root and not selector:
            rank = 0
        else:
            continue
        if rank > best[0]:
            best = (rank, mode)
    return best[1]


def authz(store: ObjectStore, root: str, namespace: str, labels: Mapping[str, str]) -> tuple[xds.AuthzPolicy, ...]:
    """The AuthorizationPolicies of the workload's namespace and of the root namespace that select it."""
    found = []
    for policy in store.list("AuthorizationPolicy"):
        ns = policy["metadata"]["namespace"]
        selector = (policy["spec"].get("selector") or {}).get("matchLabels")
        if ns not in (namespace, root) or (selector and not matches(labels, selector)):
            continue
        spec = policy["spec"]
        found.append(
            xds.AuthzPolicy(policy["metadata"]["name"], spec.get("action", "ALLOW"), tuple(spec.get("rules") or []))
        )
    return tuple(found)


def gateway_config(
    store: ObjectStore, labels: Mapping[str, str]
) -> tuple[tuple[xds.GatewayServer, ...], tuple[xds.TlsRoute, ...]]:
    """The Gateway servers that select a gateway proxy's labels, and the TLS routes (and the http routes by port,
    behind a server that terminates TLS) of VirtualServices bound to them."""
    servers: list[xds.GatewayServer] = []
    names: set[str] = set()
    for gateway in store.list("Gateway"):
        if not matches(labels, gateway["spec"].get("selector") or {}):
            continue
        names.add(gateway["metadata"]["name"])
        names.add(f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}")
        for server in gateway["spec"].get("servers") or []:
            mode = ((server.get("tls") or {}).get("mode") or "").upper()
            credential = str((server.get("tls") or {}).get("credentialName") or "")
            servers.append(
                xds.GatewayServer(int(server["port"]["number"]), mode, tuple(server.get("hosts") or []), credential)
            )
    routes: list[xds.TlsRoute] = []
    for service in store.list("VirtualService"):
        if not names.intersection(service["spec"].get("gateways") or []):
            continue
        for route in service["spec"].get("tls") or []:
            destination = route["route"][0]["destination"]
            for match in route.get("match") or []:
                routes.append(
                    xds.TlsRoute(
                        int(match.get("port", 0)),
                        tuple(match.get("sniHosts") or []),
                        destination["host"],
                        int(destination["port"]["number"]),
                    )
                )
        for route in service["spec"].get("http") or []:
            destination = route["route"][0]["destination"]
            for match in route.get("match") or []:
                routes.append(
                    xds.TlsRoute(
                        int(match.get("port", 0)),
                        tuple(service["spec"].get("hosts") or []),
                        destination["host"],
                        int(destination["port"]["number"]),
                        terminated=True,
                    )
                )
    return tuple(servers), tuple(routes)


def _qualify(host: str, namespace: str) -> str:
    """``echo`` -> ``echo.<namespace>.svc.cluster.local``; ``echo.ns`` -> ``echo.ns.svc.cluster.local``."""
    if host.endswith(".cluster.local"):
        return host
    name, _, rest = host.partition(".")
    return f"{name}.{rest.split('.')[0] if rest else namespace}.svc.cluster.local"
