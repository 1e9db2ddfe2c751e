"""The Istio fields the embedded mesh interprets; any other field is refused with a sentence.

This keeps the emulation honest: a policy the embedded mesh would not enforce is never accepted and
silently ignored.
"""

from __future__ import annotations

from typing import Any

from meshfed.backends.embedded.store import StoreError
from meshfed.manifests import Obj

ANY: dict[str, Any] = {}  # any value
_SELECTOR = {"matchLabels": ANY}

SCHEMAS: dict[str, dict[str, Any]] = {
    "AuthorizationPolicy": {
        "selector": _SELECTOR,
        "action": ("ALLOW", "DENY"),
        "rules": [
            {"from": [{"source": {"principals": ANY, "notPrincipals": ANY, "namespaces": ANY, "notNamespaces": ANY}}]}
        ],
    },
    "PeerAuthentication": {"selector": _SELECTOR, "mtls": {"mode": ("STRICT", "PERMISSIVE", "UNSET")}},
    "DestinationRule": {
        "host": ANY,
        "trafficPolicy": {
            "loadBalancer": {"localityLbSetting": {"enabled": ANY, "failover": [{"from": ANY, "to": ANY}]}},
            "outlierDetection": {
                "consecutive5xxErrors": ANY,
                "consecutiveGatewayErrors": ANY,
                "interval": ANY,
                "baseEjectionTime": ANY,
                "maxEjectionPercent": ANY,
            },
            "tls": {"mode": ("ISTIO_MUTUAL",)},
            # How the external control plane's ingress gateway opens TLS to istiod (the guide's external-istiod-dr).
            "portLevelSettings": [
                {
                    "port": {"number": ANY},
                    "tls": {"mode": ("SIMPLE",), "credentialName": ANY},
                    "connectionPool": {"http": {"h2UpgradePolicy": ("UPGRADE",)}},
                }
            ],
        },
    },
    "Gateway": {
        "selector": ANY,
        "servers": [
            {
                "port": {"number": ANY, "name": ANY, "protocol": ANY},
                "tls": {"mode": ("AUTO_PASSTHROUGH", "PASSTHROUGH", "SIMPLE"), "credentialName": ANY},
                "hosts": ANY,
            }
        ],
    },
    "VirtualService": {
        "hosts": ANY,
        "gateways": ANY,
        "tls": [
            {
                "match": [{"port": ANY, "sniHosts": ANY}],
                "route": [{"destination": {"host": ANY, "port": {"number": ANY}}}],
            }
        ],
        # Routes by port only: the guide's hostname variant, behind a gateway server that terminates TLS.
        "http": [{"match": [{"port": ANY}], "route": [{"destination": {"host": ANY, "port": {"number": ANY}}}]}],
    },
}


def walk(value: Any, schema: Any, path: str, what: str) -> None:
    """Refuse (StoreError) the first field of ``value`` that ``schema`` does not name, or a value it does not take:
    a map names the fields read, a list the schema of every item, a tuple the values taken, ANY anything."""
    if schema is ANY:
        return
    if isinstance(schema, tuple):
        if value not in schema:
            raise StoreError(
                f"{what}: the embedded mesh does not interpret {path} = {value!r}; it takes {', '.join(schema)}"
            )
        return
    if isinstance(schema, list):
        for index, item in enumerate(value or []):
            walk(item, schema[0], f"{path}[{index}]", what)
        return
    if not isinstance(value, dict):
        raise StoreError(f"{what}: {path} must be a map")
    for key, item in value.items():
        if key not in schema:
            raise StoreError(
                f"{what}: the embedded mesh does not interpret {path}.{key}; it reads {', '.join(sorted(schema))}"
            )
        walk(item, schema[key], f"{path}.{key}", what)


def admit(obj: Obj) -> None:
    kind = obj.get("kind", "")
    if kind in SCHEMAS:
        walk(obj.get("spec") or {}, SCHEMAS[kind], "spec", f"{kind} {obj.get('metadata', {}).get('name')!r}")
