"""What ``istioctl install -f <IstioOperator>`` puts into a cluster, as objects the embedded mesh runs.

Only the parts of the IstioOperator API the suite uses are read (``SCHEMA``); any other field is refused with a
sentence naming it, so nothing is silently ignored. What each means here:

* ``profile``: ``default``/``minimal`` install istiod; ``empty`` only the components enabled; ``remote`` no
  istiod (see below). ``revision``: names and the ``istio.io/rev`` label.
* ``values.global.istioNamespace``: where everything goes (``istio-system`` when unset, as istioctl does).
* ``meshConfig`` (trustDomain, caCertificates, trustDomainAliases, rootNamespace, defaultConfig.discoveryAddress)
  and ``values.global.meshID``: the ``istio[-<rev>]`` ConfigMap istiod reads.
* istiod's environment: ``CLUSTER_ID`` (``multiCluster.clusterName``), ``EXTERNAL_ISTIOD``
  (``externalIstiod``), ``REVISION``, ``values.pilot.env``, then ``components.pilot.k8s.env`` (the last
  value of a name wins, as in a pod spec). ``components.pilot.k8s.overlays``: only the guide's patches that
  add ConfigMap volumes and their mounts to Deployment istiod (an index past the end appends).
* ``values.global.network``, ``istiodRemote.injectionPath``, ``caAddress``: the injection template's values
  (``caAddress`` must be ``discoveryAddress``'s address: the embedded proxy asks one address for both its
  certificate and its configuration). ``operatorManageWebhooks``: no webhook configuration is installed;
  ``configValidation``: none is emulated either way.
* The remote profile (``profile-remote.yaml``: ``omitSidecarInjectorConfigMap``, ``configMap: false``):
  istiod's selector-less Service and the EndpointSlice of ``remotePilotAddress``
  (``remote-istiod-service.yaml``, ``remote-istiod-endpointslices.yaml``), the injection webhook configuration
  calling it at ``injectionPath``, the ``istio`` ConfigMap only with ``values.pilot.configMap``, and with
  ``configCluster`` the ``istiod`` ServiceAccount an external istiod reads the cluster as.
* ``components.ingressGateways``: a Deployment of the gateway proxy and its LoadBalancer Service
  (``istio-ingressgateway`` is labelled ``istio: ingressgateway`` when no label is given, as Istio's default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import yaml

from meshfed.backends.embedded.admission import ANY, walk
from meshfed.backends.embedded.store import StoreError
from meshfed.manifests import ISTIO_SYSTEM, Obj

_ENV = [{"name": ANY, "value": ANY}]
SCHEMA: dict[str, Any] = {
    "profile": ("default", "minimal", "remote", "empty"),
    "revision": ANY,
    "meshConfig": {
        "trustDomain": ANY,
        "caCertificates": ANY,
        "trustDomainAliases": ANY,
        "rootNamespace": ANY,
        "defaultConfig": {"discoveryAddress": ANY},
    },
    "values": {
        "global": {
            "meshID": ANY,
            "multiCluster": {"clusterName": ANY},
            "network": ANY,
            "externalIstiod": ANY,
            "remotePilotAddress": ANY,
            "istioNamespace": ANY,
            "configCluster": ANY,
            "caAddress": ANY,
            "operatorManageWebhooks": ANY,
            "configValidation": ANY,
        },
        "pilot": {"env": ANY, "configMap": ANY},
        "istiodRemote": {"injectionPath": ANY},
        "gateways": {"istio-ingressgateway": {"injectionTemplate": ("gateway",)}},
    },
    "components": {
        "pilot": {
            "enabled": ANY,
            "k8s": {
                "env": _ENV,
                "overlays": [{"kind": ("Deployment",), "name": ANY, "patches": [{"path": ANY, "value": ANY}]}],
            },
        },
        "ingressGateways": [
            {
                "name": ANY,
                "enabled": ANY,
                "label": ANY,
                "k8s": {"env": _ENV, "service": {"ports": [{"name": ANY, "port": ANY, "targetPort": ANY}]}},
            }
        ],
    },
}
_VOLUME = re.compile(r"spec\.template\.spec\.volumes\[\d+\]")
_MOUNT = re.compile(r"spec\.template\.spec\.containers\[0\]\.volumeMounts\[\d+\]")


def _refuse(operator: Obj, problem: str) -> StoreError:
    return StoreError(f"IstioOperator {operator['metadata']['name']!r}: {problem}")


def _check(operator: Obj) -> None:
    walk(operator.get("spec") or {}, SCHEMA, "spec", f"IstioOperator {operator['metadata']['name']!r}")
    spec = operator.get("spec") or {}
    global_values = (spec.get("values") or {}).get("global") or {}
    discovery = ((spec.get("meshConfig") or {}).get("defaultConfig") or {}).get("discoveryAddress")
    if global_values.get("caAddress") and global_values["caAddress"] != discovery:
        raise _refuse(
            operator,
            "values.global.caAddress must be meshConfig.defaultConfig.discoveryAddress: the embedded proxies ask one "
            "address for both their certificate and their configuration",
        )
    if spec.get("profile") == "remote" and ((spec.get("components") or {}).get("pilot") or {}).get("enabled"):
        raise _refuse(operator, "the remote profile runs no istiod: components.pilot.enabled is not taken with it")


def _meta(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> Obj:
    return {"name": name, "namespace": namespace, "labels": dict(labels or {})}


def install_namespace(operator: Obj) -> str:
    """Where ``istioctl install`` puts the objects: ``values.global.istioNamespace``, else istio-system."""
    global_values = ((operator.get("spec") or {}).get("values") or {}).get("global") or {}
    return str(global_values.get("istioNamespace") or ISTIO_SYSTEM)


def objects_for(operator: Obj, cluster: str, version: str) -> list[Obj]:
    _check(operator)
    spec = operator.get("spec") or {}
    values = spec.get("values") or {}
    global_values = values.get("global") or {}
    namespace = install_namespace(operator)
    revision = spec.get("revision") or ""
    suffix = f"-{revision}" if revision else ""
    rev_label = {"istio.io/rev": revision or "default"}
    profile = spec.get("profile", "default")
    pilot = (spec.get("components") or {}).get("pilot") or {}
    runs_istiod = profile in ("default", "minimal") or (profile == "empty" and bool(pilot.get("enabled")))
    remote = profile == "remote"
    objects: list[Obj] = []
    if runs_istiod or (remote and (values.get("pilot") or {}).get("configMap")):
        mesh = dict(spec.get("meshConfig") or {})
        mesh.setdefault("trustDomain", "cluster.local")
        mesh["defaultConfig"] = {**(mesh.get("defaultConfig") or {}), "meshId": global_values.get("meshID", "")}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"istio{suffix}", namespace, rev_label),
                "data": {"mesh": yaml.safe_dump(mesh)},
            }
        )
    if runs_istiod:
        injector = {"global": global_values, "revision": revision, "istiodRemote": values.get("istiodRemote") or {}}
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(f"istio-sidecar-injector{suffix}", namespace, rev_label),
                "data": {"values": json.dumps(injector), "config": "policy: enabled"},
            }
        )
    if runs_istiod:
        objects += _istiod(operator, cluster, version, namespace, suffix, rev_label)
    remote_pilot = str(global_values.get("remotePilotAddress") or "")
    if remote and remote_pilot[:1].isdigit():
        objects += _remote_istiod(remote_pilot, namespace, suffix, rev_label)
    if remote and not global_values.get("operatorManageWebhooks"):
        path = str((values.get("istiodRemote") or {}).get("injectionPath") or "/inject")
        objects.append(_injection_webhook(namespace, suffix, rev_label, path))
    if profile != "empty":  # the base chart's reader-serviceaccount.yaml: the account remote secrets read as
        objects.append(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("istio-reader-service-account", namespace)}
        )
    if remote and global_values.get("configCluster"):
        objects.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(f"istiod{suffix}", namespace)})
    for gateway in (spec.get("components") or {}).get("ingressGateways") or []:
        if gateway.get("enabled", True):
            objects += _gateway(gateway, version, namespace, rev_label)
    return objects


def _istiod(
    operator: Obj, cluster: str, version: str, namespace: str, suffix: str, rev_label: Mapping[str, str]
) -> list[Obj]:
    spec = operator.get("spec") or {}
    values = spec.get("values") or {}
    global_values = values.get("global") or {}
    pilot = (spec.get("components") or {}).get("pilot") or {}
    env = {"CLUSTER_ID": str(global_values.get("multiCluster", {}).get("clusterName", cluster))}
    if global_values.get("externalIstiod"):
        env["EXTERNAL_ISTIOD"] = "true"
    if spec.get("revision"):
        env["REVISION"] = spec["revision"]
    env |= {k: str(v) for k, v in ((values.get("pilot") or {}).get("env") or {}).items()}
    env |= {str(e["name"]): str(e.get("value", "")) for e in (pilot.get("k8s") or {}).get("env") or []}
    volumes, mounts = _overlay_volumes(operator, f"istiod{suffix}")
    labels = {"app": "istiod", "istio": "pilot", **rev_label}
    container: Obj = {
        "name": "discovery",
        "image": f"docker.io/istio/pilot:{version}",
        "env": [{"name": k, "value": v} for k, v in env.items()],
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: Obj = {"serviceAccountName": f"istiod{suffix}", "containers": [container]}
    if volumes:
        pod_spec["volumes"] = volumes
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(f"istiod{suffix}", namespace)},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(f"istiod{suffix}", namespace, labels),
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
            "metadata": _meta(f"istiod{suffix}", namespace, labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "istiod", **rev_label}},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
    ]


def _overlay_volumes(operator: Obj, deployment: str) -> tuple[list[Obj], list[Obj]]:
    """The guide's overlays of Deployment istiod: ConfigMap volumes and their mounts, appended."""
    pilot = ((operator.get("spec") or {}).get("components") or {}).get("pilot") or {}
    volumes: list[Obj] = []
    mounts: list[Obj] = []
    for overlay in (pilot.get("k8s") or {}).get("overlays") or []:
        if overlay.get("name") != deployment:
            raise _refuse(operator, f"an overlay of Deployment {overlay.get('name')!r}: istiod's is {deployment!r}")
        for patch in overlay.get("patches") or []:
            path, value = str(patch.get("path")), yaml.safe_load(str(patch.get("value") or ""))
            if _VOLUME.fullmatch(path) and isinstance(value, dict) and set(value) == {"name", "configMap"}:
                volumes.append(value)
            elif _MOUNT.fullmatch(path) and isinstance(value, dict) and set(value) == {"name", "mountPath"}:
                mounts.append(value)
            else:
                raise _refuse(
                    operator,
                    f"the embedded mesh does not interpret the overlay patch {path} = {patch.get('value')!r}; it "
                    "takes a ConfigMap volume (spec.template.spec.volumes[N]: name, configMap) and its mount "
                    "(spec.template.spec.containers[0].volumeMounts[N]: name, mountPath)",
                )
    return volumes, mounts


def _remote_istiod(address: str, namespace: str, suffix: str, rev_label: Mapping[str, str]) -> list[Obj]:
    """A remote's ``istiod`` Service without a selector and its EndpointSlice holding ``remotePilotAddress``
    (``remote-istiod-service.yaml`` and ``remote-istiod-endpointslices.yaml`` of the istio-discovery chart):
    the remote's proxies reach istiod, and its API server the injector, through them."""
    name = f"istiod{suffix}"
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, namespace, rev_label),
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
            "metadata": _meta(name, namespace, {"kubernetes.io/service-name": name, **rev_label}),
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [{"name": "tcp-istiod", "port": 15012}, {"name": "tcp-webhook", "port": 15017}],
        },
    ]


def _injection_webhook(namespace: str, suffix: str, rev_label: Mapping[str, str], path: str) -> Obj:
    """The remote profile's ``MutatingWebhookConfiguration`` (``istiod-remote`` ``mutatingwebhook.yaml``):
    ``istio-sidecar-injector[-<rev>][-<namespace>]``, calling istiod's Service on 443 at the injection path,
    ``caBundle`` empty until istiod patches it. Its four webhooks differ only in their selectors, which the
    embedded API server applies by the revision a namespace or pod asks for: one stands for them."""
    name = f"istio-sidecar-injector{suffix}" + ("" if namespace == ISTIO_SYSTEM else f"-{namespace}")
    prefix = f"{suffix[1:]}." if suffix else ""
    service = {"name": f"istiod{suffix}", "namespace": namespace, "path": path, "port": 443}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app": "sidecar-injector", **rev_label}},
        "webhooks": [
            {
                "name": f"{prefix}namespace.sidecar-injector.istio.io",
                "clientConfig": {"service": service},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1beta1", "v1"],
            }
        ],
    }


def _gateway(gateway: Mapping[str, Any], version: str, namespace: str, rev_label: Mapping[str, str]) -> list[Obj]:
    name = gateway["name"]
    label = dict(gateway.get("label") or {})
    if not label and name == "istio-ingressgateway":
        label = {"istio": "ingressgateway", "app": "istio-ingressgateway"}
    labels = {**label, **rev_label}
    k8s = gateway.get("k8s") or {}
    account = f"{name}-service-account"
    ports = [
        {"name": p["name"], "port": int(p["port"]), "targetPort": int(p.get("targetPort", p["port"]))}
        for p in (k8s.get("service") or {}).get("ports", [])
    ]
    selector = {k: v for k, v in labels.items() if k in ("istio", "app")}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(account, namespace)},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(name, namespace, labels),
            "spec": {"type": "LoadBalancer", "selector": selector, "ports": ports},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(name, namespace, labels),
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
