"""istiod, emulated: the CA, the cluster registry (remote secrets) and discovery.

Every decision istiod makes that the suite depends on lives here, each with the Istio behaviour it
follows:

* CA choice at start-up: see ``ca``; where istiod reads from (its kube client's cluster, mounted files,
  the remote-secret watcher's cluster): see ``sources``. Its namespace (``POD_NAMESPACE``) is its system
  namespace in every cluster it reads; its cluster ID is ``CLUSTER_ID``.
* cacerts reload (``handleEvent``): only an istiod that started plugged-in follows ``cacerts``; a new
  intermediate under the same root is taken; a changed root is ignored ("Multi root is disabled,
  updating new ROOT-CA not supported") unless ``ISTIO_MULTIROOT_MESH`` is on and one bundle contains
  the other. (The kubelet's secret-volume sync delay, about a minute on a real cluster, is not
  emulated: the change is seen at once.)
* ``istio-ca-root-cert`` in every namespace of its cluster, and of the remote clusters it leads: as an
  external istiod (``EXTERNAL_ISTIOD``: a primary serving remotes, or an external control plane), those
  whose system namespace's annotation ``topology.istio.io/controlPlaneClusters`` named its cluster ID when
  the cluster was added (``checkShouldLead``, ``pilot/pkg/serviceregistry/kube/controller/multicluster.go``).
  In the same clusters, and in its own when ``INJECTION_WEBHOOK_CONFIG_NAME`` is set, it patches its CA root
  into the ``caBundle`` of its revision's injection webhooks (``NewWebhookCertPatcher``); the API server
  trusts nothing else of the webhook's.
* The injection webhook on 15017 (``/inject/cluster/<c>/net/<n>``): see ``injector.decide``.
* The registry: its own cluster plus every cluster of a remote secret (label
  ``istio/multiCluster: "true"``) whose kubeconfig server it can reach; ``127.0.0.1`` is its own pod.
  A secret whose kubeconfig changes to one that cannot sync leaves the cluster it had serving ("it will
  be stopped after the new cluster syncs", ``addRemoteConfig`` in pkg/kube/multicluster): only a
  deleted secret, or istiod's restart, drops it. Status rows name the secret ``<namespace>/<name>``.
* Endpoints: a Service's ready pods in every registry cluster; an endpoint on another network is
  replaced by that network's east-west gateway (a Service labelled ``topology.istio.io/network`` with
  a LoadBalancer address, port 15443) or dropped when there is none; an endpoint's network is the pod
  label, else its system namespace's label in its cluster, and an empty network counts as local
  (``IsSameOrEmpty``).
* Secure naming: an endpoint's SPIFFE ID is in the trust domain of its own cluster's mesh config.
* Config (PeerAuthentication, AuthorizationPolicy, DestinationRule, Gateway, VirtualService) comes
  from istiod's own cluster only (its kube client's): each primary reads its own; remotes are configured
  by their primary; an external istiod reads the config cluster's. How each becomes a proxy's policy: see
  ``policy`` (mesh-wide policies are those of MeshConfig ``rootNamespace``, istiod's namespace by default).

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
from typing import Any

from cryptography import x509

from meshfed.backends.base import RemoteClusterStatus
from meshfed.backends.embedded import injector, xds
from meshfed.backends.embedded.agent import ProxyAgent
from meshfed.backends.embedded.ca import CAChoice, choose_ca
from meshfed.backends.embedded.fabric import close_listener, serve
from meshfed.backends.embedded.node import Node
from meshfed.backends.embedded.policy import authz, destination_rule, gateway_config, mtls_mode
from meshfed.backends.embedded.sources import IstiodStartError, Sources, read_mesh_config
from meshfed.backends.embedded.store import ObjectStore, matches
from meshfed.manifests import (
    CONTROL_PLANE_CLUSTERS,
    MULTICLUSTER_LABEL,
    NETWORK_LABEL,
    TLS_MODE_LABEL,
    kubeconfig_server,
)
from meshfed.pki import PluginCA, SpiffeId, bundle_from_secret, validate_bundle
from meshfed.pki.certs import cert_pem, load_certs

__all__ = ["Istiod", "IstiodStartError"]

DISCOVERY_PORT = 15012


def pod_locality(labels: Mapping[str, str], region: str, zone: str) -> tuple[str, str]:
    """A pod's region and zone: its ``istio-locality`` label (region.zone.subzone, dots for the slashes a label
    value cannot hold) overrides what its node says (istio/pkg config/labels IstioLocality; getPodLocality)."""
    label = labels.get("istio-locality")
    if not label:
        return region, zone
    parts = label.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


def cluster_network(store: ObjectStore, system_namespace: str) -> str:
    namespace = store.get("Namespace", system_namespace)
    return str(((namespace or {}).get("metadata", {}).get("labels") or {}).get(NETWORK_LABEL, ""))


def same_or_empty(a: str, b: str) -> bool:
    return not a or not b or a == b


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class Istiod:
    def __init__(
        self,
        runtime: Node,
        pod_name: str,
        pod_ip: str,
        revision: str,
        env: Mapping[str, str],
        namespace: str,
        mounts: Mapping[str, str] | None = None,
    ) -> None:
        self.runtime = runtime
        self.home = runtime.store  # the cluster its pod runs in
        self.store = runtime.store  # its kube client's cluster (decided at start)
        self.pod_name = pod_name
        self.pod_ip = pod_ip
        self.revision = revision
        self.env = dict(env)
        self.namespace = namespace  # POD_NAMESPACE: its system namespace, in every cluster it reads
        self.mounts = dict(mounts or {})
        self.sources: Sources | None = None
        self.log: list[str] = []
        self.ca_choice: CAChoice | None = None
        self.proxies: set[ProxyAgent] = set()
        self._lock = threading.RLock()
        self._listeners: list[socket.socket] = []
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
        """Its cluster ID (``CLUSTER_ID``: ``values.global.multiCluster.clusterName``, the config cluster's for
        an external istiod): the ID of its kube client's cluster in its registry."""
        return self.env.get("CLUSTER_ID") or self.runtime.name

    @property
    def ident(self) -> str:
        return f"{self.runtime.name}/{self.pod_name}"

    def _sources(self) -> Sources:
        if self.sources is None:
            return Sources(
                self.home, self.store, self.runtime.name, self.namespace, self.revision, self.mounts, self.env
            )
        return self.sources

    def mesh_config(self) -> dict[str, Any]:
        return self._sources().mesh_config()

    @property
    def trust_domain(self) -> str:
        return str(self.mesh_config().get("trustDomain") or "cluster.local")

    @property
    def external(self) -> bool:
        return self.env.get("EXTERNAL_ISTIOD", "").lower() == "true"

    def start(self) -> None:
        """Raises IstiodStartError when istiod cannot start (the pod is then not ready)."""
        try:
            self.sources = Sources.resolve(
                self.runtime.mesh, self.runtime.name, self.home, self.namespace, self.revision, self.mounts, self.env
            )
            self.store = self.sources.main
            self.ca_choice = choose_ca(
                self.home, self.store, self.namespace, self.trust_domain, self.runtime.clock.now()
            )
        except IstiodStartError as error:
            self.log.append(str(error))
            raise
        self.log.append(
            "Use local CA certificate"
            if self.ca_choice.plugged
            else "Use self-signed certificate as the CA certificate"
        )
        if self.store is not self.home:
            self.log.append(f"kube client of {self.namespace}/istio-kubeconfig: cluster {self.sources.main_cluster}")
        self._serve()
        self._running = True
        self._serving.clear()  # a new istiod pod knows only what the secrets say now
        self.store.watch(self._on_own_event)
        if self.home is not self.store:
            self.home.watch(self._on_home_event)
        self._refresh_registry()
        self._write_root_certs()
        self._patch_webhooks()
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
        self.home.unwatch(self._on_home_event)
        for store in self._watched.values():
            store.unwatch(self._on_remote_event)
        self._watched.clear()
        self._leads.clear()
        for listener in self._listeners:
            close_listener(listener)
        self._listeners = []
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
        for entry in self.mesh_config().get("caCertificates") or []:
            pem = (entry or {}).get("pem")
            if pem:
                extra += load_certs(pem.encode(), "caCertificates")
        roots = list(self.ca.root_certs)
        return tuple(roots + [r for r in extra if r not in roots])

    def _on_cacerts_change(self) -> None:
        """``handleEvent``: only a plugged-in istiod follows cacerts, and a new root only with multi-root."""
        if self.ca_choice is None or not self.ca_choice.plugged:
            return
        secret = self.home.get("Secret", "cacerts", self.namespace)
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
        self._patch_webhooks()

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

    # -- discovery server (15012) and injection webhook (15017) ----------------------------------
    def _serving_context(self) -> ssl.SSLContext:
        """istiod's serving certificate from its current CA (made anew when the CA changes, as
        ``updateRootCertAndGenKeyCert`` does), for the names ``getDNSNames`` gives it."""
        key = self.runtime.mesh.new_key()
        known = ["istiod", "istiod-remote", "istio-pilot"] + ([f"istiod-{self.revision}"] if self.revision else [])
        names = [f"{host}.{self.namespace}.svc" for host in known]
        names += [h for h in self.env.get("ISTIOD_CUSTOM_HOST", "").split(",") if h]
        discovery = str((self.mesh_config().get("defaultConfig") or {}).get("discoveryAddress") or "")
        if discovery:
            names.append(discovery.rpartition(":")[0] or discovery)
        cert = self.ca.sign_server(key.public_key(), names, now=self.runtime.clock.now())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        chain_file, key_file = self.runtime.mesh.keys.write(
            f"istiod-{self.runtime.name}-{self.pod_name}", key, cert_pem(cert, *self.ca.cert_chain)
        )
        context.load_cert_chain(chain_file, key_file)
        return context

    def _serve(self) -> None:
        self._context = self._serving_context()
        self._listeners = [
            serve((self.pod_ip, DISCOVERY_PORT), self._serve_one, f"istiod-{self.runtime.name}"),
            serve((self.pod_ip, injector.WEBHOOK_PORT), self._serve_webhook, f"istiod-webhook-{self.runtime.name}"),
        ]

    def _answer(self, raw: socket.socket, respond: Any) -> None:
        """One request line over TLS, one answer line; a connection accepted while istiod stops just breaks."""
        context = self._context
        if not self._running:
            raw.close()
            return
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.settimeout(10)
                line = conn.makefile("rb").readline()
                conn.sendall(json.dumps(respond(json.loads(line))).encode() + b"\n")
        except (OSError, ValueError, ssl.SSLError):
            raw.close()

    def _serve_one(self, raw: socket.socket, _peer: Any) -> None:
        self._answer(raw, lambda request: self.sign(request) | {"istiod": self.ident})

    def _serve_webhook(self, raw: socket.socket, _peer: Any) -> None:
        self._answer(raw, self.inject)

    def inject(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``/inject/cluster/<c>/net/<n>``: the injection webhook, from istiod's template (none: it serves no
        injection, "Skipping sidecar injector, template not found", and the path is not found)."""
        values = self._sources().injector_values()
        if values is None:
            return {"error": "the server could not find the requested resource"}
        decided = injector.decide(
            values,
            self.mesh_config(),
            revision=self.revision or "default",
            istiod_namespace=self.namespace,
            labels=request.get("labels") or {},
            gateway=bool(request.get("gateway")),
            path=str(request.get("path") or ""),
        )
        return injector.injection_to_json(decided)

    def _patch_webhooks(self) -> None:
        """``NewWebhookCertPatcher``: unless ``INJECTION_WEBHOOK_CONFIG_NAME`` is set empty (its default is
        ``istio-sidecar-injector``), istiod writes its CA root into the ``caBundle`` of the sidecar-injector webhooks
        of every configuration labelled with its revision, in its own cluster (``initSidecarInjector``) and in each
        remote it leads (``initializeCluster``: ``shouldLead && !configCluster``)."""
        if not self._running or self.env.get("INJECTION_WEBHOOK_CONFIG_NAME", "istio-sidecar-injector") == "":
            return
        bundle = base64.b64encode(cert_pem(*self.ca.root_certs)).decode()
        revision = {"istio.io/rev": self.revision or "default"}
        targets = [self.store] + [store for name, store in self.registry().items() if name in self._leads]
        for store in targets:
            for config in store.list("MutatingWebhookConfiguration", labels=revision):
                hooks = [
                    h for h in config.get("webhooks") or [] if h.get("name", "").endswith("sidecar-injector.istio.io")
                ]
                if all((hook.get("clientConfig") or {}).get("caBundle") == bundle for hook in hooks):
                    continue
                for hook in hooks:
                    hook.setdefault("clientConfig", {})["caBundle"] = bundle
                store.apply(config)

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
            watched = self._sources().secrets
            for secret in watched.list("Secret", self.namespace, {MULTICLUSTER_LABEL: "true"}):
                key = f"{self.namespace}/{secret['metadata']['name']}"
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
            self._patch_webhooks()

    def _should_lead(self, store: ObjectStore) -> bool:
        """``checkShouldLead`` (pilot/pkg/serviceregistry/kube/controller/multicluster.go), decided once, as the
        cluster is added: only an external istiod, and only when the annotation
        ``topology.istio.io/controlPlaneClusters`` of the remote's system namespace (istiod's own namespace's
        name) names its cluster ID (or ``*``)."""
        if not self.external:
            return False
        namespace = store.get("Namespace", self.namespace) or {}
        named = ((namespace.get("metadata") or {}).get("annotations") or {}).get(CONTROL_PLANE_CLUSTERS, "")
        return any(c in ("*", self.cluster) for c in named.split(",")) if named else False

    # -- events -------------------------------------------------------------------------------
    def _on_own_event(self, event: str, obj: Mapping[str, Any]) -> None:
        """An event of its kube client's cluster (also the cluster it runs in, unless it is external)."""
        if not self._running:
            return
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        if self.home is self.store:
            self._on_home_event(event, obj)
        elif kind == "Secret" and meta.get("namespace") == self.namespace and self._sources().secrets is self.store:
            self._refresh_registry()
        if kind == "Namespace" and event == "ADDED":
            self._write_root_certs()
        if kind == "MutatingWebhookConfiguration" and event != "DELETED":
            self._patch_webhooks()
        if kind != "ConfigMap" or meta.get("name") != "istio-ca-root-cert":
            self.push()

    def _on_home_event(self, event: str, obj: Mapping[str, Any]) -> None:
        """An event of the cluster its pod runs in: its mounted cacerts, and the remote secrets when it watches
        them there (``LOCAL_CLUSTER_SECRET_WATCHER``)."""
        if not self._running:
            return
        kind, meta = obj.get("kind"), obj.get("metadata", {})
        if kind == "Secret" and meta.get("namespace") == self.namespace:
            if meta.get("name") == "cacerts":
                self._on_cacerts_change()
            if self._sources().secrets is self.home:
                self._refresh_registry()
            if self.home is not self.store:
                self.push()  # (its kube client's events push as they come, below)
        if self.home is not self.store and kind == "ConfigMap" and meta.get("name") in self.mounts.values():
            self.push()  # a mounted mesh config or template changed

    def _on_remote_event(self, event: str, obj: Mapping[str, Any]) -> None:
        if not self._running:
            return
        if obj.get("kind") == "Namespace" and event == "ADDED" and self._leads:
            self._write_root_certs()
        if obj.get("kind") == "MutatingWebhookConfiguration" and event != "DELETED" and self._leads:
            self._patch_webhooks()
        # A remote's own mesh config changing (its trust domain) forces a full push, as its mesh watcher does.
        mesh_config = f"istio-{self.revision}" if self.revision not in ("", "default") else "istio"
        meta = obj.get("metadata", {})
        if obj.get("kind") != "ConfigMap" or (meta.get("name"), meta.get("namespace")) == (mesh_config, self.namespace):
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
            # through its remote secret (NewMulticluster's per-cluster mesh watcher, pilot/pkg/serviceregistry/
            # kube/controller/multicluster.go; istio/istio#58455). A remote without one gets the default mesh
            # config, so cluster.local: the config cluster's is only the fallback for an empty trust domain,
            # which the defaults never leave (seen on host: an external control plane in ext.example).
            own_config = read_mesh_config(store, self.namespace, f"istio-{self.revision}" if self.revision else "istio")
            remote = cluster != self.cluster
            trust_domain = str(own_config.get("trustDomain") or ("cluster.local" if remote else own_trust_domain))
            network = cluster_network(store, self.namespace)
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
            policy = destination_rule(self.store, fqdn)
            services[(fqdn, port)] = xds.ServiceView(fqdn, port, target, tuple(view), frozenset(accounts), policy)
        labels = agent.labels
        servers, routes = gateway_config(self.store, labels) if agent.is_gateway else ((), ())
        mesh = self.mesh_config()
        root = str(mesh.get("rootNamespace") or self.namespace)
        aliases = mesh.get("trustDomainAliases") or []
        return xds.ProxyConfig(
            trust_domain=str(mesh.get("trustDomain") or "cluster.local"),
            services=services,
            mtls_mode=mtls_mode(self.store, root, agent.namespace, labels),
            authz=authz(self.store, root, agent.namespace, labels),
            gateway_servers=servers,
            tls_routes=routes,
            trust_domain_aliases=tuple(str(a) for a in aliases),
        )
