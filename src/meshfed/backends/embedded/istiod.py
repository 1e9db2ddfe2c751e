"""istiod, emulated: the CA, the cluster registry (remote secrets) and discovery.

Every decision istiod makes that the suite depends on lives here, each with the Istio behaviour it
follows:

* CA choice at start-up (``createIstioCA`` in ``pilot/pkg/bootstrap/istio_ca.go``): the four
  ``cacerts`` files (or ``tls.crt``/``tls.key``/``ca.crt``) -> plugged-in CA; none -> a self-signed
  root kept in Secret ``istio-ca-secret``; some -> istiod does not start ("incomplete signing CA
  bundle detected").
* cacerts reload (``handleEvent``): only an istiod that started plugged-in follows ``cacerts``; a new
  intermediate under the same root is taken; a changed root is ignored ("Multi root is disabled,
  updating new ROOT-CA not supported") unless ``ISTIO_MULTIROOT_MESH`` is on and one bundle contains
  the other. (The kubelet's secret-volume sync delay, about a minute on a real cluster, is not
  emulated: the change is seen at once.)
* ``istio-ca-root-cert`` in every namespace of its cluster, and of the remote clusters it leads: as an
  external istiod (primary-remote), those whose ``istio-system`` annotation
  ``topology.istio.io/controlPlaneClusters`` named it when the cluster was added (``checkShouldLead``).
* The registry: its own cluster plus every cluster of a remote secret (label
  ``istio/multiCluster: "true"``) whose kubeconfig server it can reach; ``127.0.0.1`` is its own pod.
  A secret whose kubeconfig changes to one that cannot sync leaves the cluster it had serving ("it will
  be stopped after the new cluster syncs", ``addRemoteConfig`` in pkg/kube/multicluster): only a
  deleted secret, or istiod's restart, drops it. Status rows name the secret ``<namespace>/<name>``.
* Endpoints: a Service's ready pods in every registry cluster; an endpoint on another network is
  replaced by that network's east-west gateway (a Service labelled ``topology.istio.io/network`` with
  a LoadBalancer address, port 15443) or dropped when there is none; an endpoint's network is the pod
  label, else the ``istio-system`` label of its cluster, and an empty network counts as local
  (``IsSameOrEmpty``).
* Secure naming: an endpoint's SPIFFE ID is in the trust domain of its own cluster's mesh config.
* Config (PeerAuthentication, AuthorizationPolicy, DestinationRule, Gateway, VirtualService) comes
  from istiod's own cluster only: each primary reads its own; remotes are configured by their primary.

The xDS stream itself is in-process: a proxy that obtained its certificate from istiod over the
network (TLS on 15012, directly or through the east-west gateway) is registered for pushes, and
keeps its last push when istiod goes away.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import yaml
from cryptography import x509

from meshfed.backends.base import RemoteClusterStatus
from meshfed.backends.embedded import xds
from meshfed.backends.embedded.agent import ProxyAgent
from meshfed.backends.embedded.fabric import close_listener, serve
from meshfed.backends.embedded.node import Node
from meshfed.backends.embedded.store import ObjectStore, matches
from meshfed.manifests import (
    CONTROL_PLANE_CLUSTERS,
    ISTIO_SYSTEM,
    MULTICLUSTER_LABEL,
    NETWORK_LABEL,
    TLS_MODE_LABEL,
    kubeconfig_server,
)
from meshfed.pki import PluginCA, SpiffeId, bundle_from_secret, validate_bundle
from meshfed.pki.authority import CERT_CHAIN, new_root
from meshfed.pki.certs import cert_pem, key_pem, load_certs, load_key

DISCOVERY_PORT = 15012
# Problems that make istiod's CA constructor fail (NewVerifiedKeyCertBundleFromFile): it does not start.
_FATAL_BUNDLE_PROBLEMS = {
    "incomplete-bundle",
    "unreadable",
    "key-mismatch",
    "not-signed-by-root",
    "expired",
    "not-yet-valid",
}


def pod_locality(labels: Mapping[str, str], region: str, zone: str) -> tuple[str, str]:
    """A pod's region and zone: its ``istio-locality`` label (region.zone.subzone, dots for the slashes a label
    value cannot hold) overrides what its node says (istio/pkg config/labels IstioLocality; getPodLocality)."""
    label = labels.get("istio-locality")
    if not label:
        return region, zone
    parts = label.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


class IstiodStartError(Exception):
    """istiod cannot start; the message is what it logs before exiting."""


@dataclass(frozen=True)
class CAChoice:
    ca: PluginCA
    plugged: bool
    root_bundle: bytes  # root-cert.pem as read, to compare on reload


def choose_ca(store: ObjectStore, trust_domain: str, now: Any) -> CAChoice:
    """istiod's CA at start-up, decided as ``createIstioCA`` decides it."""
    secret = store.get("Secret", "cacerts", ISTIO_SYSTEM)
    files = bundle_from_secret(secret) if secret else {}
    report = validate_bundle(files, source="cacerts", now=now)
    codes = {finding.code for finding in report.findings}
    if "no-ca-files" in codes:
        return _self_signed(store, trust_domain, now)
    if "incomplete-bundle" in codes:
        raise IstiodStartError("failed to create an istiod CA: incomplete signing CA bundle detected")
    fatal = [f for f in report.findings if f.code in _FATAL_BUNDLE_PROBLEMS]
    if fatal:
        raise IstiodStartError(f"failed to create an istiod CA: {fatal[0].file}: {fatal[0].problem}")
    assert report.signing_cert is not None and report.key is not None
    ca = PluginCA(report.signing_cert, report.key, report.roots, report.chain)
    return CAChoice(ca, plugged=True, root_bundle=files[report.layout.root])


def _self_signed(store: ObjectStore, trust_domain: str, now: Any) -> CAChoice:
    """The root kept in ``istio-ca-secret`` (created when missing): ``O=<trust domain>``, 10 years."""
    secret = store.get("Secret", "istio-ca-secret", ISTIO_SYSTEM)
    if secret is None:
        root = new_root(key_type="rsa", rsa_bits=2048, organization=trust_domain, common_name="", days=3650, now=now)
        data = {
            "ca-cert.pem": cert_pem(root.cert),
            "ca-key.pem": key_pem(root.key),
            CERT_CHAIN: b"",
            "root-cert.pem": b"",
        }
        store.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "istio-ca-secret", "namespace": ISTIO_SYSTEM},
                "type": "istio.io/ca-root",
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            }
        )
        cert, key = root.cert, root.key
    else:
        files = bundle_from_secret(secret)
        cert = load_certs(files["ca-cert.pem"], "istio-ca-secret ca-cert.pem")[0]
        key = load_key(files["ca-key.pem"], "istio-ca-secret ca-key.pem")
    return CAChoice(PluginCA(cert, key, (cert,), (cert,)), plugged=False, root_bundle=cert_pem(cert))


def mesh_config(store: ObjectStore, revision: str) -> dict[str, Any]:
    name = f"istio-{revision}" if revision else "istio"
    config_map = store.get("ConfigMap", name, ISTIO_SYSTEM) or {}
    loaded = yaml.safe_load((config_map.get("data") or {}).get("mesh", "") or "{}")
    return loaded if isinstance(loaded, dict) else {}


def cluster_network(store: ObjectStore) -> str:
    namespace = store.get("Namespace", ISTIO_SYSTEM)
    return str(((namespace or {}).get("metadata", {}).get("labels") or {}).get(NETWORK_LABEL, ""))


def same_or_empty(a: str, b: str) -> bool:
    return not a or not b or a == b


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Istiod:
    def __init__(self, runtime: Node, pod_name: str, pod_ip: str, revision: str, env: Mapping[str, str]) -> None:
        self.runtime = runtime
        self.store = runtime.store
        self.pod_name = pod_name
        self.pod_ip = pod_ip
        self.revision = revision
        self.env = dict(env)
        self.log: list[str] = []
        self.ca_choice: CAChoice | None = None
        self.proxies: set[ProxyAgent] = set()
        self._lock = threading.RLock()
        self._listener: socket.socket | None = None
        self._watched: dict[str, ObjectStore] = {}
        self._leads: set[str] = set()  # the remote clusters whose namespaces get istio-ca-root-cert from it
        self._serving: dict[tuple[str, str], ObjectStore] = {}  # (secret, cluster) -> the cluster it serves
        self._running = False
        self.generation = 0
        self._table: dict[tuple[str, int], tuple[int, list[xds.Endpoint], set[str]]] = {}
        self._table_generation = -1

    # -- life cycle ---------------------------------------------------------------------------
    @property
    def cluster(self) -> str:
        return self.runtime.name

    @property
    def trust_domain(self) -> str:
        return str(mesh_config(self.store, self.revision).get("trustDomain") or "cluster.local")

    @property
    def external(self) -> bool:
        return self.env.get("EXTERNAL_ISTIOD", "").lower() == "true"

    def start(self) -> None:
        """Raises IstiodStartError when istiod cannot start (the pod is then not ready)."""
        try:
            self.ca_choice = choose_ca(self.store, self.trust_domain, self.runtime.clock.now())
        except IstiodStartError as error:
            self.log.append(str(error))
            raise
        self.log.append(
            "Use local CA certificate"
            if self.ca_choice.plugged
            else "Use self-signed certificate as the CA certificate"
        )
        self._serve_discovery()
        self._running = True
        self._serving.clear()  # a new istiod pod knows only what the secrets say now
        self.store.watch(self._on_own_event)
        self._refresh_registry()
        self._write_root_certs()
        self.push()

    @property
    def running(self) -> bool:
        return self._running

    def stop(self) -> None:
        was_running = self._running
        with self._lock:
            proxies = list(self.proxies)
        for agent in proxies:
            _ = agent.config  # every proxy holds the last push it was sent
        self._running = False
        self.store.unwatch(self._on_own_event)
        for store in self._watched.values():
            store.unwatch(self._on_remote_event)
        self._watched.clear()
        self._leads.clear()
        if self._listener is not None:
            close_listener(self._listener)
            self._listener = None
        with self._lock:
            self.proxies.clear()  # the xDS streams break; proxies keep their last config
        if was_running:
            self.runtime.mesh.reconnect_proxies()  # ... and reconnect to another istiod, if one answers

    # -- CA -----------------------------------------------------------------------------------
    @property
    def ca(self) -> PluginCA:
        assert self.ca_choice is not None
        return self.ca_choice.ca

    def trusted_roots(self) -> tuple[x509.Certificate, ...]:
        """The roots a proxy is given: the CA's root bundle plus MeshConfig ``caCertificates``."""
        extra: list[x509.Certificate] = []
        for entry in mesh_config(self.store, self.revision).get("caCertificates") or []:
            pem = (entry or {}).get("pem")
            if pem:
                extra += load_certs(pem.encode(), "caCertificates")
        roots = list(self.ca.root_certs)
        return tuple(roots + [r for r in extra if r not in roots])

    def _on_cacerts_change(self) -> None:
        """``handleEvent``: only a plugged-in istiod follows cacerts, and a new root only with multi-root."""
        if self.ca_choice is None or not self.ca_choice.plugged:
            return
        secret = self.store.get("Secret", "cacerts", ISTIO_SYSTEM)
        if secret is None:
            return
        files = bundle_from_secret(secret)
        report = validate_bundle(files, source="cacerts", now=self.runtime.clock.now())
        new_root = files.get(report.layout.root, b"")
        current = self.ca_choice.root_bundle
        if new_root != current:
            if self.env.get("ISTIO_MULTIROOT_MESH", "").lower() != "true":
                self.log.append("Multi root is disabled, updating new ROOT-CA not supported")
                return
            if not (new_root in current or current in new_root):
                self.log.append("Updating new ROOT-CA not supported")
                return
            self.log.append("Updating new ROOT-CA")
        if not report.ok or report.signing_cert is None or report.key is None:
            self.log.append(
                f"Failed to update new Plug-in CA certs: {report.errors[0].problem if report.errors else 'unreadable'}"
            )
            return
        ca = PluginCA(report.signing_cert, report.key, report.roots, report.chain)
        self.ca_choice = CAChoice(ca, plugged=True, root_bundle=new_root)
        self.log.append("Istiod has detected the newly added intermediate CA and updated its key and certs accordingly")
        self._context = self._serving_context()
        self._write_root_certs()

    def sign(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A CSR from a proxy: authenticate the pod in its cluster, then sign its SPIFFE ID."""
        cluster, namespace, pod_name = request.get("cluster"), request.get("namespace"), request.get("pod")
        store = self.registry().get(str(cluster))
        if store is None:
            return {
                "error": f"failed to authenticate: cluster {cluster!r} is not known to istiod of {self.cluster} (no remote secret)"
            }
        pod = store.get("Pod", str(pod_name), str(namespace))
        if pod is None:
            return {"error": f"failed to authenticate: no pod {pod_name} in {namespace} of {cluster}"}
        account = pod["spec"].get("serviceAccountName") or "default"
        identity = SpiffeId.for_workload(self.trust_domain, str(namespace), account)
        if request.get("type") == "xds":
            return {}  # an xDS stream: the proxy is registered for pushes by its agent
        csr = x509.load_pem_x509_csr(str(request["csr"]).encode())
        if not csr.is_signature_valid:
            return {"error": "CSR signature is invalid"}
        # istiod signs the identity it authenticated, whatever SANs the CSR asks for (security/pkg/server/ca).
        ttl = xds.go_duration(self.env.get("DEFAULT_WORKLOAD_CERT_TTL", "24h"))
        chain = self.ca.sign_workload(csr.public_key(), identity, ttl=ttl, now=self.runtime.clock.now())  # type: ignore[arg-type]
        return {
            "certChain": [cert_pem(c).decode() for c in chain],
            "roots": [cert_pem(r).decode() for r in self.trusted_roots()],
        }

    # -- discovery server (15012) ---------------------------------------------------------------
    def _serving_context(self) -> ssl.SSLContext:
        """istiod's serving certificate from its current CA (made anew when the CA changes, as
        ``updateRootCertAndGenKeyCert`` does)."""
        key = self.runtime.mesh.new_key()
        cert = _istiod_serving_cert(self.ca, key.public_key(), self.runtime.clock.now())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain_file, key_file = self.runtime.mesh.keys.write(
            f"istiod-{self.cluster}-{self.pod_name}", key, cert_pem(cert, *self.ca.cert_chain)
        )
        context.load_cert_chain(chain_file, key_file)
        return context

    def _serve_discovery(self) -> None:
        self._context = self._serving_context()
        self._listener = serve((self.pod_ip, DISCOVERY_PORT), self._serve_one, f"istiod-{self.cluster}")

    def _serve_one(self, raw: socket.socket, _peer: Any) -> None:
        context = self._context
        if not self._running:  # a connection accepted while istiod stops: its stream breaks
            raw.close()
            return
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline()
                request = json.loads(line)
                response = self.sign(request)
                response["istiod"] = f"{self.cluster}/{self.pod_name}"
                conn.sendall(json.dumps(response).encode() + b"\n")
        except (OSError, ValueError, ssl.SSLError):
            raw.close()

    # -- registry -------------------------------------------------------------------------------
    def registry(self) -> dict[str, ObjectStore]:
        stores = {self.cluster: self.store}
        for status, store in self._remote_clusters():
            if store is not None:
                stores[status.name] = store
        return stores

    def _remote_clusters(self) -> list[tuple[RemoteClusterStatus, ObjectStore | None]]:
        """Each remote secret's clusters: the status of the kubeconfig it holds now, and the cluster
        served for it (the one it syncs, else the one its previous kubeconfig synced)."""
        found, serving = [], {}
        with self._lock:
            for secret in self.store.list("Secret", ISTIO_SYSTEM, {MULTICLUSTER_LABEL: "true"}):
                key = f"{ISTIO_SYSTEM}/{secret['metadata']['name']}"
                for name, kubeconfig in bundle_from_secret(secret).items():
                    server = kubeconfig_server(kubeconfig)
                    target = self.runtime.mesh.fabric.cluster_of_api_server(server) if server else None
                    store = self.runtime.mesh.store_of(target) if target else None
                    status = "synced" if store is not None else "timeout"
                    served = store or self._serving.get((key, name))
                    if served is not None:
                        serving[(key, name)] = served
                    found.append((RemoteClusterStatus(name, key, status), served))
            if self._running:
                self._serving = serving
        return found

    def remote_status(self) -> list[RemoteClusterStatus]:
        own = RemoteClusterStatus(self.cluster, "", "synced")
        return [own] + [status for status, _ in self._remote_clusters()]

    def _refresh_registry(self) -> None:
        wanted = {name: store for name, store in self.registry().items() if name != self.cluster}
        for name in set(self._watched) - set(wanted):
            self._watched.pop(name).unwatch(self._on_remote_event)
            self._leads.discard(name)
        added = False
        for name, store in wanted.items():
            if name not in self._watched:
                store.watch(self._on_remote_event)
                self._watched[name] = store
                if self._should_lead(store):
                    self._leads.add(name)
                    added = True
        if added:
            self._write_root_certs()

    def _should_lead(self, store: ObjectStore) -> bool:
        """``checkShouldLead`` (pilot/pkg/serviceregistry/kube/controller/multicluster.go), decided once, as the
        cluster is added: only an external istiod, and only when the remote's istio-system annotation
        ``topology.istio.io/controlPlaneClusters`` names its cluster (or ``*``)."""
        if not self.external:
            return False
        namespace = store.get("Namespace", ISTIO_SYSTEM) or {}
        named = ((namespace.get("metadata") or {}).get("annotations") or {}).get(CONTROL_PLANE_CLUSTERS, "")
        return any(c in ("*", self.cluster) for c in named.split(",")) if named else False

    # -- events -------------------------------------------------------------------------------
    def _on_own_event(self, event: str, obj: Mapping[str, Any]) -> None:
        if not self._running:
            return
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        if kind == "Secret" and meta.get("namespace") == ISTIO_SYSTEM:
            if meta.get("name") == "cacerts":
                self._on_cacerts_change()
            self._refresh_registry()
        if kind == "Namespace" and event == "ADDED":
            self._write_root_certs()
        if kind != "ConfigMap" or meta.get("name") != "istio-ca-root-cert":
            self.push()

    def _on_remote_event(self, event: str, obj: Mapping[str, Any]) -> None:
        if not self._running:
            return
        if obj.get("kind") == "Namespace" and event == "ADDED" and self._leads:
            self._write_root_certs()
        if obj.get("kind") != "ConfigMap":
            self.push()

    def _write_root_certs(self) -> None:
        """``istio-ca-root-cert`` (key ``root-cert.pem``) in every namespace istiod is responsible for."""
        pem = cert_pem(*self.ca.root_certs).decode()
        targets = [self.store] + [store for name, store in self.registry().items() if name in self._leads]
        for store in targets:
            for namespace in store.list("Namespace"):
                name = namespace["metadata"]["name"]
                current = store.get("ConfigMap", "istio-ca-root-cert", name)
                if current is not None and (current.get("data") or {}).get("root-cert.pem") == pem:
                    continue
                store.apply(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {
                            "name": "istio-ca-root-cert",
                            "namespace": name,
                            "labels": {"istio.io/config": "true"},
                        },
                        "data": {"root-cert.pem": pem},
                    }
                )

    # -- xDS ----------------------------------------------------------------------------------
    # A push is a new generation; each proxy rebuilds its configuration from the newest generation the
    # next time it looks (what a debounced push ends in, without a window of staleness).
    def register(self, agent: ProxyAgent) -> None:
        with self._lock:
            self.proxies.add(agent)

    def unregister(self, agent: ProxyAgent) -> None:
        with self._lock:
            self.proxies.discard(agent)

    def connected(self) -> list[ProxyAgent]:
        """The proxies whose xDS stream is open to this istiod (what ``istioctl proxy-status`` lists)."""
        with self._lock:
            return [agent for agent in self.proxies if agent.istiod is self]

    def push(self) -> None:
        with self._lock:
            self.generation += 1

    def config_for_generation(self, agent: ProxyAgent) -> tuple[int, xds.ProxyConfig]:
        with self._lock:
            generation = self.generation
            if self._table_generation != generation:
                self._table = self._endpoint_table()
                self._table_generation = generation
            table = self._table
        return generation, self.config_for(agent, table)

    def _endpoint_table(self) -> dict[tuple[str, int], tuple[int, list[xds.Endpoint], set[str]]]:
        """Every service port in the registry: target port, endpoints (pod addresses), accounts."""
        table: dict[tuple[str, int], tuple[int, list[xds.Endpoint], set[str]]] = {}
        own_trust_domain = self.trust_domain
        for cluster, store in self.registry().items():
            # A remote cluster's pods are named in the trust domain of that cluster's own mesh config, read
            # through its remote secret; the config cluster's when it has none (NewMulticluster's
            # per-cluster mesh watcher, pilot/pkg/serviceregistry/kube/controller/multicluster.go).
            trust_domain = str(mesh_config(store, self.revision).get("trustDomain") or own_trust_domain)
            network = cluster_network(store)
            spec = self.runtime.mesh.spec_of(cluster)
            pods = store.list("Pod")
            for service in store.list("Service"):
                selector = service.get("spec", {}).get("selector")
                if not selector:
                    continue
                namespace = service["metadata"]["namespace"]
                fqdn = f"{service['metadata']['name']}.{namespace}.svc.cluster.local"
                members = [
                    p
                    for p in pods
                    if p["metadata"]["namespace"] == namespace
                    and matches(p["metadata"].get("labels"), selector)
                    and _ready(p)
                ]
                for port in service["spec"].get("ports", []):
                    target = int(port.get("targetPort", port["port"]))
                    _, endpoints, accounts = table.setdefault((fqdn, int(port["port"])), (target, [], set()))
                    for pod in members:
                        labels = pod["metadata"].get("labels") or {}
                        locality = pod_locality(labels, spec.region, spec.zone)
                        account = pod["spec"].get("serviceAccountName") or "default"
                        accounts.add(f"spiffe://{trust_domain}/ns/{namespace}/sa/{account}")
                        endpoints.append(
                            xds.Endpoint(
                                address=pod["status"]["podIP"],
                                port=target,
                                cluster=cluster,
                                network=labels.get(NETWORK_LABEL, network),
                                region=locality[0],
                                zone=locality[1],
                                pod=pod["metadata"]["name"],
                                mtls=labels.get(TLS_MODE_LABEL) == "istio",
                            )
                        )
        return table

    def _gateways(self) -> dict[str, list[str]]:
        """Network -> east-west gateway addresses (Services labelled with the network, with an LB address)."""
        gateways: dict[str, list[str]] = {}
        for store in self.registry().values():
            for service in store.list("Service"):
                network = (service["metadata"].get("labels") or {}).get(NETWORK_LABEL)
                ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
                if network and ingress and ingress[0].get("ip"):
                    gateways.setdefault(network, []).append(ingress[0]["ip"])
        return gateways

    def config_for(
        self, agent: ProxyAgent, table: Mapping[tuple[str, int], tuple[int, list[xds.Endpoint], set[str]]]
    ) -> xds.ProxyConfig:
        gateways = self._gateways()
        services: dict[tuple[str, int], xds.ServiceView] = {}
        for (fqdn, port), (target, endpoints, accounts) in table.items():
            view: list[xds.Endpoint] = []
            for endpoint in endpoints:
                if same_or_empty(agent.network, endpoint.network):
                    view.append(endpoint)
                elif not agent.is_gateway and endpoint.mtls:
                    # Cross-network traffic is routed by the SNI of Istio's mTLS, so an endpoint of another
                    # network without a sidecar is left out (EndpointsByNetworkFilter, isMtlsEnabled).
                    for address in gateways.get(endpoint.network, []):
                        view.append(
                            xds.Endpoint(
                                address,
                                15443,
                                endpoint.cluster,
                                endpoint.network,
                                endpoint.region,
                                endpoint.zone,
                                endpoint.pod,
                                via_gateway=True,
                            )
                        )
            policy = self._destination_rule(fqdn)
            services[(fqdn, port)] = xds.ServiceView(fqdn, port, target, tuple(view), frozenset(accounts), policy)
        labels = agent.labels
        servers, routes = self._gateway_config(labels) if agent.is_gateway else ((), ())
        aliases = mesh_config(self.store, self.revision).get("trustDomainAliases") or []
        return xds.ProxyConfig(
            trust_domain=self.trust_domain,
            services=services,
            mtls_mode=self._mtls_mode(agent.namespace, labels),
            authz=self._authz(agent.namespace, labels),
            gateway_servers=servers,
            tls_routes=routes,
            trust_domain_aliases=tuple(str(a) for a in aliases),
        )

    def _destination_rule(self, fqdn: str) -> dict[str, Any]:
        """The trafficPolicy of the DestinationRule whose host (short names are relative to its namespace) is ``fqdn``."""
        for rule in self.store.list("DestinationRule"):
            if _qualify(rule["spec"].get("host", ""), rule["metadata"]["namespace"]) == fqdn:
                return dict(rule["spec"].get("trafficPolicy") or {})
        return {}

    def _mtls_mode(self, namespace: str, labels: Mapping[str, str]) -> str:
        """PeerAuthentication precedence: workload selector > namespace > mesh (root namespace)."""
        best: tuple[int, str] = (-1, "PERMISSIVE")
        # The oldest policy wins at each level (ComposePeerAuthentication); UNSET inherits from above.
        policies = sorted(
            self.store.list("PeerAuthentication"),
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
            elif ns == ISTIO_SYSTEM and not selector:
                rank = 0
            else:
                continue
            if rank > best[0]:
                best = (rank, mode)
        return best[1]

    def _authz(self, namespace: str, labels: Mapping[str, str]) -> tuple[xds.AuthzPolicy, ...]:
        found = []
        for policy in self.store.list("AuthorizationPolicy"):
            ns = policy["metadata"]["namespace"]
            selector = (policy["spec"].get("selector") or {}).get("matchLabels")
            if ns not in (namespace, ISTIO_SYSTEM) or (selector and not matches(labels, selector)):
                continue
            spec = policy["spec"]
            found.append(
                xds.AuthzPolicy(policy["metadata"]["name"], spec.get("action", "ALLOW"), tuple(spec.get("rules") or []))
            )
        return tuple(found)

    def _gateway_config(
        self, labels: Mapping[str, str]
    ) -> tuple[tuple[xds.GatewayServer, ...], tuple[xds.TlsRoute, ...]]:
        servers: list[xds.GatewayServer] = []
        names: set[str] = set()
        for gateway in self.store.list("Gateway"):
            if not matches(labels, gateway["spec"].get("selector") or {}):
                continue
            names.add(gateway["metadata"]["name"])
            names.add(f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}")
            for server in gateway["spec"].get("servers") or []:
                mode = ((server.get("tls") or {}).get("mode") or "").upper()
                servers.append(xds.GatewayServer(int(server["port"]["number"]), mode, tuple(server.get("hosts") or [])))
        routes: list[xds.TlsRoute] = []
        for service in self.store.list("VirtualService"):
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
        return tuple(servers), tuple(routes)


def _istiod_serving_cert(ca: PluginCA, public_key: Any, now: Any) -> x509.Certificate:
    """istiod's serving certificate: DNS ``istiod.istio-system.svc``, signed by its CA."""
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from meshfed.pki.certs import signature_hash

    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=2))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("istiod.istio-system.svc"), x509.DNSName("istiod.istio-system.svc.cluster.local")]
            ),
            critical=True,
        )
        .sign(ca.ca_key, signature_hash(ca.ca_key))
    )


def _qualify(host: str, namespace: str) -> str:
    """``echo`` -> ``echo.<namespace>.svc.cluster.local``; ``echo.ns`` -> ``echo.ns.svc.cluster.local``."""
    if host.endswith(".cluster.local"):
        return host
    name, _, rest = host.partition(".")
    return f"{name}.{rest.split('.')[0] if rest else namespace}.svc.cluster.local"
