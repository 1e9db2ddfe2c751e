"""Vendor-shaped meshes on real Istio, certified with ``--backend existing``.

Istio is installed onto the clusters of ``meshfed host up`` with ``istioctl`` and ``kubectl`` directly, as a
vendor or a platform team installs it, following Istio's guides ("Install Multi-Primary on different
networks", "Install Primary-Remote on different networks", "Install Istio with an External Control Plane",
"Plug in CA Certificates", "Canary upgrades"), never through meshfed's install plan or manifests. Then meshfed certifies the mesh read-only (the core
profile) and the report must say what it found; then the shape is removed, leaving the bare clusters for
the next one. CI runs it; by hand::

    meshfed host up --clusters 3 && python -m tests.vendor_shapes revisioned primary-remote external
    meshfed host down

A shape takes the first clusters it needs; ``external`` takes three: cluster-c runs the external control plane,
cluster-a is its config cluster and cluster-b a remote.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshfed.backends.host import bare

ROOT = Path(__file__).resolve().parent.parent
READER = "meshfed-certifier"
# What a certifier may do with no Secret access anywhere (a managed CA's user): read the mesh, run meshfed's
# workloads in namespaces of its own, exec into them and port-forward to proxies and istiod (istioctl).
READER_RULES = [
    {
        "apiGroups": [""],
        "resources": [
            "namespaces",
            "pods",
            "pods/exec",
            "pods/portforward",
            "pods/log",
            "services",
            "endpoints",
            "configmaps",
            "serviceaccounts",
            "serviceaccounts/token",
            "events",
            "nodes",
        ],
        "verbs": ["*"],
    },
    {"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale", "replicasets"], "verbs": ["*"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["mutatingwebhookconfigurations", "validatingwebhookconfigurations"],
        "verbs": ["get", "list", "watch"],
    },
    {
        "apiGroups": ["networking.istio.io", "security.istio.io", "telemetry.istio.io", "install.istio.io"],
        "resources": ["*"],
        "verbs": ["*"],
    },
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list"]},
]


@dataclass(frozen=True)
class Shape:
    name: str
    topology: str
    namespace: str = "istio-system"
    revision: str = ""  # "" installs the default revision
    trust_domain: str = "cluster.local"
    reader_without_secrets: bool = False  # certify as a user who may read no Secret (a managed CA's user)
    canary: str = ""  # a second revision's control plane beside the first (a canary upgrade under way)
    clusters: int = 2  # how many of `host up`'s clusters it takes (the first ones)
    tag: str = ""  # a revision tag pointing at `revision`, which meshfed is told to inject with (--revision)
    what: str = ""


SHAPES = {
    shape.name: shape
    for shape in (
        Shape(
            "revisioned",
            "multi-primary",
            namespace="acme-mesh",
            revision="acme-1",
            trust_domain="acme.example",
            reader_without_secrets=True,
            canary="acme-2",
            tag="prod",
            what="revision acme-1 and its canary acme-2, no default revision and no default tag, the workloads "
            "injected through the tag prod (istio.io/rev=prod), in namespace acme-mesh, trust domain acme.example, "
            "certified by a user who may read no Secret",
        ),
        Shape("primary-remote", "primary-remote", what="primary-remote in istio-system, the default revision"),
        Shape(
            "external",
            "external-control-plane",
            namespace="external-istiod",
            trust_domain="ext.example",
            clusters=3,
            what="an external control plane as Istio's guide installs it (its IP-address variant): istiod in "
            "external-istiod of cluster-c behind an ingress gateway, cluster-a its config cluster, cluster-b a "
            "remote, trust domain ext.example; meshfed is given only the data-plane clusters' contexts first, then "
            "the external cluster's too (--external-context)",
        ),
    )
}


class Cluster:
    """kubectl and istioctl against one context of ``host up``'s kubeconfig."""

    def __init__(self, name: str, state: bare.BareClusters) -> None:
        self.name, self.state = name, state

    def _run(self, argv: Sequence[str], stdin: str | None = None, timeout: float = 600) -> str:
        env = {**os.environ, "KUBECONFIG": self.state.kubeconfig}
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
        if done.returncode != 0:
            raise SystemExit(f"{self.name}: `{' '.join(argv)}` failed: {done.stderr.strip()[-1500:]}")
        return done.stdout

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return self._run([self.state.kubectl, "--context", self.name, *args], stdin)

    def apply(self, *objects: Mapping[str, object]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(objects))

    def istioctl(self, *args: str, stdin: str | None = None) -> str:
        return self._run([self.state.istioctl, "--context", self.name, *args], stdin)

    def install(self, operator: dict[str, object], folder: Path, namespace: str) -> None:
        path = folder / f"{self.name}-{operator['metadata']['name']}.yaml"  # type: ignore[index]
        path.write_text(yaml.safe_dump(operator))
        self.istioctl("install", "-y", "-f", str(path), "-f", self.state.overlay, "-i", namespace)

    def gateway_address(self, namespace: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.kubectl(
                "get",
                "svc",
                "istio-eastwestgateway",
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.loadBalancer.ingress[0].ip}",
            ).strip()
            if found:
                return found
            time.sleep(1)
        raise SystemExit(f"{self.name}: the east-west gateway got no address in {timeout:g} s")


def _operator(name: str, shape: Shape, spec: dict[str, object], revision: str | None = None) -> dict[str, object]:
    revision = shape.revision if revision is None else revision
    if revision:
        spec = {"revision": revision, **spec}
        name = f"{name}-{revision}"
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": name},
        "spec": spec,
    }


def _global(shape: Shape, cluster: str, **more: object) -> dict[str, object]:
    return {
        "istioNamespace": shape.namespace,
        "meshID": "acme",
        "multiCluster": {"clusterName": cluster},
        "network": f"net-{cluster}",
        **more,
    }


def _eastwest(shape: Shape, cluster: str) -> dict[str, object]:
    """What ``samples/multicluster/gen-eastwest-gateway.sh --network net-<cluster> [--revision R]`` prints."""
    network = f"net-{cluster}"
    gateway = {
        "name": "istio-eastwestgateway",
        "namespace": shape.namespace,
        "label": {"istio": "eastwestgateway", "app": "istio-eastwestgateway", "topology.istio.io/network": network},
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
    values = {"gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}}, "global": _global(shape, cluster)}
    return _operator(
        "eastwest", shape, {"profile": "empty", "components": {"ingressGateways": [gateway]}, "values": values}
    )


def _expose_services(namespace: str) -> dict[str, object]:
    """``samples/multicluster/expose-services.yaml``."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "cross-network-gateway", "namespace": namespace},
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


def _expose_istiod(namespace: str) -> list[dict[str, Any]]:
    """``samples/multicluster/expose-istiod.yaml``."""
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "istiod-gateway", "namespace": namespace},
        "spec": {
            "selector": {"istio": "eastwestgateway"},
            "servers": [
                {
                    "port": {"name": "tls-istiod", "number": 15012, "protocol": "tls"},
                    "tls": {"mode": "PASSTHROUGH"},
                    "hosts": ["*"],
                },
                {
                    "port": {"name": "tls-istiodwebhook", "number": 15017, "protocol": "tls"},
                    "tls": {"mode": "PASSTHROUGH"},
                    "hosts": ["*"],
                },
            ],
        },
    }
    service = f"istiod.{namespace}.svc.cluster.local"
    route = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "istiod-vs", "namespace": namespace},
        "spec": {
            "hosts": ["*"],
            "gateways": ["istiod-gateway"],
            "tls": [
                {
                    "match": [{"port": 15012, "sniHosts": ["*"]}],
                    "route": [{"destination": {"host": service, "port": {"number": 15012}}}],
                },
                {
                    "match": [{"port": 15017, "sniHosts": ["*"]}],
                    "route": [{"destination": {"host": service, "port": {"number": 443}}}],
                },
            ],
        },
    }
    return [gateway, route]


def _namespace(shape: Shape, cluster: str, control_plane: str = "") -> dict[str, object]:
    metadata: dict[str, object] = {"name": shape.namespace, "labels": {"topology.istio.io/network": f"net-{cluster}"}}
    if control_plane:
        metadata["annotations"] = {"topology.istio.io/controlPlaneClusters": control_plane}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def _cacerts(shape: Shape, cluster: str, pki: Path) -> dict[str, object]:
    folder = pki / cluster
    data = {
        name: base64.b64encode((folder / name).read_bytes()).decode()
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "cacerts", "namespace": shape.namespace},
        "data": data,
    }


def install(shape: Shape, clusters: dict[str, Cluster], folder: Path) -> None:
    """The shape, as Istio's guides install it (plugged-in CA first, then istiod, gateway, remote secrets)."""
    pki = folder / "pki"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "meshfed.cli",
            "pki",
            "init",
            "--out",
            str(pki),
            "--clusters",
            ",".join(clusters),
            "--key-type",
            "rsa",
        ],
        check=True,
        capture_output=True,
    )
    names = list(clusters)
    mesh_config = {"trustDomain": shape.trust_domain}
    if shape.topology == "external-control-plane":
        _install_external(shape, clusters, folder, pki)
        return
    if shape.topology == "multi-primary":
        for name, cluster in clusters.items():
            cluster.apply(_namespace(shape, name), _cacerts(shape, name, pki))
            values = {"global": _global(shape, name)}
            cluster.install(
                _operator("control-plane", shape, {"meshConfig": mesh_config, "values": values}),
                folder,
                shape.namespace,
            )
            cluster.install(_eastwest(shape, name), folder, shape.namespace)
            cluster.gateway_address(shape.namespace)
            cluster.apply(_expose_services(shape.namespace))
            if shape.canary:
                canary = _operator("control-plane", shape, {"meshConfig": mesh_config, "values": values}, shape.canary)
                cluster.install(canary, folder, shape.namespace)
            if shape.revision:
                # istioctl makes a first revision the default (a `default` tag): a vendor's mesh has none.
                cluster.istioctl("tag", "remove", "default", "-y", "-i", shape.namespace)
            if shape.tag:
                cluster.istioctl("tag", "set", shape.tag, "--revision", shape.revision, "-i", shape.namespace)
        for source in names:
            for destination in names:
                if source != destination:
                    secret = clusters[source].istioctl("create-remote-secret", "--name", source, "-i", shape.namespace)
                    clusters[destination].kubectl("apply", "-n", shape.namespace, "-f", "-", stdin=secret)
        return
    primary, *remotes = names
    main = clusters[primary]
    main.apply(_namespace(shape, primary), _cacerts(shape, primary, pki))
    values = {"global": _global(shape, primary, externalIstiod=True)}
    main.install(
        _operator("control-plane", shape, {"meshConfig": mesh_config, "values": values}), folder, shape.namespace
    )
    main.install(_eastwest(shape, primary), folder, shape.namespace)
    address = main.gateway_address(shape.namespace)
    main.apply(*_expose_istiod(shape.namespace), _expose_services(shape.namespace))
    for name in remotes:
        remote = clusters[name]
        remote.apply(_namespace(shape, name, control_plane=primary))
        values = {
            "istiodRemote": {"injectionPath": f"/inject/cluster/{name}/net/net-{name}"},
            "global": _global(shape, name, remotePilotAddress=address),
        }
        remote.install(_operator("remote", shape, {"profile": "remote", "values": values}), folder, shape.namespace)
        secret = remote.istioctl("create-remote-secret", "--name", name, "-i", shape.namespace)
        main.kubectl("apply", "-n", shape.namespace, "-f", "-", stdin=secret)
        remote.install(_eastwest(shape, name), folder, shape.namespace)
        remote.gateway_address(shape.namespace)


def _install_external(shape: Shape, clusters: dict[str, Cluster], folder: Path, pki: Path) -> None:
    """ "Install Istio with an External Control Plane", its IP-address variant (the one Istio's own test of the
    guide runs: ``EXTERNAL_ISTIOD_ADDR`` the ingress gateway's address, ``SSL_SECRET_NAME=NONE``), then
    "Adding clusters" (a second remote on its own network) with east-west gateways."""
    config_name, remote_name, external_name = list(clusters)
    config, remote, external = (clusters[n] for n in (config_name, remote_name, external_name))
    ns = shape.namespace
    gateway = {
        "name": "istio-ingressgateway",
        "enabled": True,
        "k8s": {
            "service": {
                "ports": [
                    {"port": 15021, "targetPort": 15021, "name": "status-port"},
                    {"port": 15012, "targetPort": 15012, "name": "tls-xds"},
                    {"port": 15017, "targetPort": 15017, "name": "tls-webhook"},
                ]
            }
        },
    }
    external.install(
        _operator("controlplane-gateway", shape, {"components": {"ingressGateways": [gateway]}}), folder, "istio-system"
    )
    address = ""
    deadline = time.monotonic() + 120
    while not address and time.monotonic() < deadline:
        address = external.kubectl(
            "get",
            "svc",
            "istio-ingressgateway",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.status.loadBalancer.ingress[0].ip}",
        ).strip()
        time.sleep(0 if address else 1)
    if not address:
        raise SystemExit(f"{external_name}: the ingress gateway got no address in 120 s")

    def remote_values(name: str, **more: object) -> dict[str, object]:
        return {
            "global": _global(shape, name, remotePilotAddress=address, **more),
            "istiodRemote": {"injectionPath": f"/inject/cluster/{name}/net/net-{name}"},
        }

    config.apply(_namespace(shape, config_name))
    config_values = remote_values(config_name, configCluster=True)
    config_values["pilot"] = {"configMap": True}
    generated = config.istioctl(
        "manifest",
        "generate",
        "-f",
        _write(
            folder,
            "remote-config-cluster",
            {"profile": "remote", "meshConfig": {"trustDomain": shape.trust_domain}, "values": config_values},
            ns,
        ),
        "-f",
        config.state.overlay,
        "--set",
        "values.defaultRevision=default",
    )
    config.kubectl("apply", "-f", "-", stdin=generated)
    external.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}, _cacerts(shape, external_name, pki)
    )
    secret = config.istioctl(
        "create-remote-secret",
        "--type=config",
        f"--namespace={ns}",
        "--service-account=istiod",
        "--create-service-account=false",
    )
    external.kubectl("apply", "-f", "-", stdin=secret)
    volumes = [
        ("config-volume", "istio", "/etc/istio/config"),
        ("inject-volume", "istio-sidecar-injector", "/var/lib/istio/inject"),
    ]
    patches = [
        {"path": "spec.template.spec.volumes[100]", "value": f"name: {n}\nconfigMap:\n  name: {m}"}
        for n, m, _ in volumes
    ] + [
        {"path": "spec.template.spec.containers[0].volumeMounts[100]", "value": f"name: {n}\nmountPath: {p}"}
        for n, _, p in volumes
    ]
    env = {
        "INJECTION_WEBHOOK_CONFIG_NAME": f"istio-sidecar-injector-{ns}",
        "VALIDATION_WEBHOOK_CONFIG_NAME": f"istio-validator-{ns}",
        "EXTERNAL_ISTIOD": "true",
        "LOCAL_CLUSTER_SECRET_WATCHER": "true",
        "CLUSTER_ID": config_name,
        "SHARED_MESH_CONFIG": "istio",
    }
    istiod = {
        "profile": "empty",
        "meshConfig": {
            "rootNamespace": ns,
            "trustDomain": shape.trust_domain,
            "defaultConfig": {"discoveryAddress": f"{address}:15012"},
        },
        "components": {
            "pilot": {
                "enabled": True,
                "k8s": {
                    "overlays": [{"kind": "Deployment", "name": "istiod", "patches": patches}],
                    "env": [{"name": k, "value": v} for k, v in env.items()],
                },
            }
        },
        "values": {
            "global": _global(
                shape, config_name, caAddress=f"{address}:15012", operatorManageWebhooks=True, configValidation=False
            )
        },
    }
    external.install(_operator("external-istiod", shape, istiod), folder, ns)
    routes: list[dict[str, Any]] = [
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "external-istiod-gw", "namespace": ns},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [
                    {
                        "port": {"number": number, "protocol": "tls", "name": name},
                        "tls": {"mode": "PASSTHROUGH"},
                        "hosts": ["*"],
                    }
                    for name, number in (("tls-XDS", 15012), ("tls-WEBHOOK", 15017))
                ],
            },
        },
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "external-istiod-vs", "namespace": ns},
            "spec": {
                "hosts": ["*"],
                "gateways": ["external-istiod-gw"],
                "tls": [
                    {
                        "match": [{"port": port, "sniHosts": ["*"]}],
                        "route": [
                            {"destination": {"host": f"istiod.{ns}.svc.cluster.local", "port": {"number": target}}}
                        ],
                    }
                    for port, target in ((15012, 15012), (15017, 443))
                ],
            },
        },
    ]
    external.apply(*routes)
    remote.apply(_namespace(shape, remote_name, control_plane=config_name))
    # Istio 1.29 on names a remote's pods in the trust domain of the remote's own mesh config (istio/istio#58455:
    # a mesh watcher per remote cluster, pilot/pkg/serviceregistry/kube/controller/multicluster.go), and without
    # one in cluster.local: the remote profile writes none (pilot.configMap false), so a mesh with another trust
    # domain gives its remotes one (seen on host: without it, calls into the remote failed TLS verification).
    remote_spec: dict[str, object] = {
        "profile": "remote",
        "meshConfig": {"trustDomain": shape.trust_domain},
        "values": {**remote_values(remote_name), "pilot": {"configMap": True}},
    }
    generated = remote.istioctl(
        "manifest",
        "generate",
        "-f",
        _write(folder, "second-remote-cluster", remote_spec, ns),
        "-f",
        remote.state.overlay,
    )
    remote.kubectl("apply", "-f", "-", stdin=generated)
    secret = remote.istioctl(
        "create-remote-secret",
        f"--name={remote_name}",
        "--type=remote",
        f"--namespace={ns}",
        "--create-service-account=false",
    )
    external.kubectl("apply", "-f", "-", stdin=secret)
    for name in (config_name, remote_name):
        clusters[name].install(_eastwest(shape, name), folder, ns)
        clusters[name].gateway_address(ns)
        clusters[name].apply(_expose_services(ns))


def _write(folder: Path, name: str, spec: dict[str, object], namespace: str) -> str:
    """An IstioOperator file for ``istioctl manifest generate`` (the guide's remote clusters are applied so)."""
    path = folder / f"{name}.yaml"
    operator = {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"namespace": namespace},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(operator))
    return str(path)


def reader_kubeconfig(clusters: dict[str, Cluster], path: Path) -> dict[str, str]:
    """A kubeconfig whose users may read no Secret (a service account bound to READER_RULES); the contexts."""
    admin = yaml.safe_load(Path(next(iter(clusters.values())).state.kubeconfig).read_text())
    servers = {entry["name"]: entry for entry in admin["clusters"]}
    config: dict[str, list[object]] = {"clusters": [], "users": [], "contexts": []}
    contexts = {}
    for name, cluster in clusters.items():
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": READER},
            "rules": READER_RULES,
        }
        account = {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": READER, "namespace": "kube-system"},
        }
        binding = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": READER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": READER},
            "subjects": [{"kind": "ServiceAccount", "name": READER, "namespace": "kube-system"}],
        }
        cluster.apply(role, account, binding)
        token = cluster.kubectl("create", "token", READER, "-n", "kube-system", "--duration", "2h").strip()
        context = f"{name}-certifier"
        config["clusters"].append({"name": context, "cluster": servers[name]["cluster"]})
        config["users"].append({"name": context, "user": {"token": token}})
        config["contexts"].append({"name": context, "context": {"cluster": context, "user": context}})
        contexts[name] = context
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **config}))
    path.chmod(0o600)
    return contexts


def uninstall(shape: Shape, clusters: dict[str, Cluster]) -> None:
    """Everything of the shape, so that the next one starts from bare clusters."""
    if shape.topology == "external-control-plane":
        external = clusters[list(clusters)[-1]]  # its ingress gateway and the istiod that configures it
        external.istioctl("uninstall", "--purge", "-y", "-i", "istio-system")
        external.kubectl("delete", "namespace", "istio-system", "--ignore-not-found", "--wait=true", "--timeout=180s")
        for cluster in clusters.values():  # what `manifest generate | kubectl apply` made on the data-plane clusters
            cluster.kubectl(
                "delete",
                "mutatingwebhookconfiguration,validatingwebhookconfiguration",
                f"istio-sidecar-injector-{shape.namespace}",
                f"istio-validator-{shape.namespace}",
                "istiod-default-validator",
                "--ignore-not-found",
            )
    for cluster in clusters.values():
        cluster.istioctl("uninstall", "--purge", "-y", "-i", shape.namespace)
        cluster.kubectl("delete", "namespace", shape.namespace, "--ignore-not-found", "--wait=true", "--timeout=180s")
        cluster.kubectl("delete", "clusterrolebinding,clusterrole", READER, "--ignore-not-found")
        cluster.kubectl("delete", "serviceaccount", READER, "-n", "kube-system", "--ignore-not-found")


def certify(
    shape: Shape,
    state: bare.BareClusters,
    contexts: dict[str, str],
    kubeconfig: str,
    reports: Path,
    revision: str | None = None,
    external_context: str = "",
) -> subprocess.CompletedProcess[str]:
    """The core profile, read-only, injected by ``revision`` (default: the shape's tag, if it has one)."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "conformance/test_core.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--backend",
        "existing",
        "--topology",
        shape.topology,
        *(arg for name, context in contexts.items() for arg in ("--context", f"{name}={context}")),
        "--istioctl",
        state.istioctl,
        "--kubectl",
        state.kubectl,
        "--workload-image",
        state.workload_image,
        "--report-dir",
        str(reports),
    ]
    revision = shape.tag if revision is None else revision
    if revision:
        command += ["--revision", revision]
    if external_context:
        command += ["--external-context", external_context]
    if shape.namespace != "istio-system":
        command += ["--istio-namespace", shape.namespace]
    return subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "KUBECONFIG": kubeconfig},
    )


def run(shape: Shape, state: bare.BareClusters, reports: Path) -> list[str]:
    """Install, certify, check what the report says was found, remove; the problems found (none: it passed)."""
    clusters = {name: Cluster(name, state) for name in list(state.clusters)[: shape.clusters]}
    if len(clusters) < shape.clusters:
        return [f"{shape.name}: needs {shape.clusters} clusters of `meshfed host up`, it has {len(clusters)}"]
    problems = []
    with tempfile.TemporaryDirectory(prefix=f"meshfed-shape-{shape.name}-") as tmp:
        folder = Path(tmp)
        started = time.monotonic()
        install(shape, clusters, folder)
        installed = time.monotonic() - started
        print(f"{shape.name}: installed with istioctl in {installed:.0f} s", flush=True)
        contexts, kubeconfig = {name: name for name in clusters}, state.kubeconfig
        external = ""
        if shape.topology == "external-control-plane":
            *data_plane, external = clusters
            contexts = {name: name for name in data_plane}
        if shape.reader_without_secrets:
            kubeconfig = str(folder / "certifier.kubeconfig")
            contexts = reader_kubeconfig(clusters, Path(kubeconfig))
        try:
            started = time.monotonic()
            result = certify(shape, state, contexts, kubeconfig, reports / shape.name)
            print(
                f"{shape.name}: core profile in {time.monotonic() - started:.0f} s, exit {result.returncode}",
                flush=True,
            )
            problems += _judge(shape, result, reports / shape.name)
            problems += _doctor(shape, state, contexts, kubeconfig)
            if external:  # again, given the external control plane's cluster to read
                started = time.monotonic()
                folder = reports / f"{shape.name}-with-external-context"
                result = certify(shape, state, contexts, kubeconfig, folder, external_context=external)
                print(
                    f"{shape.name}: with --external-context, core profile in {time.monotonic() - started:.0f} s",
                    flush=True,
                )
                problems += _judge(shape, result, folder, external_context=external)
                problems += _doctor(shape, state, contexts, kubeconfig, external_context=external)
            if shape.revision:
                problems += _without_injection(shape, state, clusters, contexts, kubeconfig, reports)
        finally:
            started = time.monotonic()
            uninstall(shape, clusters)
            print(f"{shape.name}: removed in {time.monotonic() - started:.0f} s", flush=True)
    return problems


def _doctor(
    shape: Shape, state: bare.BareClusters, contexts: dict[str, str], kubeconfig: str, external_context: str = ""
) -> list[str]:
    """``meshfed doctor`` on the shape, read-only: it must run, find no error on this healthy mesh, and show
    what ``istioctl analyze`` says (its findings may be anything: on host clusters IST0170, the gateways'
    nodePorts differ), or, for a user who may read no Secret, that analyze was not permitted (it lists the
    remote secrets), never that it failed for another reason."""
    command = [sys.executable, "-m", "meshfed.cli", "doctor", "--backend", "existing", "--topology", shape.topology]
    command += [arg for name, context in contexts.items() for arg in ("--context", f"{name}={context}")]
    command += ["--istioctl", state.istioctl, "-o", "json"]
    if shape.tag:
        command += ["--revision", shape.tag]
    if shape.namespace != "istio-system":
        command += ["--istio-namespace", shape.namespace]
    if external_context:
        command += ["--external-context", external_context]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "KUBECONFIG": kubeconfig}
    )
    try:
        checks = yaml.safe_load(done.stdout)["checks"]
    except (TypeError, KeyError, yaml.YAMLError):
        return [f"{shape.name}: meshfed doctor printed no checks (exit {done.returncode}): {done.stderr[-500:]}"]
    analyze = [c for c in checks if c["check"].startswith("istioctl-")]
    for check in analyze:
        print(f"{shape.name}: doctor: {check['cluster']}: {check['check']}: {check['evidence'][:160]}", flush=True)
    errors = [f"{c['cluster']}: {c['check']}" for c in checks if c["status"] == "error"]
    print(f"{shape.name}: doctor: {len(checks)} findings, errors: {', '.join(errors) or 'none'}", flush=True)
    problems = [f"{shape.name}: meshfed doctor found an error on a healthy mesh: {error}" for error in errors]
    refused = {c["cluster"] for c in analyze if c["check"] == "istioctl-analyze-not-permitted"}
    expected = set(contexts) if shape.reader_without_secrets else set()
    if refused != expected:
        problems.append(
            f"{shape.name}: istioctl analyze not permitted in {sorted(refused)}, expected {sorted(expected)}"
        )
    problems += [
        f"{shape.name}: {c['cluster']}: {c['evidence'][:300]}"
        for c in analyze
        if c["check"] == "istioctl-analyze-failed"
    ]
    return problems


def _judge(
    shape: Shape, result: subprocess.CompletedProcess[str], reports: Path, external_context: str = ""
) -> list[str]:
    if result.returncode != 0:
        return [f"{shape.name}: the core profile did not pass: {result.stdout[-2500:]}"]
    report = yaml.safe_load((reports / "conformance-report.yaml").read_text())
    core = next(p for p in report["profiles"] if p["name"] == "core")
    found = report.get("environment") or {}
    expected = {
        "control plane": f"namespace {shape.namespace}, "
        + (
            f"revision {shape.revision} (tag {shape.tag}), injected by istio.io/rev={shape.tag}"
            if shape.tag
            else f"revision {shape.revision}, injected by istio.io/rev={shape.revision}"
            if shape.revision
            else "revision default, injected by istio-injection=enabled"
        ),
        "cluster-a: trust domain": f"{shape.trust_domain} (from the mesh config)",
    }
    problems = [
        f"{shape.name}: the report says {key}: {found.get(key)!r}, not {value!r}"
        for key, value in expected.items()
        if found.get(key) != value
    ]
    root_key, wanted_root = (
        "cluster-a: root of trust",
        "cacerts Secret not readable by this user (403)" if shape.reader_without_secrets else "the cacerts Secret",
    )
    if shape.topology == "external-control-plane":  # istiod, and so the CA, is only in the external cluster
        root_key = "external control plane"
        wanted_root = f"context {external_context}, read only: the cacerts Secret" if external_context else "not given"
        if report.get("externalControlPlane", {}).get("serves") != ["cluster-a", "cluster-b"]:
            problems.append(f"{shape.name}: the report's externalControlPlane is {report.get('externalControlPlane')}")
    root = found.get(root_key, "")
    if not root.startswith(wanted_root):
        problems.append(f"{shape.name}: the report says the root of trust is {root!r}, not {wanted_root}...")
    if core["result"] != "success" or core["statistics"]["passed"] != 11:
        problems.append(f"{shape.name}: core {core['result']} {core['statistics']}")
    return problems


def _without_injection(
    shape: Shape,
    state: bare.BareClusters,
    clusters: dict[str, Cluster],
    contexts: dict[str, str],
    kubeconfig: str,
    reports: Path,
) -> list[str]:
    """The same mesh with its revision's injection webhooks gone (its own and its tags'): meshfed's workloads,
    labelled for that revision, run without sidecars, and every case must fail at once naming them, never
    pass. (The tag's name is gone with its webhook: meshfed is given the revision's.)"""
    for cluster in clusters.values():
        cluster.kubectl("delete", "mutatingwebhookconfiguration", "-l", f"istio.io/rev={shape.revision}")
    folder = reports / f"{shape.name}-not-injected"
    result = certify(shape, state, contexts, kubeconfig, folder, revision=shape.revision)
    report = yaml.safe_load((folder / "conformance-report.yaml").read_text())
    messages = [case.get("message", "") for case in report["cases"]]
    if (
        result.returncode == 1
        and messages
        and all(m.startswith("the mesh is broken from the start: not injected: ") for m in messages)
    ):
        print(f"{shape.name}: without injection, all {len(messages)} cases failed with 'not injected'", flush=True)
        return []
    return [f"{shape.name}: without injection: exit {result.returncode}, messages {messages[:2]}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shapes", nargs="+", choices=sorted(SHAPES))
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "vendor-shapes")
    args = parser.parse_args(argv)
    state = bare.read_state()
    if state is None:
        print("no clusters of `meshfed host up` here: run `meshfed host up` first", file=sys.stderr)
        return 2
    problems = []
    for name in args.shapes:
        shape = SHAPES[name]
        print(f"{shape.name}: {shape.what}", flush=True)
        problems += run(shape, state, args.reports)
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
