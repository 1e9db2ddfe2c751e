"""The contract every backend fulfils. Cases and misconfigurations use nothing else.

Everything is said in Kubernetes terms: apply, get, list, patch or delete an object (plain dicts);
restart or scale a Deployment and wait for it; list pods; make N calls from a pod to a URL; read
the certificates a pod's proxy holds.
"""

from __future__ import annotations

import abc
import builtins
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cryptography import x509

from meshfed.calls import LEDGER, CallResult
from meshfed.manifests import ISTIO_SYSTEM, Obj, image_version
from meshfed.topology import MeshSpec

Progress = Callable[[str], None]


class BackendError(Exception):
    """A backend could not do what was asked; the message is one sentence with the fix."""


class Forbidden(BackendError):
    """The API server refused the user (403): their RBAC does not allow it (a managed CA's Secret, say)."""


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    labels: Mapping[str, str]
    service_account: str
    ready: bool
    phase: str
    ip: str
    has_sidecar: bool
    revision: str = ""  # the control-plane revision its proxy (sidecar or gateway) belongs to
    proxy_image: str = ""  # the istio-proxy container's image ("" without one, or on the embedded mesh)
    terminating: bool = False  # deleted, still shutting down (it may even have finished: phase Succeeded)
    proxy_cluster: str = ""  # the cluster its proxy says it is in (ISTIO_META_CLUSTER_ID, from the injector)


@dataclass(frozen=True)
class ProxyCerts:
    """What a proxy holds: its certificate chain (leaf first) and the roots it trusts (Envoy's ROOTCA)."""

    chain: tuple[x509.Certificate, ...]
    trusted_roots: tuple[x509.Certificate, ...] = field(default=())


@dataclass(frozen=True)
class RemoteClusterStatus:
    """One line of ``istioctl remote-clusters``."""

    name: str
    secret: str
    status: str  # synced | syncing | timeout | closed


@dataclass(frozen=True)
class ConnectedProxy:
    """One line of ``istioctl proxy-status``: a proxy with an open xDS stream to an istiod."""

    pod: str
    namespace: str
    cluster: str  # the proxy's cluster ID ("" when not shown)
    istiod: str


@dataclass(frozen=True)
class Evidence:
    """One host-level fact: ``ok`` is None when it could not be read."""

    check: str  # stable id, e.g. "eastwest-not-listening"
    ok: bool | None
    text: str
    hint: str = ""


class Cluster(abc.ABC):
    name: str
    # The revision meshfed's workloads are injected by ("" for the default one): its mesh config is theirs.
    revision: str = ""
    # The namespace the contract's istio-system stands for: the control plane's (external-istiod in every
    # cluster of an external control plane).
    control_plane_namespace: str = ISTIO_SYSTEM

    def istio_system_itself(self) -> Cluster:
        """This cluster with istio-system meaning that namespace, not the control plane's it stands for: where
        the external control plane's ingress gateway runs, with its credentials."""
        view = copy.copy(self)
        view.control_plane_namespace = ISTIO_SYSTEM
        return view

    @abc.abstractmethod
    def apply(self, obj: Obj) -> Obj: ...

    @abc.abstractmethod
    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None: ...

    @abc.abstractmethod
    def list(
        self, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None
    ) -> builtins.list[Obj]: ...

    @abc.abstractmethod
    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj) -> Obj:
        """A JSON merge patch (RFC 7386), as ``kubectl patch --type merge``."""

    @abc.abstractmethod
    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool: ...

    @abc.abstractmethod
    def rollout_restart(self, deployment: str, namespace: str, timeout: float = 120) -> None:
        """``kubectl rollout restart`` and wait until the rollout is complete."""

    @abc.abstractmethod
    def scale(self, deployment: str, namespace: str, replicas: int, timeout: float = 120) -> None:
        """Scale and wait until that many pods are ready (or all are gone)."""

    @abc.abstractmethod
    def wait_ready(self, deployment: str, namespace: str, timeout: float = 120) -> bool:
        """Wait for the Deployment's pods to be ready; False when the deadline passed first."""

    @abc.abstractmethod
    def pods(self, namespace: str, labels: Mapping[str, str] | None = None) -> builtins.list[PodInfo]: ...

    def call(
        self,
        pod: str,
        namespace: str,
        url: str,
        count: int = 1,
        *,
        timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
    ) -> builtins.list[CallResult]:
        """``count`` GETs of ``url`` made by the workload program in ``pod``, one result per call; each is
        counted in the case's ledger (``meshfed.calls.LEDGER``)."""
        results = self._call(pod, namespace, url, count, timeout=timeout, headers=headers)
        LEDGER.count(results)
        return results

    @abc.abstractmethod
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
        """What ``call`` does, on this backend."""

    def drop_gateway_connections(self, every: int) -> None:
        """Fault injection: this cluster's east-west gateway cuts one in ``every`` of the packets (embedded: the
        requests) sent to it on 15443, as a flaky network or a failing node would; ``every`` 0 ends it."""
        raise BackendError(f"{self.name}: this backend cannot degrade the network of its east-west gateway")

    @abc.abstractmethod
    def proxy_certs(self, pod: str, namespace: str) -> ProxyCerts:
        """The certificates ``pod``'s proxy holds (``istioctl proxy-config secret``)."""

    def server_identities(self, pod: str, namespace: str, fqdn: str) -> frozenset[str]:
        """The SPIFFE IDs ``pod``'s proxy accepts from the servers of ``fqdn``: the SAN matchers of its outbound
        clusters for it (Istio's secure naming, ``istioctl proxy-config cluster --fqdn``); empty where none."""
        raise BackendError(f"{self.name}: this backend cannot read which identities a proxy expects of a service")

    @abc.abstractmethod
    def remote_clusters(self) -> builtins.list[RemoteClusterStatus]:
        """``istioctl remote-clusters`` as seen by this cluster's control plane."""

    @abc.abstractmethod
    def connected_proxies(self) -> builtins.list[ConnectedProxy]:
        """The proxies connected to this cluster's istiods (``istioctl proxy-status``): its own and, in a
        primary, its remotes'; none where no istiod runs."""

    def host_evidence(self) -> builtins.list[Evidence]:
        """Host-level facts a real backend reads with testinfra (its nodes, its proxies); none by default."""
        return []

    def service_account_token(self, name: str, namespace: str) -> str:
        """A token of ServiceAccount ``name`` (the TokenRequest API), for a kubeconfig that acts as it."""
        raise BackendError(f"{self.name}: this backend cannot issue ServiceAccount tokens")

    def istiods(self) -> dict[str, int]:
        """This cluster's istiod Deployments (any revision; ``istiod-<rev>`` on revisioned installs) and
        their replicas."""
        deployments = self.list("Deployment", ISTIO_SYSTEM, {"app": "istiod"})
        return {
            d["metadata"]["name"]: int((d.get("spec") or {}).get("replicas", 1))
            for d in deployments
            if not d["metadata"].get("deletionTimestamp")  # an uninstalled revision's, still going
        }

    def istiod_versions(self) -> dict[str, str]:
        """Each istiod revision here ("default" when unlabelled) and its Istio version, from its image tag."""
        versions = {}
        for deployment in self.list("Deployment", ISTIO_SYSTEM, {"app": "istiod"}):
            labels = deployment["metadata"].get("labels") or {}
            containers = deployment["spec"]["template"]["spec"].get("containers") or [{}]
            versions[labels.get("istio.io/rev", "default")] = image_version(containers[0].get("image", ""))
        return versions

    def pod_of(self, namespace: str, app: str) -> PodInfo:
        """The first ready pod of an app, or the first pod when none is ready."""
        pods = self.pods(namespace, {"app": app})
        if not pods:
            raise BackendError(f"{self.name}: no pod of app {app!r} in namespace {namespace!r}")
        ready = [pod for pod in pods if pod.ready]
        return (ready or pods)[0]


class Mesh(abc.ABC):
    spec: MeshSpec
    backend: str
    istio_version: str
    # How long a change may take to reach every proxy: reachability is retried until then.
    convergence_deadline: float = 60.0
    # What the mesh runs on, for the reports: component -> version, build and anything not stock.
    environment: Mapping[str, str] = {}
    # Whether a pass certifies an Istio installation; None where the backend does not say (kind, existing).
    certifies_istio: bool | None = None
    # The Istio version CanaryUpgrade's revision runs when it is another build than the mesh's own (its
    # istiod's image tag); None: the same version (a same-version canary), or the backend does not say.
    upgrade_version: str | None = None

    @property
    @abc.abstractmethod
    def clusters(self) -> Mapping[str, Cluster]:
        """The data-plane clusters (where the mesh's workloads run), by name."""

    @property
    def external(self) -> Cluster | None:
        """The external control plane's cluster (istiod only, no workloads of the mesh); None in the other topologies."""
        return None

    def __getitem__(self, name: str) -> Cluster:
        """A data-plane cluster, or the external control plane's by its name."""
        external = self.external
        if external is not None and name == external.name and name not in self.clusters:
            return external
        return self.clusters[name]

    @abc.abstractmethod
    def teardown(self) -> None: ...


class Backend(abc.ABC):
    name: str

    @abc.abstractmethod
    def provision(
        self, spec: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]], progress: Progress = lambda _: None
    ) -> Mesh:
        """Bring up ``spec`` with each cluster's plug-in CA files, following :func:`meshfed.install.plan`."""
