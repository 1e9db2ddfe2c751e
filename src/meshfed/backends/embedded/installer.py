"""What ``istioctl install -f <IstioOperator>`` puts into a cluster, as objects the embedded mesh runs.

Only the parts of the IstioOperator API the suite uses are read: ``profile`` (default, ``remote``,
``empty``), ``revision``, ``meshConfig`` (trustDomain, caCertificates, trustDomainAliases),
``values.global`` (meshID, multiCluster.clusterName, network, externalIstiod, remotePilotAddress),
``values.pilot.env``, ``values.istiodRemote.injectionPath`` and ``components.ingressGateways``.
Any other field is refused with a sentence naming it, so nothing is silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import yaml

from meshfed.backends.embedded.store import StoreError
from meshfed.manifests import ISTIO_SYSTEM, Obj

_SPEC_FIELDS = {"profile", "revision", "meshConfig", "values", "components"}
_MESH_FIELDS = {"trustDomain", "caCertificates", "trustDomainAliases", "defaultConfig"}
_VALUE_FIELDS = {"global", "pilot", "istiodRemote", "gateways"}


def _check(operator: Obj) -> None:
    spec = operator.get("spec") or {}
    name = operator["metadata"]["name"]
    for fields, section, allowed in (
        (spec, "spec", _SPEC_FIELDS),
        (spec.get("meshConfig") or {}, "spec.meshConfig", _MESH_FIELDS),
        (spec.get("values") or {}, "spec.values", _VALUE_FIELDS),
    ):
        unknown = sorted(set(fields) - allowed)
        if unknown:
            raise StoreError(
                f"IstioOperator {name!r}: the embedded mesh does not interpret {section}.{unknown[0]}; it reads {', '.join(sorted(allowed))}"
            )
    profile = spec.get("profile", "default")
    if profile not in ("default", "remote", "empty", "minimal"):
        raise StoreError(
            f"IstioOperator {name!r}: profile {profile!r} is not one the embedded mesh installs (default, minimal, remote, empty)"
        )


def _meta(name: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {"name": name, "namespace": ISTIO_SYSTEM, "labels": dict(labels or {})}


def objects_for(operator: Obj, cluster: str, version: str) -> list[Obj]:
    _check(operator)
    spec = operator.get("spec") or {}
    values = spec.get("values") or {}
    global_values = values.get("global") or {}
    revision = spec.get("revision") or ""
    suffix = f"-{revision}" if revision else ""
    rev_label = {"istio.io/rev": revision or "default"}
    profile = spec.get("profile", "default")
    objects: list[Obj] = []
    if profile in ("default", "minimal", "remote"):
        mesh = dict(spec.get("meshConfig") or {})
        mesh.setdefault("trustDomain", "cluster.local")
        mesh.setdefault("defaultConfig", {})["meshId"] = global_values.get("meshID", "")
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"istio{suffix}", rev_label),
                "data": {"mesh": yaml.safe_dump(mesh)},
            }
        )
        injector = {"global": global_values, "revision": revision, "istiodRemote": values.get("istiodRemote") or {}}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"istio-sidecar-injector{suffix}", rev_label),
                "data": {"values": json.dumps(injector), "config": "policy: enabled"},
            }
        )
    if profile in ("default", "minimal"):
        env = [{"name": "CLUSTER_ID", "value": global_values.get("multiCluster", {}).get("clusterName", cluster)}]
        if global_values.get("externalIstiod"):
            env.append({"name": "EXTERNAL_ISTIOD", "value": "true"})
        if revision:
            env.append({"name": "REVISION", "value": revision})
        env += [{"name": k, "value": str(v)} for k, v in ((values.get("pilot") or {}).get("env") or {}).items()]
        labels = {"app": "istiod", "istio": "pilot", **rev_label}
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(f"istiod{suffix}")},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(f"istiod{suffix}", labels),
                "spec": {
                    "selector": {"app": "istiod", **rev_label},
                    "ports": [
                        {"name": "grpc-xds", "port": 15010, "targetPort": 15010},
                        {"name": "https-dns", "port": 15012, "targetPort": 15012},
                        {"name": "https-webhook", "port": 443, "targetPort": 15017},
                        {"name": "http-monitoring", "port": 15014, "targetPort": 15014},
                    ],
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": _meta(f"istiod{suffix}", labels),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": {"app": "istiod", **rev_label}},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": f"istiod{suffix}",
                            "containers": [
                                {"name": "discovery", "image": f"docker.io/istio/pilot:{version}", "env": env}
                            ],
                        },
                    },
                },
            },
        ]
    remote_pilot = str(global_values.get("remotePilotAddress") or "")
    if profile == "remote" and remote_pilot[:1].isdigit():
        objects += _remote_istiod(remote_pilot, suffix, rev_label)
    for gateway in (spec.get("components") or {}).get("ingressGateways") or []:
        if gateway.get("enabled", True):
            objects += _gateway(gateway, version, rev_label)
    return objects


def _remote_istiod(address: str, suffix: str, rev_label: Mapping[str, str]) -> list[Obj]:
    """A remote's ``istiod`` Service without a selector and its EndpointSlice holding ``remotePilotAddress``
    (``remote-istiod-service.yaml`` and ``remote-istiod-endpointslices.yaml`` of the istio-discovery chart):
    the remote's proxies reach istiod, and its API server the injector, through them."""
    name = f"istiod{suffix}"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, rev_label),
            "spec": {
                "ports": [
                    {"name": "tcp-istiod", "port": 15012, "protocol": "TCP"},
                    {"name": "tcp-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
                ]
            },
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": _meta(name, {"kubernetes.io/service-name": name, **rev_label}),
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "tcp-istiod", "port": 15012}, {"name": "tcp-webhook", "port": 15017}],
        },
    ]


def _gateway(gateway: Mapping[str, Any], version: str, rev_label: Mapping[str, str]) -> list[Obj]:
    name = gateway["name"]
    labels = {**dict(gateway.get("label") or {}), **rev_label}
    k8s = gateway.get("k8s") or {}
    account = f"{name}-service-account"
    ports = [
        {"name": p["name"], "port": int(p["port"]), "targetPort": int(p.get("targetPort", p["port"]))}
        for p in (k8s.get("service") or {}).get("ports", [])
    ]
    selector = {k: v for k, v in labels.items() if k in ("istio", "app")}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(account)},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, labels),
            "spec": {"type": "LoadBalancer", "selector": selector, "ports": ports},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"inject.istio.io/templates": "gateway"}},
                    "spec": {
                        "serviceAccountName": account,
                        "containers": [
                            {
                                "name": "istio-proxy",
                                "image": f"docker.io/istio/proxyv2:{version}",
                                "args": ["proxy", "router"],
                                "env": list(k8s.get("env") or []),
                            }
                        ],
                    },
                },
            },
        },
    ]
