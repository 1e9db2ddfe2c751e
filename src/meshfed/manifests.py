"""Every Kubernetes and Istio object the suite creates, as plain dicts.

Real backends send them to an API server (or to ``istioctl install``); the embedded mesh interprets
them. Names, labels and fields follow Istio's samples (``samples/multicluster``) and guides, so that
they mean the same thing to both.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshfed.topology import ClusterSpec, MeshSpec

Obj = dict[str, Any]
CANARY = "canary"  # the revision CanaryUpgrade installs (a name without dots, as Istio requires)

ISTIO_SYSTEM = "istio-system"
# The external control plane's namespace, in the external cluster and in every data-plane cluster (Istio's
# "Install Istio with an External Control Plane" guide); the data-plane clusters' stands for istio-system.
EXTERNAL_ISTIOD = "external-istiod"
INGRESS_GATEWAY = "istio-ingressgateway"
TEST_NAMESPACE = "meshfed"
NETWORK_LABEL = "topology.istio.io/network"
TLS_MODE_LABEL = "security.istio.io/tlsMode"  # the injector's: "istio" on a pod whose sidecar takes Istio's mTLS
CONTROL_PLANE_CLUSTERS = "topology.istio.io/controlPlaneClusters"
MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"
EASTWEST_GATEWAY = "istio-eastwestgateway"
ECHO_PORT = 8080
WORKLOAD_CONFIGMAP = "meshfed-workload"
WORKLOAD_MOUNT = "/opt/meshfed"
CLIENT = "client"
ECHO = "echo"


def image_version(image: str) -> str:
    """The Istio version of an Istio image (``docker.io/istio/pilot:1.30.3`` -> 1.30.3; digests ignored)."""
    tag = image.split("@")[0].rsplit("/", 1)[-1]
    return tag.split(":", 1)[1] if ":" in tag else "unknown"


def istio_minor(version: str) -> tuple[int, int] | None:
    """The release line of an Istio version ("1.30.3", "1.31-dev", "1.30.3-asm.2" -> (1, 30)); None when unknown."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found.group(1)), int(found.group(2))) if found else None


def _meta(name: str, namespace: str | None = None, **fields: Mapping[str, str]) -> Obj:
    meta: Obj = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta.update({key: dict(value) for key, value in fields.items() if value})
    return meta


def namespace(name: str, labels: Mapping[str, str] | None = None, annotations: Mapping[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": _meta(name, labels=labels or {}, annotations=annotations or {}),
    }


def istio_system(cluster: ClusterSpec, control_plane_cluster: str | None = None) -> Obj:
    """``istio-system`` with the network label; on a remote, the ``controlPlaneClusters`` annotation."""
    annotations = {CONTROL_PLANE_CLUSTERS: control_plane_cluster} if control_plane_cluster else {}
    return namespace(ISTIO_SYSTEM, {NETWORK_LABEL: cluster.network}, annotations)


def secret(
    name: str,
    namespace_: str,
    data: Mapping[str, bytes],
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace_, labels=labels or {}, annotations=annotations or {}),
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def cacerts(files: Mapping[str, bytes]) -> Obj:
    """The plug-in CA Secret istiod mounts at ``/etc/cacerts`` (holds ``ca-key.pem``: never log it)."""
    return secret("cacerts", ISTIO_SYSTEM, files)


def istio_operator(
    cluster: ClusterSpec,
    mesh: MeshSpec,
    *,
    external_istiod: bool = False,
    revision: str = "",
    pilot_env: Mapping[str, str] | None = None,
) -> Obj:
    """The control plane of a primary: ``istioctl install -f`` this (meshID, clusterName, network;
    ``pilot_env`` e.g. ``ISTIO_MULTIROOT_MESH=true`` for a root rotation)."""
    global_values: Obj = {
        "meshID": mesh.mesh_id,
        "multiCluster": {"clusterName": cluster.name},
        "network": cluster.network,
    }
    if external_istiod:
        global_values["externalIstiod"] = True
    mesh_config: Obj = {"trustDomain": mesh.trust_domain}
    values: Obj = {"global": global_values}
    if pilot_env:
        values["pilot"] = {"env": dict(pilot_env)}
    spec: Obj = {"meshConfig": mesh_config, "values": values}
    if revision:
        spec["revision"] = revision
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": _meta(f"control-plane{'-' + revision if revision else ''}", ISTIO_SYSTEM),
        "spec": spec,
    }


def istio_operator_remote(
    cluster: ClusterSpec,
    mesh: MeshSpec,
    remote_pilot_address: str,
    revision: str = "",
    *,
    namespace_: str = ISTIO_SYSTEM,
    config_cluster: bool = False,
) -> Obj:
    """The remote profile: no istiod; injection and config come from the primary's (or the external) istiod.
    With an external control plane it goes into ``external-istiod``; the config cluster also gets the mesh's
    CRDs, its ``istio`` mesh config and the ServiceAccount the external istiod reads it with (the guide's
    IP-address variant: ``remotePilotAddress`` and ``injectionPath``, as Istio's own test of the guide)."""
    global_values: Obj = {
        "meshID": mesh.mesh_id,
        "multiCluster": {"clusterName": cluster.name},
        "network": cluster.network,
        "remotePilotAddress": remote_pilot_address,
    }
    values: Obj = {
        "istiodRemote": {"injectionPath": f"/inject/cluster/{cluster.name}/net/{cluster.network}"},
        "global": global_values,
    }
    spec: Obj = {**({"revision": revision} if revision else {}), "profile": "remote", "values": values}
    if namespace_ != ISTIO_SYSTEM:
        global_values["istioNamespace"] = namespace_
    if config_cluster:
        global_values["configCluster"] = True
        values["pilot"] = {"configMap": True}
        spec["meshConfig"] = {"trustDomain": mesh.trust_domain}
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": _meta(f"control-plane{'-' + revision if revision else ''}", namespace_),
        "spec": spec,
    }


def external_ingress_gateway() -> Obj:
    """The guide's ``controlplane-gateway.yaml``: an ingress gateway in the external cluster's istio-system (with
    the istiod that configures it, not the mesh's) exposing 15012 (xDS, CA) and 15017 (injection)."""
    ports = [("status-port", 15021), ("tls-xds", 15012), ("tls-webhook", 15017)]
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": _meta("controlplane-gateway", ISTIO_SYSTEM),
        "spec": {
            "components": {
                "ingressGateways": [
                    {
                        "name": INGRESS_GATEWAY,
                        "enabled": True,
                        "k8s": {
                            "service": {
                                "ports": [{"port": port, "targetPort": port, "name": name} for name, port in ports]
                            }
                        },
                    }
                ]
            }
        },
    }


def external_istiod(
    config: ClusterSpec, mesh: MeshSpec, address: str, pilot_env: Mapping[str, str] | None = None
) -> Obj:
    """The guide's ``external-istiod.yaml`` (IP-address variant): istiod in ``external-istiod`` of the external
    cluster, reading the mesh from ``config`` (``CLUSTER_ID``, the ``istio-kubeconfig`` Secret), leading the
    remotes whose namespace names ``config`` (``EXTERNAL_ISTIOD``), their remote secrets in its own namespace
    (``LOCAL_CLUSTER_SECRET_WATCHER``), reached by the proxies at ``address`` (the ingress gateway)."""
    volumes = [
        ("config-volume", "istio", "/etc/istio/config"),
        ("inject-volume", "istio-sidecar-injector", "/var/lib/istio/inject"),
    ]
    patches = [
        {"path": "spec.template.spec.volumes[100]", "value": f"name: {name}\nconfigMap:\n  name: {configmap}"}
        for name, configmap, _ in volumes
    ] + [
        {"path": "spec.template.spec.containers[0].volumeMounts[100]", "value": f"name: {name}\nmountPath: {mount}"}
        for name, _, mount in volumes
    ]
    env = {
        "INJECTION_WEBHOOK_CONFIG_NAME": f"istio-sidecar-injector-{EXTERNAL_ISTIOD}",
        "VALIDATION_WEBHOOK_CONFIG_NAME": f"istio-validator-{EXTERNAL_ISTIOD}",
        "EXTERNAL_ISTIOD": "true",
        "LOCAL_CLUSTER_SECRET_WATCHER": "true",
        "CLUSTER_ID": config.name,
        "SHARED_MESH_CONFIG": "istio",
        **(pilot_env or {}),
    }
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": _meta("control-plane", EXTERNAL_ISTIOD),
        "spec": {
            "profile": "empty",
            "meshConfig": {
                "rootNamespace": EXTERNAL_ISTIOD,
                "trustDomain": mesh.trust_domain,
                "defaultConfig": {"discoveryAddress": f"{address}:15012"},
            },
            "components": {
                "pilot": {
                    "enabled": True,
                    "k8s": {
                        "overlays": [{"kind": "Deployment", "name": "istiod", "patches": patches}],
                        "env": [{"name": name, "value": value} for name, value in env.items()],
                    },
                }
            },
            "values": {
                "global": {
                    "caAddress": f"{address}:15012",
                    "istioNamespace": EXTERNAL_ISTIOD,
                    "operatorManageWebhooks": True,
                    "configValidation": False,
                    "meshID": mesh.mesh_id,
                    "multiCluster": {"clusterName": config.name},
                    "network": config.network,
                }
            },
        },
    }


EXTERNAL_ISTIOD_CREDENTIAL = "external-istiod-gw-cert"
# The external istiod's ports the ingress gateway exposes: (gateway port, istiod's Service port, name).
_EXTERNAL_ISTIOD_PORTS = ((15012, 15012, "XDS"), (15017, 443, "WEBHOOK"))


def _external_istiod_gateway(terminate: bool) -> list[Obj]:
    """``external-istiod-gw`` and ``external-istiod-vs``: passed through by any SNI, or TLS terminated with the
    ``credentialName`` certificate and routed by port."""
    istiod = f"istiod.{EXTERNAL_ISTIOD}.svc.cluster.local"
    protocol = "https" if terminate else "tls"
    tls = {"mode": "SIMPLE", "credentialName": EXTERNAL_ISTIOD_CREDENTIAL} if terminate else {"mode": "PASSTHROUGH"}
    match: Obj = {} if terminate else {"sniHosts": ["*"]}
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": _meta("external-istiod-gw", EXTERNAL_ISTIOD),
        "spec": {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {
                    "port": {"number": port, "protocol": protocol, "name": f"{protocol}-{name}"},
                    "tls": dict(tls),
                    "hosts": ["*"],
                }
                for port, _, name in _EXTERNAL_ISTIOD_PORTS
            ],
        },
    }
    route = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta("external-istiod-vs", EXTERNAL_ISTIOD),
        "spec": {
            "hosts": ["*"],
            "gateways": ["external-istiod-gw"],
            "http" if terminate else "tls": [
                {
                    "match": [{"port": port, **match}],
                    "route": [{"destination": {"host": istiod, "port": {"number": target}}}],
                }
                for port, target, _ in _EXTERNAL_ISTIOD_PORTS
            ],
        },
    }
    return [gateway, route]


def external_istiod_routes() -> list[Obj]:
    """The guide's ``external-istiod-gw.yaml`` (IP-address variant): the ingress gateway passes 15012 and 15017
    through, by any SNI, to the external istiod (its own certificate is what the proxies verify)."""
    return _external_istiod_gateway(terminate=False)


def external_istiod_tls_routes() -> list[Obj]:
    """The guide's ``external-istiod-gw.yaml`` in its hostname variant: the ingress gateway terminates TLS on
    15012 and 15017 with the certificate of the Secret ``credentialName`` names (in the gateway's own namespace,
    istio-system), routes by port to the external istiod, and opens TLS to it again (``external-istiod-dr``)."""
    istiod = f"istiod.{EXTERNAL_ISTIOD}.svc.cluster.local"
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _meta("external-istiod-dr", EXTERNAL_ISTIOD),
        "spec": {
            "host": istiod,
            "trafficPolicy": {
                "portLevelSettings": [
                    {
                        "port": {"number": 15012},
                        "tls": {"mode": "SIMPLE"},
                        "connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}},
                    },
                    {"port": {"number": 443}, "tls": {"mode": "SIMPLE"}},
                ]
            },
        },
    }
    return [*_external_istiod_gateway(terminate=True), rule]


def eastwest_gateway(network: str, revision: str = "", namespace_: str = ISTIO_SYSTEM) -> Obj:
    """What ``samples/multicluster/gen-eastwest-gateway.sh --network <net>`` prints (with an external control
    plane, installed with ``values.global.istioNamespace=external-istiod`` as the guide does)."""
    operator: Obj = {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": _meta("eastwest", namespace_),
        "spec": {
            "revision": revision,
            "profile": "empty",
            "components": {
                "ingressGateways": [
                    {
                        "name": EASTWEST_GATEWAY,
                        "label": {"istio": "eastwestgateway", "app": EASTWEST_GATEWAY, NETWORK_LABEL: network},
                        "enabled": True,
                        "k8s": {
                            "env": [{"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": network}],
                            "service": {
                                "ports": [
                                    {"name": "status-port", "port": 15021, "targetPort": 15021},
                                    {"name": "tls", "port": 15443, "targetPort": 15443},
                                    {"name": "tls-istiod", "port": 15012, "targetPort": 15012},
                                    {"name": "tls-webhook", "port": 15017, "targetPort": 15017},
                                ]
                            },
                        },
                    }
                ]
            },
            "values": {
                "gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}},
                "global": {"network": network},
            },
        },
    }
    if namespace_ != ISTIO_SYSTEM:
        operator["spec"]["values"]["global"]["istioNamespace"] = namespace_
    return operator


def cross_network_gateway() -> Obj:
    """``samples/multicluster/expose-services.yaml``: AUTO_PASSTHROUGH on 15443 for ``*.local``."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": _meta("cross-network-gateway", ISTIO_SYSTEM),
        "spec": {
            "selector": {"istio": "eastwestgateway"},
            "servers": [
                {
                    "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                    "hosts": ["*.local"],
                }
            ],
        },
    }


def expose_istiod(revision: str = "") -> list[Obj]:
    """``samples/multicluster/expose-istiod.yaml``, or ``expose-istiod-rev.yaml.tmpl`` for a revision:
    istiod's 15012 and 15017 through the east-west gateway. Every revision shares the one ``*`` Gateway;
    a revision's own VirtualService routes its istiod's SNIs (``.svc`` and ``.svc.cluster.local``)."""
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": _meta("istiod-gateway", ISTIO_SYSTEM),
        "spec": {
            "selector": {"istio": "eastwestgateway"},
            "servers": [
                {
                    "port": {"name": name, "number": number, "protocol": "tls"},
                    "tls": {"mode": "PASSTHROUGH"},
                    "hosts": ["*"],
                }
                for name, number in (("tls-istiod", 15012), ("tls-istiodwebhook", 15017))
            ],
        },
    }
    return [gateway, expose_istiod_route(revision)]


def expose_istiod_route(revision: str = "") -> Obj:
    """The VirtualService of ``expose_istiod``: ``istiod-vs`` routes every SNI to istiod; ``istiod-vs-<rev>``
    routes the SNIs of ``istiod-<rev>`` (removing a revision removes this, never the shared Gateway)."""
    suffix = f"-{revision}" if revision else ""
    istiod = f"istiod{suffix}.{ISTIO_SYSTEM}.svc"
    sni_hosts = [istiod, f"{istiod}.cluster.local"] if revision else ["*"]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": _meta(f"istiod-vs{suffix}", ISTIO_SYSTEM),
        "spec": {
            "hosts": ["*"],
            "gateways": ["istiod-gateway"],
            "tls": [
                {
                    "match": [{"port": port, "sniHosts": sni_hosts}],
                    "route": [{"destination": {"host": f"{istiod}.cluster.local", "port": {"number": target}}}],
                }
                for port, target in ((15012, 15012), (15017, 443))
            ],
        },
    }


def kubeconfig_server(text: bytes | str) -> str | None:
    """The API server a kubeconfig names (its first cluster's); None when it is unreadable."""
    try:
        return str(yaml.safe_load(text)["clusters"][0]["cluster"]["server"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def kubeconfig_token(text: bytes | str) -> str:
    """The bearer token of a kubeconfig's first user ("" when it has none, or is unreadable)."""
    try:
        return str(yaml.safe_load(text)["users"][0]["user"].get("token") or "")
    except (yaml.YAMLError, KeyError, IndexError, TypeError, AttributeError):
        return ""


def with_token(text: bytes | str, token: str) -> str:
    """The kubeconfig with its first user's token replaced."""
    config = yaml.safe_load(text)
    config["users"][0]["user"] = {"token": token}
    return str(yaml.safe_dump(config, sort_keys=False))


def token_account(token: str) -> tuple[str, str] | None:
    """(namespace, name) of the ServiceAccount a Kubernetes token is for (its ``sub`` claim, read, not verified);
    None for a token that is no ServiceAccount JWT."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        kind, _, rest = str(claims.get("sub", "")).partition("system:serviceaccount:")
    except (IndexError, ValueError, AttributeError):
        return None
    namespace, _, name = rest.partition(":")
    return (namespace, name) if not kind and namespace and name else None


def unsigned_token(name: str, namespace: str) -> str:
    """A ServiceAccount token's shape without a signature: the embedded mesh's API servers take it as it says."""
    claims = {"sub": f"system:serviceaccount:{namespace}:{name}"}
    encode = base64.urlsafe_b64encode
    return ".".join(
        [encode(b'{"alg":"none"}').decode().rstrip("="), encode(json.dumps(claims).encode()).decode().rstrip("="), ""]
    )


def kubeconfig(cluster_name: str, server: str, token: str = "") -> str:
    """A kubeconfig as ``istioctl create-remote-secret`` writes it (credentials elided by the caller)."""
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- cluster:\n    server: {server}\n  name: {cluster_name}\n"
        f"contexts:\n- context:\n    cluster: {cluster_name}\n    user: {cluster_name}\n  name: {cluster_name}\n"
        f"current-context: {cluster_name}\n"
        f"users:\n- name: {cluster_name}\n  user:\n    token: {token}\n"
    )


def remote_secret(cluster_name: str, kubeconfig_text: str) -> Obj:
    """``istioctl create-remote-secret --name=<cluster>``: lets another cluster's istiod read this one."""
    return secret(
        f"istio-remote-secret-{cluster_name}",
        ISTIO_SYSTEM,
        {cluster_name: kubeconfig_text.encode()},
        labels={MULTICLUSTER_LABEL: "true"},
        annotations={CLUSTER_ANNOTATION: cluster_name},
    )


MANAGED_BY = {"app.kubernetes.io/managed-by": "meshfed"}  # on every namespace of meshfed's own


def test_namespace(revision: str = "") -> Obj:
    labels = {"istio.io/rev": revision} if revision else {"istio-injection": "enabled"}
    return namespace(TEST_NAMESPACE, {**labels, **MANAGED_BY})


def service_account(name: str, namespace_: str = TEST_NAMESPACE) -> Obj:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace_)}


def service(name: str, namespace_: str = TEST_NAMESPACE, port: int = ECHO_PORT) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace_, labels={"app": name, "service": name}),
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": port, "targetPort": port}]},
    }


def workload_configmap(namespace_: str = TEST_NAMESPACE) -> Obj:
    program = (Path(__file__).parent / "workloads" / "echo.py").read_text()
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(WORKLOAD_CONFIGMAP, namespace_),
        "data": {"echo.py": program},
    }


def _env(name: str, value: str) -> Obj:
    return {"name": name, "value": value}


def _field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def deployment(
    name: str,
    *,
    app: str,
    service_account_name: str,
    args: Sequence[str],
    cluster: str,
    version: str,
    image: str,
    namespace_: str = TEST_NAMESPACE,
    replicas: int = 1,
) -> Obj:
    """A Deployment running the workload program from its ConfigMap in a stock Python image."""
    labels = {"app": app, "version": version}
    container: Obj = {
        "name": app,
        "image": image,
        "command": ["python", f"{WORKLOAD_MOUNT}/echo.py", *args],
        "env": [
            _env("CLUSTER", cluster),
            _env("SERVICE", app),
            _env("VERSION", version),
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
        ],
        "volumeMounts": [{"name": "program", "mountPath": WORKLOAD_MOUNT}],
    }
    if args and args[0] == "serve":
        container["ports"] = [{"containerPort": ECHO_PORT, "name": "http"}]
        # The program's own readiness, which turns false while it drains on SIGTERM (echo.py).
        container["readinessProbe"] = {"httpGet": {"path": "/ready", "port": ECHO_PORT}, "periodSeconds": 2}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace_, labels=labels),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service_account_name,
                    "containers": [container],
                    "volumes": [{"name": "program", "configMap": {"name": WORKLOAD_CONFIGMAP}}],
                },
            },
        },
    }


def idle_client(
    name: str,
    cluster: str,
    *,
    image: str,
    account: str | None = None,
    version: str = "",
    namespace_: str = TEST_NAMESPACE,
) -> Obj:
    """A Deployment whose pod runs ``echo.py idle``: a client the suite makes calls from."""
    return deployment(
        name,
        app=name,
        service_account_name=account or name,
        args=["idle"],
        cluster=cluster,
        version=version or cluster,
        namespace_=namespace_,
        image=image,
    )


def client_outside_mesh(cluster: str, namespace_: str, image: str) -> list[Obj]:
    """A client in a namespace without injection: a caller with no sidecar (and so no mesh identity)."""
    return [
        namespace(namespace_, MANAGED_BY),
        workload_configmap(namespace_),
        service_account(CLIENT, namespace_),
        idle_client(CLIENT, cluster, image=image, version="outside", namespace_=namespace_),
    ]


def only_in(cluster: str) -> str:
    """The service that runs only in ``cluster`` (its Service object exists in every cluster)."""
    return f"{ECHO}-{cluster}"


def service_url(name: str, namespace_: str = TEST_NAMESPACE, port: int = ECHO_PORT) -> str:
    return f"http://{name}.{namespace_}.svc.cluster.local:{port}/"


def workloads(cluster: ClusterSpec, mesh: MeshSpec) -> list[Obj]:
    """The test workloads of one cluster: the client, ``echo`` (everywhere) and ``echo-<cluster>``
    (here only), with a Service for every cluster's ``echo-<cluster>`` so that each name resolves."""
    image = mesh.workload_image
    objects = [workload_configmap(), service_account(CLIENT), service_account(ECHO), service(ECHO)]
    objects += [service(only_in(other)) for other in mesh.names]
    objects.append(idle_client(CLIENT, cluster.name, image=image))
    objects.append(
        deployment(
            ECHO,
            app=ECHO,
            service_account_name=ECHO,
            args=["serve"],
            cluster=cluster.name,
            version=cluster.name,
            image=image,
        )
    )
    local = only_in(cluster.name)
    objects.append(
        deployment(
            local,
            app=local,
            service_account_name=ECHO,
            args=["serve"],
            cluster=cluster.name,
            version=cluster.name,
            image=image,
        )
    )
    return objects


def peer_authentication(mode: str, namespace_: str = TEST_NAMESPACE, name: str = "default") -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": _meta(name, namespace_),
        "spec": {"mtls": {"mode": mode}},
    }


def authorization_policy(
    name: str, app: str, principals: Sequence[str], namespace_: str = TEST_NAMESPACE, action: str = "ALLOW"
) -> Obj:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": _meta(name, namespace_),
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "action": action,
            "rules": [{"from": [{"source": {"principals": list(principals)}}]}],
        },
    }


def destination_rule(name: str, host: str, traffic_policy: Mapping[str, Any], namespace_: str = TEST_NAMESPACE) -> Obj:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": _meta(name, namespace_),
        "spec": {"host": host, "trafficPolicy": dict(traffic_policy)},
    }
