"""The sidecar injector webhook, emulated: what it decides for a pod, and the API server's call to it.

* What the webhook decides (``pkg/kube/inject/webhook.go`` and ``inject.go``) is ``decide``: the network and
  cluster of the proxy (the pod's own network label, else the injection path's ``/inject/cluster/<c>/net/<n>``,
  else ``values.global.network``; the cluster from the path, else ``multiCluster.clusterName``), where the proxy
  finds istiod (``meshConfig.defaultConfig.discoveryAddress``, else ``istiod[-<rev>].<istiod's namespace>.svc
  :15012``), and the labels the webhook writes on the pod.
* Where the API server finds it (``call``): a cluster without an injection template of its own (a remote of
  an external control plane: the remote profile installs only the webhook, ``omitSidecarInjectorConfigMap``)
  has the remote profile's ``MutatingWebhookConfiguration``, whose ``clientConfig.service`` (istiod's
  selector-less Service, its EndpointSlice holding ``remotePilotAddress``) the API server calls on 443 with
  the injection path. It verifies the server against the configuration's ``caBundle``, which istiod patches
  in (``webhooks.NewWebhookCertPatcher``); while it is empty the call fails x509 verification. The webhooks
  are ``failurePolicy: Fail``: a failed call refuses the pod, and its ReplicaSet tries again later.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any

from meshfed.backends.embedded.agent import Injection
from meshfed.backends.embedded.node import Node
from meshfed.backends.embedded.tls import NO_CHECK_TIME, go_verify_reason, peer_certificate
from meshfed.manifests import NETWORK_LABEL, TLS_MODE_LABEL, Obj

WEBHOOK_PORT = 15017  # istiod's https-webhook port (its Service's 443)
CALL_TIMEOUT = 5.0


class WebhookError(Exception):
    """The API server could not have the pod injected; the message is what the ReplicaSet's event says."""


def path_parameters(path: str) -> dict[str, str]:
    """``/inject/cluster/<c>/net/<n>`` -> {"cluster": c, "net": n} (the pairs ``webhook.go`` reads)."""
    parts = path.strip("/").split("/")
    return {parts[i]: parts[i + 1] for i in range(len(parts) - 1) if parts[i] in ("cluster", "net")}


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return (host, int(port)) if host and port.isdigit() else (address, 15012)


def decide(
    values: Mapping[str, Any],
    mesh: Mapping[str, Any],
    *,
    revision: str,
    istiod_namespace: str,
    labels: Mapping[str, str],
    gateway: bool,
    path: str,
) -> Injection:
    """What the injection webhook of ``revision`` does to a pod with ``labels``, called at ``path``."""
    global_values = values.get("global") or {}
    parameters = path_parameters(path)
    # The webhook labels the pod with its network (applyMetadata in pkg/kube/inject/webhook.go): the pod's
    # own label, else the injection path's, else values.global.network (extractClusterAndNetwork in
    # inject.go); the control plane namespace's label plays no part.
    network = labels.get(NETWORK_LABEL, parameters.get("net") or global_values.get("network", ""))
    cluster_id = parameters.get("cluster") or (global_values.get("multiCluster") or {}).get("clusterName", "")
    # The proxy's discoveryAddress (PROXY_CONFIG) is the mesh config's, else the injecting istiod's Service:
    # in a remote of a primary that is the selector-less Service whose EndpointSlice holds remotePilotAddress.
    suffix = "" if revision == "default" else f"-{revision}"
    default = f"istiod{suffix}.{istiod_namespace}.svc:15012"
    host, port = _host_port(str((mesh.get("defaultConfig") or {}).get("discoveryAddress") or default))
    # A sidecar's pod is labelled security.istio.io/tlsMode=istio (the injection template): istiod reads it as
    # "this endpoint takes Istio's mTLS".
    pod_labels = {NETWORK_LABEL: network} if network else {}
    if not gateway:
        pod_labels[TLS_MODE_LABEL] = "istio"
    trust_domain = str(mesh.get("trustDomain") or "cluster.local")
    return Injection(host, network, trust_domain, revision, pod_labels, cluster_id, port)


def injection_to_json(injection: Injection) -> dict[str, Any]:
    return dataclasses.asdict(injection) | {"pod_labels": dict(injection.pod_labels)}


def call(node: Node, config: Obj, namespace: str, labels: Mapping[str, str], *, gateway: bool) -> Injection:
    """The API server of ``node`` calls the injection webhook of ``config`` for a pod; WebhookError when the
    call fails (``failurePolicy: Fail``: the pod is not created)."""
    hook = (config.get("webhooks") or [{}])[0]
    client = hook.get("clientConfig") or {}
    service = client.get("service") or {}
    host = f"{service.get('name', 'istiod')}.{service.get('namespace', '')}.svc"
    port, path = int(service.get("port", 443)), str(service.get("path") or "/inject")
    what = f'failed calling webhook "{hook.get("name", "sidecar-injector.istio.io")}"'
    url = f"https://{host}:{port}{path}?timeout=10s"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the API server checks the Service's name, too
    context.verify_flags |= NO_CHECK_TIME  # certificates are dated by the mesh clock (see tls)
    bundle = base64.b64decode(client.get("caBundle") or "")
    if bundle:
        context.load_verify_locations(cadata=bundle.decode())
    request = {"path": path, "namespace": namespace, "labels": dict(labels), "gateway": gateway}
    try:
        raw = node.connect(node.spec.network, host, port, timeout=CALL_TIMEOUT)
        with context.wrap_socket(raw, server_hostname=host) as conn:
            conn.settimeout(CALL_TIMEOUT)
            conn.sendall(json.dumps(request).encode() + b"\n")
            line = conn.makefile("rb").readline()
    except ssl.SSLCertVerificationError as error:
        try:
            peer = peer_certificate(node.connect(node.spec.network, host, port, timeout=CALL_TIMEOUT), host)
        except OSError:
            peer = None
        reason = go_verify_reason(error, peer, host)
        raise WebhookError(f'Internal error occurred: {what}: failed to call webhook: Post "{url}": {reason}') from None
    except (OSError, ssl.SSLError) as error:
        reason = "EOF" if isinstance(error, ConnectionResetError | ssl.SSLEOFError) else str(error) or "EOF"
        if isinstance(error, socket.gaierror):
            reason = f"dial tcp: lookup {host}: no such host"
        raise WebhookError(f'Internal error occurred: {what}: failed to call webhook: Post "{url}": {reason}') from None
    answer = json.loads(line) if line else {"error": "EOF"}
    if "error" in answer:
        raise WebhookError(f"Internal error occurred: {what}: {answer['error']}")
    return Injection(**answer)
