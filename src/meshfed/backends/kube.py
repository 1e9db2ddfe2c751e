"""The backend contract over a real Kubernetes API server, shared by the ``kind`` and ``existing`` backends.

Objects go through the Kubernetes API with the official client (server-side apply, JSON merge patch,
label-selected lists); a call is made by ``kubectl exec`` into the client pod, which runs the workload
program; a proxy's certificates come from ``istioctl proxy-config secret -o json`` and the remote
clusters from ``istioctl remote-clusters``. Applying an ``IstioOperator`` runs ``istioctl install``
and deleting one runs ``istioctl uninstall --revision``, as a user does by hand: a real cluster has
no IstioOperator resource (Istio removed the in-cluster operator in 1.24).
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from meshfed import manifests
from meshfed.backends import evidence, istioctl
from meshfed.backends.base import (
    BackendError,
    Cluster,
    ConnectedProxy,
    Evidence,
    Forbidden,
    Mesh,
    PodInfo,
    ProxyCerts,
    RemoteClusterStatus,
)
from meshfed.calls import CallResult
from meshfed.manifests import TEST_NAMESPACE, Obj
from meshfed.topology import MeshSpec

FIELD_MANAGER = "meshfed"


@dataclass(frozen=True)
class Resource:
    group_version: str  # "v1", "apps/v1", ...
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace)}"
        base += f"/{self.plural}"
        return base + (f"/{urllib.parse.quote(name)}" if name else "")


RESOURCES: Mapping[str, Resource] = {
    "Namespace": Resource("v1", "namespaces", namespaced=False),
    "Node": Resource("v1", "nodes", namespaced=False),
    "Secret": Resource("v1", "secrets"),
    "ConfigMap": Resource("v1", "configmaps"),
    "Service": Resource("v1", "services"),
    "EndpointSlice": Resource("discovery.k8s.io/v1", "endpointslices"),
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "Pod": Resource("v1", "pods"),
    "Deployment": Resource("apps/v1", "deployments"),
    "Gateway": Resource("networking.istio.io/v1", "gateways"),
    "VirtualService": Resource("networking.istio.io/v1", "virtualservices"),
    "DestinationRule": Resource("networking.istio.io/v1", "destinationrules"),
    "ServiceEntry": Resource("networking.istio.io/v1", "serviceentries"),
    "PeerAuthentication": Resource("security.istio.io/v1", "peerauthentications"),
    "AuthorizationPolicy": Resource("security.istio.io/v1", "authorizationpolicies"),
    "MutatingWebhookConfiguration": Resource(
        "admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", namespaced=False
    ),
    "ClusterRole": Resource("rbac.authorization.k8s.io/v1", "clusterroles", namespaced=False),
    "ClusterRoleBinding": Resource("rbac.authorization.k8s.io/v1", "clusterrolebindings", namespaced=False),
    "IPAddressPool": Resource("metallb.io/v1beta1", "ipaddresspools"),
    "L2Advertisement": Resource("metallb.io/v1beta1", "l2advertisements"),
}


def resource(kind: str) -> Resource:
    try:
        return RESOURCES[kind]
    except KeyError:
        raise BackendError(f"meshfed does not handle {kind} objects on real clusters") from None


class KubeApi:
    """REST calls to one API server, authenticated from a kubeconfig context by the official client."""

    def __init__(self, kubeconfig: Path | None, context: str | None, label: str) -> None:
        self.label = label
        # $KUBECONFIG is read now (the client reads it once, at import), and may list several files.
        config_file = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or None
        try:
            self._client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=config_file, context=context, persist_config=False
            )
        except (k8s_config.ConfigException, OSError, ValueError) as error:
            where = f"context {context!r}" if context else "the current context"
            raise BackendError(
                f"{label}: cannot use {where} of {kubeconfig or 'your kubeconfig'} ({error}): "
                "check the name with `kubectl config get-contexts`"
            ) from None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Sequence[tuple[str, str]] = (),
        body: Any = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
        timeout: float = 30,
    ) -> Obj | None:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        method_, url, headers_, body_, post = self._client.param_serialize(
            method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        try:
            response = self._client.call_api(method_, url, headers_, body_, post, _request_timeout=timeout)
            raw = response.read()
        except (urllib3.exceptions.HTTPError, k8s.ApiException, OSError) as error:
            raise BackendError(
                f"{self.label}: the API server at {self._client.configuration.host} does not answer ({error}): "
                "check that the cluster is running and the kubeconfig is current"
            ) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"message": raw[:200].decode(errors="replace")}
        if response.status == 404 and missing_ok:
            return None
        if response.status >= 400:
            message = data.get("message") or response.reason
            refused = Forbidden if response.status == 403 else BackendError
            raise refused(f"{self.label}: {method} {path} was refused ({response.status}): {message}")
        return data if isinstance(data, dict) else {"items": data}

    def server_version(self) -> str:
        data = self.request("GET", "/version") or {}
        return str(data.get("gitVersion", ""))


def _selector(labels: Mapping[str, str] | None) -> list[tuple[str, str]]:
    if not labels:
        return []
    return [("labelSelector", ",".join(f"{key}={value}" for key, value in sorted(labels.items())))]


def pod_info(pod: Obj) -> PodInfo:
    metadata, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = metadata.get("labels") or {}
    containers = {c.get("name"): c for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    has_sidecar = "istio-proxy" in containers  # a container, or a native sidecar (an init container) since 1.27
    # The injector writes the revision as an annotation (and in sidecar.istio.io/status), not a label;
    # a gateway's pod carries it as a label.
    annotations = metadata.get("annotations") or {}
    try:
        status_revision = json.loads(annotations.get("sidecar.istio.io/status") or "{}").get("revision", "")
    except (ValueError, AttributeError):
        status_revision = ""
    return PodInfo(
        name=metadata["name"],
        namespace=metadata.get("namespace", ""),
        labels=labels,
        service_account=spec.get("serviceAccountName", "default"),
        ready=conditions.get("Ready") == "True" and metadata.get("deletionTimestamp") is None,
        phase=status.get("phase", ""),
        ip=status.get("podIP", ""),
        has_sidecar=has_sidecar,
        revision=(annotations.get("istio.io/rev") or status_revision or labels.get("istio.io/rev") or "")
        if has_sidecar
        else "",
        proxy_image=str(containers["istio-proxy"].get("image", "")) if has_sidecar else "",
        terminating=metadata.get("deletionTimestamp") is not None,
        proxy_cluster=next(
            (
                str(e.get("value", ""))
                for e in (containers["istio-proxy"].get("env") or [] if has_sidecar else [])
                if e.get("name") == "ISTIO_META_CLUSTER_ID"
            ),
            "",
        ),
    )


def rollout_complete(deployment: Obj) -> bool:
    """As ``kubectl rollout status``: the new ReplicaSet has every replica, available, and no old one is left."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    wanted = spec.get("replicas", 1)
    generation = deployment["metadata"].get("generation", 0)
    return bool(
        status.get("observedGeneration", 0) >= generation
        and status.get("updatedReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
    )


GATEWAY_FAULT_COMMENT = "meshfed-fault-gateway-drops-packets"

# How long `istioctl install` may take, pulling the images of a new node included.
INSTALL_TIMEOUT = 900


class KubeCluster(Cluster):
    """One cluster reached through ``kubeconfig``/``context``; ``istioctl`` installs and inspects Istio."""

    def __init__(
        self,
        name: str,
        kubeconfig: Path | None,
        context: str | None,
        *,
        kubectl: Path,
        istioctl_binary: Path,
        istioctl_by_revision: Mapping[str, Path] | None = None,
        control_plane_namespace: str = manifests.ISTIO_SYSTEM,
        installs_istio: bool = True,
        node_container: str | None = None,
        node_command: Sequence[str] = (),
        install_overlays: Sequence[Path] = (),
        overlays_by_revision: Mapping[str, Sequence[Path]] | None = None,
        poll: float = 1.0,
    ) -> None:
        self.install_overlays = tuple(install_overlays)
        self.overlays_by_revision = {k: tuple(v) for k, v in (overlays_by_revision or {}).items()}
        self.node_container = node_container
        self.node_command = tuple(node_command)  # runs a command in the node's network (empty: no access to it)
        self.name = name
        self.kubeconfig = kubeconfig
        self.context = context
        self.api = KubeApi(kubeconfig, context, name)
        self.kubectl = kubectl
        self.istioctl = istioctl_binary
        self.istioctl_by_revision = dict(istioctl_by_revision or {})
        self.control_plane_namespace = control_plane_namespace
        self.installs_istio = installs_istio
        self.poll = poll
        # The external control plane's cluster: the config cluster whose credentials its istiod accepts.
        self.xds_via: KubeCluster | None = None

    # The contract speaks of istio-system for "the control plane's namespace", as a namespace of objects
    # and as a Namespace object; a managed control plane's own namespace stands in for it.
    def _namespace(self, namespace: str | None) -> str | None:
        return self.control_plane_namespace if namespace == manifests.ISTIO_SYSTEM else namespace

    def _name(self, kind: str, name: str) -> str:
        return self._namespace(name) or name if kind == "Namespace" else name

    def _tool_args(self) -> list[str]:
        args = []
        if self.kubeconfig:
            args += ["--kubeconfig", str(self.kubeconfig)]
        if self.context:
            args += ["--context", self.context]
        return args

    def run(self, binary: Path, args: Sequence[str], *, timeout: float = 600) -> str:
        """Run a tool against this cluster; a failure is a BackendError quoting the tool's last words."""
        command = [str(binary), *self._tool_args(), *args]  # global flags first: nothing may follow `--`
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"{self.name}: `{_show(command)}` did not finish within {timeout:g} s") from None
        except OSError as error:
            raise BackendError(f"{self.name}: cannot run {binary} ({error.strerror})") from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
            raise BackendError(
                f"{self.name}: `{_show(command)}` failed (exit {done.returncode}): {' / '.join(last) or 'no output'}"
            )
        return done.stdout

    # Objects
    def check_own_namespace(self, name: str) -> None:
        """On clusters meshfed did not make, it creates, changes and deletes only namespaces of its own: a
        namespace of the same name that does not carry its label is refused, never adopted."""
        if self.installs_istio:
            return
        found = self.api.request("GET", resource("Namespace").path(None, name), missing_ok=True)
        labels = ((found or {}).get("metadata") or {}).get("labels") or {}
        if found is not None and any(labels.get(key) != value for key, value in manifests.MANAGED_BY.items()):
            raise BackendError(
                f"{self.name}: namespace {name} already exists and meshfed did not create it: meshfed only works in "
                "namespaces of its own; delete or rename that one"
            )

    def apply(self, obj: Obj) -> Obj:
        if obj["kind"] == "IstioOperator":
            self.install(obj)
            return obj
        kind, metadata = obj["kind"], obj["metadata"]
        if kind == "Namespace":
            self.check_own_namespace(self._name(kind, metadata["name"]))
        res = resource(kind)
        namespace = self._namespace(metadata.get("namespace")) if res.namespaced else None
        body = json.loads(json.dumps(obj))
        if namespace:
            body["metadata"]["namespace"] = namespace
        name = self._name(kind, metadata["name"])
        body["metadata"]["name"] = name
        applied = self.api.request(
            "PATCH",
            res.path(namespace, name),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            body=body,
            content_type="application/apply-patch+yaml",
        )
        return applied or body

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        res = resource(kind)
        return self.api.request("GET", res.path(self._namespace(namespace), self._name(kind, name)), missing_ok=True)

    def list(
        self, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Obj]:
        res = resource(kind)
        found = self.api.request("GET", res.path(self._namespace(namespace)), query=_selector(labels)) or {}
        return [dict(item, kind=kind) for item in found.get("items") or []]

    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj) -> Obj:
        res = resource(kind)
        patched = self.api.request(
            "PATCH",
            res.path(self._namespace(namespace), self._name(kind, name)),
            query=[("fieldManager", FIELD_MANAGER)],
            body=patch,
            content_type="application/merge-patch+json",
        )
        return patched or {}

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        if kind == "IstioOperator":
            return self.uninstall(name)
        res = resource(kind)
        if kind == "Namespace":
            self.check_own_namespace(self._name(kind, name))
        path = res.path(self._namespace(namespace), self._name(kind, name))
        deleted = self.api.request("DELETE", path, missing_ok=True) is not None
        if deleted and kind == "Namespace":
            self._wait_gone(path, f"namespace {name}")
        return deleted

    def _wait_gone(self, path: str, what: str, timeout: float = 180) -> None:
        """A Namespace stays Terminating until its pods are gone; nothing can be created in it meanwhile."""
        deadline = time.monotonic() + timeout
        while self.api.request("GET", path, missing_ok=True) is not None:
            if time.monotonic() >= deadline:
                raise BackendError(f"{self.name}: {what} is still terminating after {timeout:g} s")
            time.sleep(self.poll)

    # Deployments
    def rollout_restart(self, deployment: str, namespace: str, timeout: float = 120) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        annotation = {"kubectl.kubernetes.io/restartedAt": stamp}
        self.patch(
            "Deployment", deployment, namespace, {"spec": {"template": {"metadata": {"annotations": annotation}}}}
        )
        if not self.wait_ready(deployment, namespace, timeout):
            raise BackendError(f"{self.name}: the restart of {namespace}/{deployment} did not finish in {timeout:g} s")

    def scale(self, deployment: str, namespace: str, replicas: int, timeout: float = 120) -> None:
        self.patch("Deployment", deployment, namespace, {"spec": {"replicas": replicas}})
        if not self.wait_ready(deployment, namespace, timeout):
            raise BackendError(f"{self.name}: {namespace}/{deployment} did not reach {replicas} ready pods")

    def wait_ready(self, deployment: str, namespace: str, timeout: float = 120) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            found = self.get("Deployment", deployment, namespace)
            if found is not None and rollout_complete(found):
                labels = (found["spec"].get("selector") or {}).get("matchLabels") or {}
                # A finished pod that stays (an evicted one) is no replica; one still being deleted is, until it
                # is gone: a pod that exited cleanly on SIGTERM shows phase Succeeded for seconds before it goes.
                pods = [
                    p for p in self.pods(namespace, labels) if p.terminating or p.phase not in ("Succeeded", "Failed")
                ]
                if all(p.ready for p in pods) and len(pods) == found["spec"].get("replicas", 1):
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll)

    def pods(self, namespace: str, labels: Mapping[str, str] | None = None) -> builtins.list[PodInfo]:
        return [pod_info(pod) for pod in self.list("Pod", namespace, labels)]

    def gateway_address(self, timeout: float, hint: str, *, control_plane: bool = False) -> str:
        """The east-west gateway Service's external address, once its load balancer gives it one; with
        ``control_plane``, the external cluster's ingress gateway's (istio-system), through which the external
        istiod is reached."""
        deadline = time.monotonic() + timeout
        what = "the ingress gateway of the external istiod" if control_plane else "the east-west gateway"
        while True:
            if control_plane:  # the real istio-system, not the control plane's namespace it stands for
                path = resource("Service").path(manifests.ISTIO_SYSTEM, manifests.INGRESS_GATEWAY)
                service = self.api.request("GET", path, missing_ok=True) or {}
            else:
                service = self.get("Service", manifests.EASTWEST_GATEWAY, manifests.ISTIO_SYSTEM) or {}
            ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if ingress and (ingress[0].get("ip") or ingress[0].get("hostname")):
                return str(ingress[0].get("ip") or ingress[0].get("hostname"))
            if time.monotonic() >= deadline:
                raise BackendError(f"{self.name}: {what} got no external address in {timeout:g} s: {hint}")
            time.sleep(min(self.poll, 0.5))

    # Calls and proxies
    def _call(
        self,
        pod: str,
        namespace: str,
        url: str,
        count: int,
        *,
        timeout: float,
        headers: Mapping[str, str] | None,
    ) -> builtins.list[CallResult]:
        found = self.get("Pod", pod, namespace)
        if found is None:
            raise BackendError(f"{self.name}: no pod {namespace}/{pod} to call from")
        container = (found["metadata"].get("labels") or {}).get("app", manifests.CLIENT)
        program = ["python", f"{manifests.WORKLOAD_MOUNT}/echo.py", "call", url, "--count", str(count)]
        program += ["--timeout", f"{timeout:g}"]
        for key, value in (headers or {}).items():
            program += ["--header", f"{key}:{value}"]
        args = ["exec", pod, "-n", self._namespace(namespace) or namespace, "-c", container, "--", *program]
        output = self.run(self.kubectl, args, timeout=count * (timeout + 2) + 30)
        results = [CallResult.from_program(json.loads(line)) for line in output.splitlines() if line.startswith("{")]
        if len(results) != count:
            raise BackendError(f"{self.name}: {pod} answered {len(results)} of {count} calls: {output[-200:]!r}")
        return results

    def drop_gateway_connections(self, every: int) -> None:
        """An iptables rule in the node's network: every Nth packet forwarded to port 15443 (the east-west
        gateway's, after kube-proxy's DNAT) is answered with a TCP reset; ``every`` 0 removes it."""
        if not self.node_command:
            raise BackendError(f"{self.name}: meshfed has no access to this cluster's node network to degrade it")
        listed = self._node(["iptables", "-w", "-S", "FORWARD"])
        for line in listed.splitlines():
            if GATEWAY_FAULT_COMMENT in line:
                self._node(["iptables", "-w", "-D", *shlex.split(line)[1:]])
        if every:
            rule = ["FORWARD", "-p", "tcp", "--dport", "15443", "-m", "statistic", "--mode", "nth", "--every"]
            rule += [str(every), "--packet", "0", "-m", "comment", "--comment", GATEWAY_FAULT_COMMENT]
            self._node(["iptables", "-w", "-I", *rule, "-j", "REJECT", "--reject-with", "tcp-reset"])

    def _node(self, command: Sequence[str]) -> str:
        full = [*self.node_command, *command]
        done = subprocess.run(full, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise BackendError(f"{self.name}: `{' '.join(full)}` failed: {done.stderr.strip() or 'no output'}")
        return done.stdout

    def proxy_certs(self, pod: str, namespace: str) -> ProxyCerts:
        target = f"{pod}.{self._namespace(namespace)}"
        istio_namespace = ["--istioNamespace", self.control_plane_namespace]
        output = self.run(self.istioctl, ["proxy-config", "secret", target, "-o", "json", *istio_namespace], timeout=60)
        return istioctl.parse_secret_dump(output)

    def server_identities(self, pod: str, namespace: str, fqdn: str) -> frozenset[str]:
        target = f"{pod}.{self._namespace(namespace)}"
        args = ["proxy-config", "cluster", target, "--fqdn", fqdn, "--direction", "outbound", "-o", "json"]
        output = self.run(self.istioctl, [*args, "--istioNamespace", self.control_plane_namespace], timeout=60)
        return istioctl.parse_cluster_identities(output, fqdn)

    def istiod_reported_version(self, revision: str) -> str:
        """The version istiod of ``revision`` reports itself (``pilot-discovery version -s`` in its pod): for an
        image whose tag names none (pinned by digest only); "" when it cannot be asked."""
        labels = {"app": "istiod"} | ({"istio.io/rev": revision} if revision != "default" else {})
        pods = [pod for pod in self.pods(manifests.ISTIO_SYSTEM, labels) if pod.ready]
        if not pods:
            return ""
        namespace = self.control_plane_namespace
        command = ["exec", "-n", namespace, pods[0].name, "-c", "discovery", "--", "pilot-discovery", "version", "-s"]
        try:
            return self.run(self.kubectl, command, timeout=30).strip().splitlines()[-1]
        except (BackendError, IndexError):
            return ""

    def analyze(self) -> builtins.list[dict[str, str]]:
        """``istioctl analyze`` of every namespace, for the revision in use: its messages of level Warning and
        above, as it prints them with ``-o json`` (code, level, origin, message)."""
        args = ["analyze", "--all-namespaces", "-o", "json", "--output-threshold", "Warning"]
        args += ["--istioNamespace", self.control_plane_namespace]
        if self.revision and self.revision != "default":
            args += ["--revision", self.revision]
        output = self.run(self.istioctl, args, timeout=120)
        try:
            messages = json.loads(output[output.find("[") :] if "[" in output else "[]")
        except ValueError:
            raise BackendError(f"{self.name}: istioctl analyze printed no JSON list: {output.strip()[:200]}") from None
        return [{str(k): str(v) for k, v in m.items()} for m in messages if isinstance(m, dict)]

    def remote_clusters(self) -> builtins.list[RemoteClusterStatus]:
        output = self.run(self.istioctl, ["remote-clusters", "--istioNamespace", self.control_plane_namespace])
        return istioctl.parse_remote_clusters(output)

    def connected_proxies(self) -> builtins.list[ConnectedProxy]:
        if not self.list("Deployment", manifests.ISTIO_SYSTEM, {"app": "istiod"}):
            return []  # a remote: its proxies are listed by its primary
        args = ["proxy-status", "--istioNamespace", self.control_plane_namespace]
        if self.xds_via is not None:
            if not any(p.ready for p in self.pods(manifests.ISTIO_SYSTEM, {"app": "istiod"})):
                return []  # an istiod not ready serves no proxy (its discovery server waits for its caches)
            # An external istiod authenticates callers against its config cluster (its own kube client), so a
            # token of this cluster's is refused ("authentication failure", seen on host): istioctl asks it with a
            # token of the config cluster, through a port-forward to its pod (not through the ingress gateway,
            # whose routes may be what is broken).
            with self._forwarded(15012) as address:
                output = self.xds_via.run(self.istioctl, [*args, "--xds-address", address], timeout=60)
            return istioctl.parse_proxy_status(output)
        return istioctl.parse_proxy_status(self.run(self.istioctl, args, timeout=60))

    @contextlib.contextmanager
    def _forwarded(self, port: int) -> Iterator[str]:
        """``kubectl port-forward`` to ``port`` of a ready istiod pod here: the local address, while it lasts."""
        pods = [p for p in self.pods(manifests.ISTIO_SYSTEM, {"app": "istiod"}) if p.ready]
        if not pods:
            raise BackendError(f"{self.name}: no ready istiod pod to ask")
        namespace = self._namespace(manifests.ISTIO_SYSTEM)
        command = [
            str(self.kubectl),
            *self._tool_args(),
            "port-forward",
            "-n",
            str(namespace),
            f"pod/{pods[0].name}",
            f":{port}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> 15012"
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not found:
                raise BackendError(
                    f"{self.name}: `kubectl port-forward` to {pods[0].name} failed: {line.strip() or 'no output'}"
                )
            yield f"127.0.0.1:{found.group(1)}"
        finally:
            process.terminate()
            process.wait(timeout=10)

    def host_evidence(self) -> builtins.list[Evidence]:
        """The node (kind), an east-west gateway (15443) and a client's sidecar (15006), read with testinfra."""
        found = [evidence.node(self.node_container)] if self.node_container else []
        targets = [
            (manifests.ISTIO_SYSTEM, {"app": manifests.EASTWEST_GATEWAY}, evidence.EASTWEST_PASSTHROUGH),
            (TEST_NAMESPACE, {"app": manifests.CLIENT}, evidence.SIDECAR_INBOUND),
        ]
        for namespace, labels, port in targets:
            pods = [p for p in self.pods(namespace, labels) if p.ready and p.has_sidecar]  # an istio-proxy container
            if not pods:
                continue
            real_namespace = self._namespace(namespace) or namespace
            url = evidence.kubectl_url(pods[0].name, real_namespace, "istio-proxy", self.kubeconfig, self.context)
            found += evidence.proxy(url, f"{self.name}/{pods[0].name}", port)
        return found

    # Istio itself
    def _istioctl_for(self, revision: str) -> Path:
        return self.istioctl_by_revision.get(revision, self.istioctl)

    def install(self, operator: Obj) -> None:
        if not self.installs_istio:
            raise BackendError(f"{self.name}: meshfed does not install Istio on clusters it did not create")
        revision = (operator.get("spec") or {}).get("revision", "")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="meshfed-iop-") as file:
            yaml.safe_dump(operator, file, sort_keys=False)
            file.flush()
            # A backend's overlays follow the plan's file, as a user's extra `-f` files do (istioctl merges them).
            chosen = self.overlays_by_revision.get(revision, self.install_overlays)
            overlays = [arg for path in chosen for arg in ("-f", str(path))]
            # istioctl waits for what it installed (5 min by default, too short while a new node pulls
            # images); its own wait ends first, so its sentence naming what is not ready reaches the user.
            readiness = f"--readiness-timeout={INSTALL_TIMEOUT - 60}s"
            self.run(
                self._istioctl_for(revision),
                ["install", "-y", "-f", file.name, *overlays, readiness],
                timeout=INSTALL_TIMEOUT,
            )

    def uninstall(self, operator_name: str) -> bool:
        """``istioctl uninstall`` of the revision an IstioOperator of ours installed (control-plane[-REV])."""
        if not self.installs_istio:
            raise BackendError(f"{self.name}: meshfed does not uninstall Istio from clusters it did not create")
        if not operator_name.startswith("control-plane"):
            raise BackendError(f"{self.name}: meshfed only uninstalls its control planes, not {operator_name!r}")
        revision = operator_name.removeprefix("control-plane").lstrip("-") or "default"
        self.run(self._istioctl_for(revision), ["uninstall", "--revision", revision, "-y"], timeout=600)
        return True

    def service_account_token(self, name: str, namespace: str) -> str:
        path = resource("ServiceAccount").path(self._namespace(namespace), name) + "/token"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 7200}}
        answer = self.api.request("POST", path, body=body) or {}
        return str((answer.get("status") or {}).get("token") or "")

    def create_remote_secret(self, server: str, *, config: bool = False) -> builtins.list[Obj]:
        """``istioctl create-remote-secret`` for reading this cluster, its API server reached at ``server``; with
        ``config``, the external istiod's ``istio-kubeconfig`` (``--type=config``, as its istiod ServiceAccount)."""
        args = ["create-remote-secret", "--name", self.name, "--server", server]
        if config:
            args += ["--type=config", "--service-account=istiod", "--create-service-account=false"]
        args += ["--istioNamespace", self.control_plane_namespace]
        output = self.run(self.istioctl, args)
        return [doc for doc in yaml.safe_load_all(output) if doc]


class KubeMesh(Mesh):
    """A mesh of real clusters; ``teardown`` is what its backend leaves behind or removes."""

    convergence_deadline = 120.0

    def __init__(
        self,
        backend: str,
        spec: MeshSpec,
        istio_version: str,
        clusters: Mapping[str, KubeCluster],
        teardown: Callable[[], None],
        environment: Mapping[str, str] | None = None,
        certifies_istio: bool | None = None,
        external: KubeCluster | None = None,
    ) -> None:
        self._external = external
        if external is not None:
            external.xds_via = clusters[spec.config_cluster(spec.names[0])]
        self.environment = dict(environment or {})
        self.certifies_istio = certifies_istio
        self.backend = backend
        self.spec = spec
        self.istio_version = istio_version
        self._clusters = dict(clusters)
        self._teardown = teardown

    @property
    def clusters(self) -> Mapping[str, KubeCluster]:
        return self._clusters

    @property
    def external(self) -> KubeCluster | None:
        return self._external

    def teardown(self) -> None:
        self._teardown()


def _show(command: Sequence[str]) -> str:
    return " ".join(Path(command[0]).name if i == 0 else part for i, part in enumerate(command))
