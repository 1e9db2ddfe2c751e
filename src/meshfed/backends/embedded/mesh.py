"""The embedded backend: a whole multi-cluster mesh in this process, on loopback, over real mTLS.

With an external control plane the external cluster is a cluster of the mesh's runtime too (its own network,
``network-external``), reached through ``EmbeddedMesh.external``; the contract's ``istio-system`` stands for the
control plane's namespace, ``external-istiod`` in every cluster of that topology, as on the real backends
(``KubeCluster._namespace``), while IstioOperators install where their values say (the external cluster's
ingress gateway and its helper istiod in its real istio-system).
"""

from __future__ import annotations

import builtins
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from meshfed import manifests
from meshfed.backends.base import (
    Backend,
    BackendError,
    Cluster,
    ConnectedProxy,
    Mesh,
    PodInfo,
    Progress,
    ProxyCerts,
    RemoteClusterStatus,
)
from meshfed.backends.embedded.admission import admit
from meshfed.backends.embedded.clock import MeshClock
from meshfed.backends.embedded.cluster import ClusterRuntime, PodRuntime, template_hash
from meshfed.backends.embedded.fabric import Fabric
from meshfed.backends.embedded.istiod import Istiod
from meshfed.backends.embedded.store import ObjectStore, StoreError
from meshfed.backends.embedded.tls import KeyFolder
from meshfed.calls import CallResult
from meshfed.install import execute, plan
from meshfed.manifests import EASTWEST_GATEWAY, EXTERNAL_ISTIOD, INGRESS_GATEWAY, ISTIO_SYSTEM, Obj
from meshfed.topology import ClusterSpec, MeshSpec
from meshfed.workloads import echo

EMBEDDED_VERSION = "embedded"


# pilot-agent never gives up on istiod: a broken xDS stream or a failed certificate request is retried
# with backoff. The embedded agents are retried on this fixed interval instead, each on its own worker,
# so that an agent whose dial times out does not hold up the others.
RECONNECT_INTERVAL = 0.5
RETRY_WORKERS = 4

log = logging.getLogger(__name__)


class MeshRuntime:
    """What the clusters of one embedded mesh share: the network, the clock, the key folder."""

    def __init__(self, spec: MeshSpec) -> None:
        self.spec = spec
        self.istio_version = EMBEDDED_VERSION
        self.fabric = Fabric(len(spec.all_clusters))
        self.clock = MeshClock()
        self.keys = KeyFolder()
        self.clusters: dict[str, ClusterRuntime] = {}  # every cluster, the external control plane's included
        self._istiods: dict[str, Istiod] = {}
        self.closing = False
        self.reconcile_lock = threading.RLock()
        external = spec.external is not None
        namespace = EXTERNAL_ISTIOD if external else ISTIO_SYSTEM
        for cluster in spec.all_clusters:
            self.fabric.add_cluster(cluster.name, cluster.network)
            self.clusters[cluster.name] = ClusterRuntime(self, cluster, namespace)
        self.clock.on_advance(self._renew)
        self._closed = threading.Event()
        self._retries = ThreadPoolExecutor(RETRY_WORKERS, thread_name_prefix="pilot-agent-retry")
        self._retrying: set[object] = set()  # agents (by id), and other work, with a retry queued or running
        self._retrying_lock = threading.Lock()
        self._retry_loop = threading.Thread(target=self._keep_reconnecting, name="pilot-agent-retries", daemon=True)
        self._retry_loop.start()

    def spec_of(self, cluster: str) -> ClusterSpec:
        return self.spec.cluster(cluster)

    def store_of(self, cluster: str) -> ObjectStore | None:
        runtime = self.clusters.get(cluster)
        return runtime.store if runtime else None

    def new_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def register_istiod(self, istiod: Istiod) -> None:
        self._istiods[istiod.ident] = istiod

    def istiod(self, ident: str) -> Istiod | None:
        return self._istiods.get(ident)

    def _agent_pods(self) -> builtins.list[tuple[ClusterRuntime, PodRuntime]]:
        """Pods with a proxy agent that run: neither stopped nor still being started by their kubelet."""
        return [
            (c, p)
            for c in self.clusters.values()
            for p in list(c.pods.values())
            if p.agent is not None and not p.stopped and not p.starting
        ]

    def reconnect_proxies(self) -> None:
        """Proxies waiting for a certificate retry, and proxies whose istiod went away reconnect."""
        # Gateways first: a remote's proxies reach istiod through the primary's east-west gateway.
        for runtime, pod in sorted(self._agent_pods(), key=lambda item: not item[1].agent.is_gateway):  # type: ignore[union-attr]
            self._reconnect(runtime, pod)

    def _reconnect(self, runtime: ClusterRuntime, pod: PodRuntime) -> None:
        agent = pod.agent
        if self.closing or agent is None or pod.stopped or not agent.disconnected:
            return
        was_ready = pod.ready
        ok = agent.reconnect()
        message = "" if ok else agent.error
        if not self.closing and not pod.stopped and (pod.ready != was_ready or message != pod.message):
            pod.message = message
            runtime.write_pod_status(pod)
            runtime._after_pod_change(pod.namespace, pod.owner)

    def _keep_reconnecting(self) -> None:
        """Retry in the background what an event-driven reconnect missed (e.g. a stream that reached an
        istiod in the moment it stopped), as pilot-agent's retries do."""
        while not self._closed.wait(RECONNECT_INTERVAL):
            try:
                self._queue_retries()
            except Exception:  # the loop outlives any one pass
                log.exception("embedded pilot-agent retry pass failed")

    def _queue_retries(self) -> None:
        for runtime in self.clusters.values():
            if runtime.failed_creations:
                self._submit(("creations", runtime.name), runtime.retry_failed_creations)
        for runtime, pod in self._agent_pods():
            agent = pod.agent
            if agent is None or not agent.disconnected:
                continue
            with self._retrying_lock:
                if id(agent) in self._retrying or self.closing:
                    continue
                self._retrying.add(id(agent))
            self._retries.submit(self._retry, runtime, pod, id(agent))

    def _submit(self, key: object, work: Callable[[], None]) -> None:
        """``work`` on a retry worker, unless the same work is queued or running."""
        with self._retrying_lock:
            if key in self._retrying or self.closing:
                return
            self._retrying.add(key)

        def run() -> None:
            try:
                work()
            except Exception:
                log.exception("embedded retry %s failed", key)
            finally:
                with self._retrying_lock:
                    self._retrying.discard(key)

        self._retries.submit(run)

    def _retry(self, runtime: ClusterRuntime, pod: PodRuntime, key: int) -> None:
        try:
            self._reconnect(runtime, pod)
        except Exception:  # a retry must never end the retries (that is how a proxy stays stale)
            log.exception("embedded pilot-agent retry for %s/%s failed", runtime.name, pod.name)
        finally:
            with self._retrying_lock:
                self._retrying.discard(key)

    def _renew(self) -> None:
        for runtime, pod in self._agent_pods():
            assert pod.agent is not None
            pod.agent.renew_if_due()
            runtime.write_pod_status(pod)

    def shutdown(self) -> None:
        self.closing = True
        self._closed.set()
        self._retry_loop.join(timeout=5)
        self._retries.shutdown(wait=True, cancel_futures=True)  # a running retry ends within its 2 s dial
        for runtime in self.clusters.values():
            runtime.shutdown()
        self.keys.remove()
        self.fabric.release()


class EmbeddedCluster(Cluster):
    def __init__(self, runtime: ClusterRuntime) -> None:
        self.runtime = runtime
        self.name = runtime.name
        self.control_plane_namespace = runtime.control_plane_namespace

    # The contract speaks of istio-system for "the control plane's namespace", as a namespace of objects and as a
    # Namespace object (KubeCluster._namespace does the same); an IstioOperator is not mapped: istioctl installs
    # it where its values say.
    def _ns(self, namespace: str | None, kind: str = "") -> str | None:
        if kind == "IstioOperator" or namespace != ISTIO_SYSTEM:
            return namespace
        return self.control_plane_namespace

    def _name(self, kind: str, name: str) -> str:
        return self._ns(name) or name if kind == "Namespace" else name

    def _mapped(self, obj: Obj) -> Obj:
        kind, meta = obj.get("kind", ""), dict(obj.get("metadata") or {})
        if "name" in meta:
            meta["name"] = self._name(kind, meta["name"])
        if meta.get("namespace"):
            meta["namespace"] = self._ns(meta["namespace"], kind)
        return {**obj, "metadata": meta}

    def apply(self, obj: Obj) -> Obj:
        try:
            admit(obj)
            obj = self._mapped(obj)
            namespace = (obj.get("metadata") or {}).get("namespace")
            if (
                obj.get("kind") == "IstioOperator"
                and namespace
                and self.runtime.store.get("Namespace", namespace) is None
            ):
                # istioctl install creates the namespace it installs into
                self.runtime.store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
            return self.runtime.store.apply(obj)
        except StoreError as error:
            raise BackendError(f"{self.name}: {error}") from None

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        return self.runtime.store.get(kind, self._name(kind, name), self._ns(namespace, kind))

    def list(
        self, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Obj]:
        try:
            return self.runtime.store.list(kind, self._ns(namespace, kind), labels)
        except StoreError as error:
            raise BackendError(f"{self.name}: {error}") from None

    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj) -> Obj:
        name, namespace = self._name(kind, name), self._ns(namespace, kind)
        try:
            merged = self.runtime.store.get(kind, name, namespace)
            if merged is not None:
                from meshfed.backends.embedded.store import merge_patch

                admit(merge_patch(merged, patch))
            return self.runtime.store.patch(kind, name, namespace, patch)
        except StoreError as error:
            raise BackendError(f"{self.name}: {error}") from None

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        return self.runtime.store.delete(kind, self._name(kind, name), self._ns(namespace, kind))

    def rollout_restart(self, deployment: str, namespace: str, timeout: float = 120) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        patch = {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}}
        self.patch("Deployment", deployment, namespace, patch)
        self.wait_ready(deployment, namespace, timeout)

    def scale(self, deployment: str, namespace: str, replicas: int, timeout: float = 120) -> None:
        self.patch("Deployment", deployment, namespace, {"spec": {"replicas": replicas}})
        self.wait_ready(deployment, namespace, timeout)

    def wait_ready(self, deployment: str, namespace: str, timeout: float = 120) -> bool:
        namespace = self._ns(namespace) or namespace
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get("Deployment", deployment, namespace)
            if obj is None:
                raise BackendError(f"{self.name}: no Deployment {deployment!r} in namespace {namespace!r}")
            pods = self.runtime.deployment_pods(namespace, deployment)
            current = template_hash(obj["spec"]["template"])
            # The rollout is complete: as many pods as wanted, every one of the current template and ready.
            if len(pods) == int(obj["spec"].get("replicas", 1)) and all(
                p.ready and p.template_hash == current for p in pods
            ):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def pods(self, namespace: str, labels: Mapping[str, str] | None = None) -> builtins.list[PodInfo]:
        namespace = self._ns(namespace) or namespace
        found = []
        for pod in list(self.runtime.pods.values()):
            if (
                pod.namespace != namespace
                or pod.stopped
                or any(pod.labels.get(k) != v for k, v in (labels or {}).items())
            ):
                continue
            found.append(
                PodInfo(
                    name=pod.name,
                    namespace=pod.namespace,
                    labels=dict(pod.labels),
                    service_account=pod.service_account,
                    ready=pod.ready,
                    phase="Failed" if pod.role == "unknown" else "Running",
                    ip=pod.ip,
                    has_sidecar=pod.sidecar is not None or pod.gateway is not None,
                    revision=pod.agent.injection.revision if pod.agent else "",
                    proxy_cluster=(pod.agent.injection.cluster_id or self.name) if pod.agent else "",
                )
            )
        return found

    def _pod(self, name: str, namespace: str) -> PodRuntime:
        namespace = self._ns(namespace) or namespace
        pod = self.runtime.pods.get((namespace, name))
        if pod is None or pod.stopped:
            raise BackendError(f"{self.name}: no pod {name!r} in namespace {namespace!r}")
        return pod

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
        runtime = self._pod(pod, namespace)
        namespace = runtime.namespace
        if runtime.role not in ("echo", "client"):
            raise BackendError(f"{self.name}: pod {pod!r} does not run the workload program, so it cannot make calls")
        cluster = self.runtime

        def connect(host: str, port: int, timeout: float) -> socket.socket:
            # The pod's own socket: DNS of its cluster, then iptables capture into its sidecar, if it has one.
            if not host[:1].isdigit() and cluster.fqdn(host, namespace) is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            if runtime.sidecar is not None:
                return socket.create_connection(runtime.sidecar.outbound_address, timeout=timeout)
            fqdn = cluster.fqdn(host, namespace) if not host[:1].isdigit() else host
            return cluster.connect(cluster.mesh.fabric.network_of(cluster.name), fqdn or host, port, timeout)

        results = echo.call(url, count, timeout=timeout, headers=dict(headers or {}), connect=connect)
        return [CallResult.from_program(result) for result in results]

    def proxy_certs(self, pod: str, namespace: str) -> ProxyCerts:
        runtime = self._pod(pod, namespace)
        if runtime.agent is None:
            raise BackendError(f"{self.name}: pod {pod!r} has no istio-proxy, so it holds no mesh certificate")
        cert = runtime.agent.cert
        if cert is None:
            raise BackendError(f"{self.name}: the proxy of pod {pod!r} has no certificate yet ({runtime.agent.error})")
        return ProxyCerts(cert.chain, cert.trusted_roots)

    def server_identities(self, pod: str, namespace: str, fqdn: str) -> frozenset[str]:
        runtime = self._pod(pod, namespace)
        config = runtime.agent.config if runtime.agent is not None else None
        views = [view for (host, _), view in (config.services.items() if config else []) if host == fqdn]
        if not views:
            raise BackendError(f"{self.name}: the proxy of pod {pod!r} has no outbound cluster for {fqdn}")
        return frozenset(account for view in views for account in view.accounts)

    def _istiods(self) -> builtins.list[Istiod]:
        """The running istiods of the mesh's control plane here (``istioctl --istioNamespace``): not the helper
        istiod an external cluster runs beside it for its ingress gateway."""
        return [
            p.istiod
            for p in list(self.runtime.pods.values())
            if p.istiod is not None
            and not p.stopped
            and p.istiod.running
            and p.namespace == self.runtime.control_plane_namespace
        ]

    def service_account_token(self, name: str, namespace: str) -> str:
        if self.get("ServiceAccount", name, namespace) is None:
            raise BackendError(f'{self.name}: serviceaccounts "{name}" not found in {self._ns(namespace)}')
        return manifests.unsigned_token(name, self._ns(namespace) or "")

    def remote_clusters(self) -> builtins.list[RemoteClusterStatus]:
        istiods = self._istiods()
        if not istiods:
            raise BackendError(f"{self.name}: no running istiod here; ask the cluster that runs its control plane")
        return istiods[0].remote_status()

    def connected_proxies(self) -> builtins.list[ConnectedProxy]:
        return [
            ConnectedProxy(agent.pod, agent.namespace, agent.runtime.name, istiod.pod_name)
            for istiod in self._istiods()
            for agent in istiod.connected()
        ]

    def drop_gateway_connections(self, every: int) -> None:
        self.runtime.gateway_cut_every = every

    # Embedded-only: the mesh clock and istiod's log, for cases that need them.
    def istiod_log(self) -> builtins.list[str]:
        namespace = self.runtime.control_plane_namespace
        return [
            line
            for p in list(self.runtime.pods.values())
            if p.istiod is not None and p.namespace == namespace
            for line in p.istiod.log
        ]


class EmbeddedMesh(Mesh):
    backend = "embedded"
    convergence_deadline = 3.0  # istiod's pushes are seen by the next request

    def __init__(self, runtime: MeshRuntime) -> None:
        self.runtime = runtime
        self.spec = runtime.spec
        self.istio_version = runtime.istio_version
        every = {name: EmbeddedCluster(c) for name, c in runtime.clusters.items()}
        self._clusters = {spec.name: every[spec.name] for spec in runtime.spec.clusters}
        self._external = every[runtime.spec.external.name] if runtime.spec.external is not None else None

    @property
    def clusters(self) -> Mapping[str, EmbeddedCluster]:
        return self._clusters

    @property
    def external(self) -> EmbeddedCluster | None:
        return self._external

    def cluster_of(self, name: str) -> EmbeddedCluster:
        """A data-plane cluster, or the external control plane's, by name."""
        return self._external if self._external is not None and name == self._external.name else self._clusters[name]

    @property
    def clock(self) -> MeshClock:
        return self.runtime.clock

    def teardown(self) -> None:
        self.runtime.shutdown()


def _ingress_address(service: Obj | None, what: str) -> str:
    ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    if not ingress:
        raise BackendError(f"{what} Service has no external address")
    return str(ingress[0]["ip"])


class EmbeddedBackend(Backend):
    name = "embedded"

    def provision(
        self, spec: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]], progress: Progress = lambda _: None
    ) -> EmbeddedMesh:
        runtime = MeshRuntime(spec)
        mesh = EmbeddedMesh(runtime)

        def remote_secret(source: str, _destination: str) -> list[Obj]:
            kubeconfig = manifests.kubeconfig(source, runtime.fabric.api_server(source))
            return [manifests.remote_secret(source, kubeconfig)]

        def gateway_address(name: str) -> str:
            service = mesh.cluster_of(name).get("Service", EASTWEST_GATEWAY, ISTIO_SYSTEM)
            return _ingress_address(service, f"{name}: the east-west gateway")

        def control_plane_address(name: str) -> str:
            # The external cluster's ingress gateway, in its real istio-system (not the namespace it stands for).
            service = runtime.clusters[name].store.get("Service", INGRESS_GATEWAY, ISTIO_SYSTEM)
            return _ingress_address(service, f"{name}: the ingress gateway of the external istiod")

        def config_secret(config: str) -> list[Obj]:
            # istioctl create-remote-secret --type=config --namespace=external-istiod --service-account=istiod
            # --create-service-account=false: the ServiceAccount must exist (the remote profile's configCluster).
            if mesh.cluster_of(config).get("ServiceAccount", "istiod", ISTIO_SYSTEM) is None:
                raise BackendError(
                    f"{config}: istioctl create-remote-secret --type=config failed: failed retrieving service account "
                    f"istiod.{runtime.clusters[config].control_plane_namespace} (install the config cluster's remote "
                    "profile with values.global.configCluster=true)"
                )
            namespace = runtime.clusters[config].control_plane_namespace
            token = manifests.unsigned_token("istiod", namespace)
            kubeconfig = manifests.kubeconfig(config, runtime.fabric.api_server(config), token)
            return [manifests.secret("istio-kubeconfig", ISTIO_SYSTEM, {"config": kubeconfig.encode()})]

        try:
            execute(
                plan(spec, cacerts),
                spec,
                {name: mesh.cluster_of(name) for name in runtime.clusters},
                gateway_address=gateway_address,
                remote_secret=remote_secret,
                progress=progress,
                control_plane_address=control_plane_address,
                config_secret=config_secret,
            )
        except BaseException:
            mesh.teardown()
            raise
        return mesh
