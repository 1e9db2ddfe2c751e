"""One embedded cluster: its store and the controllers that make the store come alive.

* Deployments -> Pods (rolling: a new pod is ready before an old one goes; restart = a new
  ``kubectl.kubernetes.io/restartedAt`` template annotation).
* The kubelet runs what a pod's container names: the workload program (``echo.py serve|idle``),
  istiod (``istio/pilot``), the east-west gateway (``istio/proxyv2 ... router``). Anything else is
  refused: the pod fails with a message naming the image.
* The sidecar injector: a namespace labelled ``istio-injection=enabled`` (or ``istio.io/rev=<rev>``)
  gets a sidecar in each pod (a gateway's pod: by its ``istio.io/rev`` label). Where the control plane
  namespace holds the ``istio-sidecar-injector`` ConfigMap of that revision (a primary), the template is
  applied in-process: with istiod down a pod is still created and its sidecar waits for a certificate, where a
  real cluster would refuse to create it. Where the cluster has only the revision's
  ``MutatingWebhookConfiguration`` (a remote, of a primary or of an external control plane), the API server
  calls the webhook over the network (``injector.call``): when that fails the pod is not created, the
  Deployment shows ``ReplicaFailure``/``FailedCreate`` with the API server's message, and the ReplicaSet tries
  again (``retry_failed_creations``, on the mesh's retry interval).
* ``istioctl install``: an IstioOperator becomes the objects it installs (see ``installer``), in the namespace
  its values name, created when missing.
* LoadBalancer Services get an address of the fabric; connections to it are forwarded to a ready pod.
* DNS and kube-proxy: a name resolves only if its Service exists in this cluster; a Service address
  leads to one of its ready pods here, or, for a Service without a selector, to an address of its
  EndpointSlices.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
import socket
import string
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from meshfed.backends.embedded import injector
from meshfed.backends.embedded.agent import Injection, ProxyAgent
from meshfed.backends.embedded.clock import MeshClock
from meshfed.backends.embedded.fabric import close_listener, serve
from meshfed.backends.embedded.gateway import EastWestGateway, pipe
from meshfed.backends.embedded.installer import install_namespace, objects_for
from meshfed.backends.embedded.istiod import Istiod, IstiodStartError
from meshfed.backends.embedded.node import MeshServices
from meshfed.backends.embedded.sidecar import Sidecar
from meshfed.backends.embedded.sources import read_mesh_config
from meshfed.backends.embedded.store import ObjectStore, StoreError, matches
from meshfed.manifests import ISTIO_SYSTEM, Obj
from meshfed.topology import ClusterSpec
from meshfed.workloads import echo


class ClusterMesh(MeshServices, Protocol):
    """What a cluster uses of the mesh it is part of (the mesh itself is the module above)."""

    @property
    def clock(self) -> MeshClock: ...

    @property
    def istio_version(self) -> str: ...

    @property
    def reconcile_lock(self) -> threading.RLock: ...

    def register_istiod(self, istiod: Istiod) -> None: ...


DRAIN_SECONDS = 1.0


@dataclass
class PodRuntime:
    name: str
    namespace: str
    ip: str
    labels: dict[str, str]
    service_account: str
    owner: str
    template_hash: str
    role: str  # echo | client | istiod | gateway
    message: str = ""
    agent: ProxyAgent | None = None
    sidecar: Sidecar | None = None
    gateway: EastWestGateway | None = None
    istiod: Istiod | None = None
    server: Any = None  # the echo app's HTTP server
    stopped: bool = False
    starting: bool = True  # until the kubelet has started its containers

    @property
    def ready(self) -> bool:
        if self.stopped or self.starting:
            return False
        if self.role == "istiod":
            return self.istiod is not None and self.istiod.ca_choice is not None
        if self.role == "gateway":
            return self.gateway is not None and self.gateway.ready
        return self.sidecar.ready if self.sidecar is not None else True

    def stop(self) -> None:
        self.stopped = True
        if self.sidecar is not None:
            self.sidecar.stop()
        if self.gateway is not None:
            self.gateway.stop()
        if self.istiod is not None:
            self.istiod.stop()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def template_hash(template: Mapping[str, Any]) -> str:
    """What tells a Deployment's pods of its current template from older ones (the pod-template-hash)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=5))


class ClusterRuntime:
    def __init__(
        self,
        mesh: ClusterMesh,
        spec: ClusterSpec,
        control_plane_namespace: str = ISTIO_SYSTEM,
    ) -> None:
        self.mesh = mesh
        self.spec = spec
        self.name = spec.name
        # The namespace of the mesh's control plane here (the contract's istio-system stands for it).
        self.control_plane_namespace = control_plane_namespace
        self._create_failures: dict[tuple[str, str], str] = {}  # a Deployment's last failed pod creation
        self.store = ObjectStore(spec.name)
        self.clock = mesh.clock
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self._lock = mesh.reconcile_lock  # one for the mesh: a reconcile in one cluster may start one in another
        self._lb_listeners: dict[tuple[str, str], list[socket.socket]] = {}
        self._generations: dict[tuple[str, str], int] = {}
        self._reconciling: set[tuple[str, str]] = set()
        self._draining: dict[int, tuple[PodRuntime, threading.Timer]] = {}
        # A fault injected on purpose, in the node's network as iptables would do it: one in N chunks sent to
        # a LoadBalancer's port 15443 (the east-west gateway's) is answered with a TCP reset (0: none).
        self.gateway_cut_every = 0
        self._gateway_chunks = itertools.count(1)
        self.store.watch(self._on_event)

    # -- events -------------------------------------------------------------------------------
    def _on_event(self, event: str, obj: Obj) -> None:
        kind = obj.get("kind")
        if kind == "Deployment":
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if event == "DELETED":
                self._generations.pop(key, None)
                self._scale_to(obj, 0)
            elif self._generations.get(key) != obj["metadata"]["generation"]:  # not a status update
                self._generations[key] = obj["metadata"]["generation"]
                self.reconcile(*reversed(key))
        elif kind == "IstioOperator":
            self._install(obj, remove=event == "DELETED")
        elif kind == "Service" and event != "DELETED" and obj.get("spec", {}).get("type") == "LoadBalancer":
            self._ensure_loadbalancer(obj)
        elif kind == "Service" and event == "DELETED":
            for listener in self._lb_listeners.pop((obj["metadata"]["namespace"], obj["metadata"]["name"]), []):
                close_listener(listener)
        elif kind == "Pod" and event == "DELETED":
            pod = self.pods.pop((obj["metadata"]["namespace"], obj["metadata"]["name"]), None)
            if pod is not None:
                by_controller = pod.stopped
                self._drain(pod)
                if by_controller:
                    self._after_pod_change(obj["metadata"]["namespace"], pod.owner)
                else:  # someone deleted the pod: its ReplicaSet makes a new one
                    self.reconcile(pod.owner, pod.namespace)

    # -- deployments ----------------------------------------------------------------------------
    def deployment_pods(self, namespace: str, name: str) -> list[PodRuntime]:
        return [p for p in self.pods.values() if p.namespace == namespace and p.owner == name and not p.stopped]

    def reconcile(self, name: str, namespace: str) -> None:
        """A rolling update with maxUnavailable 0: an old pod goes only once a new one is ready, so a
        rollout whose new pod never gets ready leaves the old pods serving (as Kubernetes does)."""
        key = (namespace, name)
        with self._lock:
            if key in self._reconciling:
                return
            self._reconciling.add(key)
            try:
                self._reconcile(name, namespace)
            finally:
                self._reconciling.discard(key)

    def _reconcile(self, name: str, namespace: str) -> None:
        deployment = self.store.get("Deployment", name, namespace)
        if deployment is None:
            return
        template = deployment["spec"]["template"]
        wanted = int(deployment["spec"].get("replicas", 1))
        current_hash = template_hash(template)
        pods = self.deployment_pods(namespace, name)
        old = [p for p in pods if p.template_hash != current_hash]
        new = [p for p in pods if p.template_hash == current_hash]
        while len(new) < wanted:
            pod = self._start_pod(deployment, current_hash)
            if pod is None:
                break  # the API server refused the pod (its webhook failed); the ReplicaSet tries again later
            new.append(pod)
            if not pod.ready:
                break  # the rollout waits; the old pods keep serving
            if old:
                self._delete_pod(old.pop(0))
        ready_new = sum(1 for p in new if p.ready)
        if ready_new >= wanted:
            for pod in old:
                self._delete_pod(pod)
        for pod in new[wanted:]:
            self._delete_pod(pod)
        self._write_deployment_status(deployment)

    def _scale_to(self, deployment: Obj, replicas: int) -> None:
        for pod in self.deployment_pods(deployment["metadata"]["namespace"], deployment["metadata"]["name"])[replicas:]:
            self._delete_pod(pod)

    def _write_deployment_status(self, deployment: Obj) -> None:
        name, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
        pods = self.deployment_pods(namespace, name)
        ready = sum(1 for p in pods if p.ready)
        status: Obj = {
            "replicas": len(pods),
            "readyReplicas": ready,
            "updatedReplicas": sum(1 for p in pods if p.template_hash == template_hash(deployment["spec"]["template"])),
            "observedGeneration": deployment["metadata"]["generation"],
        }
        failure = self._create_failures.get((namespace, name))
        if failure:
            status["conditions"] = [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": failure}
            ]
        self.store.set_status("Deployment", name, namespace, status)

    @property
    def failed_creations(self) -> bool:
        return bool(self._create_failures)

    def retry_failed_creations(self) -> None:
        """The ReplicaSet controller tries again to create the pods the API server refused."""
        for namespace, name in list(self._create_failures):
            if self.store.get("Deployment", name, namespace) is None:
                self._create_failures.pop((namespace, name), None)
                continue
            self.reconcile(name, namespace)

    def _drain(self, pod: PodRuntime) -> None:
        """A deleted pod leaves the endpoints at once but keeps serving what is in flight for a moment,
        as a terminating pod does while its sidecar drains (Istio's terminationDrainDuration, 5 s; 1 s here).
        istiod stops at once. A real one ends its own cluster's controllers and (within 10 s) its xDS server at
        SIGTERM but keeps its remote clusters' controllers (istio-ca-root-cert writers) until SIGKILL; meshfed's
        rollouts on real clusters wait until the old pod is gone, so after a restart both are in one state."""
        pod.stopped = True
        if pod.istiod is not None:
            pod.istiod.stop()
        if pod.sidecar is not None:
            pod.sidecar.draining = True
        timer = threading.Timer(DRAIN_SECONDS, self._finish_drain, args=(pod,))
        timer.daemon = True
        self._draining[id(pod)] = (pod, timer)
        timer.start()

    def _finish_drain(self, pod: PodRuntime) -> None:
        if self._draining.pop(id(pod), None) is not None:
            pod.stop()

    def _delete_pod(self, pod: PodRuntime) -> None:
        pod.stopped = True  # the controller's own deletion: not to be replaced
        self.store.delete("Pod", pod.name, pod.namespace)

    def _after_pod_change(self, namespace: str, owner: str) -> None:
        """A pod got ready (or went): the rollout may go on."""
        self.reconcile(owner, namespace)

    # -- kubelet --------------------------------------------------------------------------------
    def _start_pod(self, deployment: Obj, template_hash: str) -> PodRuntime | None:
        namespace = deployment["metadata"]["namespace"]
        template = deployment["spec"]["template"]
        spec = template["spec"]
        container = spec["containers"][0]
        labels = dict(template["metadata"].get("labels") or {})
        name = f"{deployment['metadata']['name']}-{template_hash[:9]}-{_suffix()}"
        role = _role(container)
        injection = None
        key = (namespace, deployment["metadata"]["name"])
        if role in ("echo", "client", "gateway"):
            try:
                injection = self.injection(namespace, labels, gateway=role == "gateway")
            except injector.WebhookError as error:
                self._create_failures[key] = f"Error creating: {error}"
                return None
            if role != "gateway":
                labels.update(injection.pod_labels if injection else {})
        self._create_failures.pop(key, None)
        ip = self.mesh.fabric.new_pod_ip(self.name)
        pod = PodRuntime(
            name,
            namespace,
            ip,
            labels,
            spec.get("serviceAccountName") or "default",
            deployment["metadata"]["name"],
            template_hash,
            role or "unknown",
        )
        manifest: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "annotations": dict(template["metadata"].get("annotations") or {}),
            },
            "spec": spec,
        }
        self.store.apply(manifest)
        self.pods[(namespace, name)] = pod
        if role is None:
            pod.message = (
                f"the embedded mesh cannot run image {container.get('image')!r} with command {container.get('command')}"
            )
        else:
            try:
                self._run(pod, container, spec, injection)
            except (OSError, StoreError) as error:
                pod.message = str(error)
        pod.starting = False
        self.write_pod_status(pod)
        if pod.role == "istiod" and pod.ready:
            self.mesh.reconnect_proxies()  # once its endpoint is ready, proxies find it
        return pod

    def write_pod_status(self, pod: PodRuntime) -> None:
        ready = pod.ready
        condition = {"type": "Ready", "status": "True" if ready else "False"}
        if not ready and pod.message:
            condition["message"] = pod.message
        status: Obj = {
            "phase": "Failed" if pod.role == "unknown" else "Running",
            "podIP": pod.ip,
            "conditions": [condition],
        }
        if pod.sidecar is not None or pod.gateway is not None:
            status["containerStatuses"] = [{"name": "istio-proxy", "ready": ready}]
        self.store.set_status("Pod", pod.name, pod.namespace, status)

    def _env(self, container: Mapping[str, Any], pod: PodRuntime) -> dict[str, str]:
        env = {}
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = str(item["value"])
            elif (item.get("valueFrom") or {}).get("fieldRef"):
                path = item["valueFrom"]["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod.name, "metadata.namespace": pod.namespace}.get(path, "")
        return env

    def _run(
        self, pod: PodRuntime, container: Mapping[str, Any], spec: Mapping[str, Any], injection: Injection | None
    ) -> None:
        env = self._env(container, pod)
        config_maps: dict[str, str] = {
            str(v["name"]): str(v["configMap"]["name"]) for v in spec.get("volumes") or [] if v.get("configMap")
        }
        for config_map in config_maps.values():
            if self.store.get("ConfigMap", config_map, pod.namespace) is None:
                raise StoreError(f'configmap "{config_map}" not found')  # the kubelet cannot mount it
        if pod.role == "istiod":
            revision = pod.labels.get("istio.io/rev", "default")
            mounts = {
                str(m["mountPath"]): config_maps[m["name"]]
                for m in container.get("volumeMounts") or []
                if m.get("name") in config_maps
            }
            pod.istiod = Istiod(
                self, pod.name, pod.ip, "" if revision == "default" else revision, env, pod.namespace, mounts
            )
            self.mesh.register_istiod(pod.istiod)
            try:
                pod.istiod.start()
            except IstiodStartError as error:
                pod.message = str(error)
                pod.istiod.ca_choice = None
            return
        if pod.role == "gateway":
            if injection is None:
                pod.message = "no istio-sidecar-injector for this gateway's revision"
                return
            pod.agent = ProxyAgent(
                self, pod.name, pod.namespace, pod.service_account, pod.labels, injection, is_gateway=True
            )
            pod.gateway = EastWestGateway(self, pod.agent, pod.ip)
            pod.gateway.start()
            if not pod.agent.bootstrap():
                pod.message = pod.agent.error
            return
        port = next((p["containerPort"] for p in container.get("ports") or []), echo.PORT)
        identity = echo.EchoIdentity(
            env.get("CLUSTER", ""), pod.name, env.get("VERSION", ""), env.get("SERVICE", ""), pod.namespace
        )
        fail_with = int(env["FAIL_WITH"]) if env.get("FAIL_WITH", "").isdigit() else None
        if injection is not None:
            pod.agent = ProxyAgent(self, pod.name, pod.namespace, pod.service_account, pod.labels, injection)
            if pod.role == "echo":
                pod.server = echo.make_server("127.0.0.1", 0, identity, fail_with)
                app_ports = {port: pod.server.server_address[1]}
            else:
                app_ports = {}
            pod.sidecar = Sidecar(self, pod.agent, pod.ip, app_ports)
            if not pod.agent.bootstrap():
                pod.message = pod.agent.error
            pod.sidecar.start()
        elif pod.role == "echo":
            pod.server = echo.make_server(pod.ip, port, identity, fail_with)
        if pod.server is not None:
            threading.Thread(target=pod.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def injection(self, namespace: str, labels: Mapping[str, str], *, gateway: bool = False) -> Injection | None:
        """What the sidecar injector webhook would do for a pod here (None: no sidecar); raises
        ``injector.WebhookError`` when the API server's call to the webhook fails (the pod is refused)."""
        if labels.get("sidecar.istio.io/inject") == "false":
            return None
        ns_labels = (self.store.get("Namespace", namespace) or {}).get("metadata", {}).get("labels") or {}
        if gateway:
            revision = labels.get("istio.io/rev", "default")
        elif ns_labels.get("istio-injection") == "enabled":
            revision = "default"
        elif ns_labels.get("istio.io/rev"):
            revision = ns_labels["istio.io/rev"]
        else:
            return None
        suffix = "" if revision == "default" else f"-{revision}"
        # A gateway is injected by the control plane of its own namespace (the external cluster's ingress gateway
        # by the istiod beside it in istio-system); a workload by the mesh's.
        home = namespace if gateway else self.control_plane_namespace
        template = self.store.get("ConfigMap", f"istio-sidecar-injector{suffix}", home)
        if template is not None:
            values = json.loads(template["data"]["values"])
            path = str((values.get("istiodRemote") or {}).get("injectionPath") or "")
            mesh = read_mesh_config(self.store, home, f"istio{suffix}")
            return injector.decide(
                values, mesh, revision=revision, istiod_namespace=home, labels=labels, gateway=gateway, path=path
            )
        webhooks = self.store.list("MutatingWebhookConfiguration", labels={"istio.io/rev": revision})
        if not webhooks:
            return None
        return injector.call(self, webhooks[0], namespace, labels, gateway=gateway)

    # -- istioctl install ---------------------------------------------------------------------
    def _install(self, operator: Obj, *, remove: bool = False) -> None:
        """``istioctl install -f`` (which creates its namespace when missing), or ``istioctl uninstall`` of what it
        installed when the operator goes."""
        namespace = install_namespace(operator)
        if not remove and self.store.get("Namespace", namespace) is None:
            self.store.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        objects = objects_for(operator, self.name, self.mesh.istio_version)
        for obj in objects:
            if remove:
                self.store.delete(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"))
            else:
                self.store.apply(obj)

    # -- services -------------------------------------------------------------------------------
    def _ensure_loadbalancer(self, service: Obj) -> None:
        key = (service["metadata"]["namespace"], service["metadata"]["name"])
        if key in self._lb_listeners:
            return
        ip = self.mesh.fabric.new_loadbalancer_ip(self.name)
        listeners = []
        for port in service["spec"].get("ports", []):
            forward = functools.partial(
                self._forward_lb, service=service, target_port=int(port.get("targetPort", port["port"]))
            )
            listeners.append(serve((ip, int(port["port"])), forward, f"lb-{key[1]}"))
        self._lb_listeners[key] = listeners
        self.store.set_status("Service", key[1], key[0], {"loadBalancer": {"ingress": [{"ip": ip}]}})

    def _forward_lb(self, conn: socket.socket, _peer: Any, *, service: Obj, target_port: int) -> None:
        """What the cloud's load balancer does: hand the connection to a ready pod of the Service."""
        pods = self.ready_pods(service["metadata"]["namespace"], service["spec"].get("selector") or {})
        try:
            upstream = socket.create_connection((random.choice(pods).ip, target_port), timeout=2) if pods else None
        except OSError:
            upstream = None
        if upstream is None:
            conn.close()
            return
        upstream.settimeout(None)  # a connect timeout, not an idle timeout
        pipe(conn, upstream, self._cut_gateway_chunk if target_port == 15443 else None)

    def _cut_gateway_chunk(self) -> bool:
        every = self.gateway_cut_every
        return bool(every) and next(self._gateway_chunks) % every == 0

    def ready_pods(self, namespace: str, selector: Mapping[str, str]) -> list[PodRuntime]:
        return [
            p for p in list(self.pods.values()) if p.namespace == namespace and p.ready and matches(p.labels, selector)
        ]

    def fqdn(self, host: str, namespace: str) -> str | None:
        """DNS in this cluster: the Service's FQDN when the name resolves here, else None."""
        parts = host.split(".")
        if (host.endswith(".svc.cluster.local") and len(parts) == 5) or (
            len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "svc")
        ):
            name, ns = parts[0], parts[1]
        elif len(parts) == 1:
            name, ns = host, namespace
        else:
            return None
        return f"{name}.{ns}.svc.cluster.local" if self.store.get("Service", name, ns) is not None else None

    def connect(self, network: str, host: str, port: int, timeout: float) -> socket.socket:
        """What a pod's socket does: an IP through the fabric; a Service name via DNS and kube-proxy."""
        if host[:1].isdigit():
            return self.mesh.fabric.dial(network, host, port, timeout)
        fqdn = self.fqdn(host, "default")
        if fqdn is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        name, namespace = fqdn.split(".")[:2]
        service = self.store.get("Service", name, namespace) or {}
        target = next(
            (int(p.get("targetPort", p["port"])) for p in service["spec"].get("ports", []) if int(p["port"]) == port),
            port,
        )
        selector = service["spec"].get("selector")
        if not selector:  # the endpoints someone wrote: an EndpointSlice names the Service
            slices = self.store.list("EndpointSlice", namespace, {"kubernetes.io/service-name": name})
            addresses = [a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []]
            if not addresses:
                raise ConnectionRefusedError(111, "Connection refused")
            return self.mesh.fabric.dial(network, random.choice(addresses), target, timeout)
        pods = self.ready_pods(namespace, selector)
        if not pods:
            raise ConnectionRefusedError(111, "Connection refused")
        return self.mesh.fabric.dial(network, random.choice(pods).ip, target, timeout)

    def shutdown(self) -> None:
        for pod, timer in list(self._draining.values()):
            timer.cancel()
            pod.stop()
        self._draining.clear()
        for pod in list(self.pods.values()):
            pod.stop()
        for listeners in self._lb_listeners.values():
            for listener in listeners:
                close_listener(listener)


def _role(container: Mapping[str, Any]) -> str | None:
    image = str(container.get("image", ""))
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    if "istio/pilot" in image:
        return "istiod"
    if "istio/proxyv2" in image and args[:2] == ["proxy", "router"]:
        return "gateway"
    if len(command) >= 3 and command[0].startswith("python") and command[1].endswith("/echo.py"):
        return {"serve": "echo", "idle": "client"}.get(command[2])
    return None
