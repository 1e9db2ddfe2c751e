"""What the emulated programs of a pod (pilot-agent, the sidecar, the east-west gateway, istiod) may use of
the cluster and the mesh they run on. They see these protocols, never ``ClusterRuntime`` or
``MeshRuntime``, so the embedded modules import in one direction, each knowing only those below it:

    mesh -> cluster -> istiod -> ca, sources -> sidecar, gateway -> injector -> agent -> node
         -> policy, xds, lb, tls, fabric, store, clock

Where an Istio behaviour is decided: what istiod sends (``istiod``; its policies: ``policy``), its CA
(``ca``), where it reads from (``sources``), what a proxy does with it (``sidecar``, ``gateway``), what the
injection webhook does and how the API server calls it (``injector``), how a proxy gets its certificate and
configuration (``agent``), what Kubernetes does (``cluster``), and what the clusters share (``mesh``).
"""

from __future__ import annotations

import socket
from typing import Any, Protocol

from meshfed.backends.embedded import xds
from meshfed.backends.embedded.clock import MeshClock
from meshfed.backends.embedded.fabric import Fabric
from meshfed.backends.embedded.store import ObjectStore
from meshfed.backends.embedded.tls import KeyFolder
from meshfed.topology import ClusterSpec


class ControlPlane(Protocol):
    """What a proxy's agent needs of the istiod it is connected to."""

    @property
    def running(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    def config_for_generation(self, agent: Any) -> tuple[int, xds.ProxyConfig]: ...

    def register(self, agent: Any) -> None: ...

    def unregister(self, agent: Any) -> None: ...


class MeshServices(Protocol):
    """What the clusters of one mesh share."""

    @property
    def fabric(self) -> Fabric: ...

    @property
    def keys(self) -> KeyFolder: ...

    def new_key(self) -> Any: ...

    def reconnect_proxies(self) -> None: ...

    def spec_of(self, cluster: str) -> ClusterSpec: ...

    def store_of(self, cluster: str) -> ObjectStore | None: ...

    def istiod(self, ident: str) -> ControlPlane | None: ...


class Node(Protocol):
    """The cluster a pod runs on, as its programs see it."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> ClusterSpec: ...

    @property
    def clock(self) -> MeshClock: ...

    @property
    def store(self) -> ObjectStore: ...

    @property
    def mesh(self) -> MeshServices: ...

    def connect(self, network: str, host: str, port: int, timeout: float) -> socket.socket: ...

    def fqdn(self, host: str, namespace: str) -> str | None: ...
