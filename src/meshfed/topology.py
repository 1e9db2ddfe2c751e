"""The shape of the mesh under test: its topology, its clusters, their networks and regions.

Defaults a user can rely on: clusters ``cluster-a``, ``cluster-b``, ...; each on its own network
(``network-a``, ...) and in its own region (``region-a``, ...); mesh ID ``mesh1``; trust domain
``cluster.local``; in primary-remote the first cluster is the primary. With an external control plane
(Istio's "Install Istio with an External Control Plane"), istiod runs in a cluster of its own, ``external``,
outside the data-plane clusters it serves; the first data-plane cluster is the config cluster (Istio's
``global.configCluster``: the mesh's configuration is read from its API server), the others are remotes.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

MAX_CLUSTERS = 26


class Topology(enum.Enum):
    MULTI_PRIMARY = "multi-primary"
    PRIMARY_REMOTE = "primary-remote"
    EXTERNAL_CONTROL_PLANE = "external-control-plane"

    def __str__(self) -> str:
        return self.value


TOPOLOGIES = tuple(t.value for t in Topology)
# primary: runs an istiod; remote: served by another cluster's istiod; config: a remote whose API server holds
# the mesh's configuration (external control plane); external: runs istiod only, no workloads of the mesh.
Role = Literal["primary", "remote", "config", "external"]
EXTERNAL = "external"  # the external control plane's cluster


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    network: str
    region: str
    zone: str
    role: Role


@dataclass(frozen=True)
class ClusterPair:
    """An ordered pair of clusters; its id reads ``cluster-a->cluster-b``."""

    source: str
    destination: str

    @property
    def id(self) -> str:
        return f"{self.source}->{self.destination}"


@dataclass(frozen=True)
class MeshSpec:
    topology: Topology
    clusters: tuple[ClusterSpec, ...]
    mesh_id: str = "mesh1"
    trust_domain: str = "cluster.local"
    # The stock Python image the workload program runs in (real backends); a tag that exists on Docker Hub.
    workload_image: str = "python:3.12.12-slim-bookworm"
    # The cluster that runs istiod for every data-plane cluster (external control plane only); not in ``clusters``.
    external: ClusterSpec | None = None

    @classmethod
    def default(cls, topology: Topology, count: int) -> MeshSpec:
        if not 2 <= count <= MAX_CLUSTERS:
            raise ValueError(f"a mesh needs between 2 and {MAX_CLUSTERS} clusters, not {count}")
        clusters = []
        for index, letter in enumerate(string.ascii_lowercase[:count]):
            role: Role = "remote" if topology is Topology.PRIMARY_REMOTE and index > 0 else "primary"
            if topology is Topology.EXTERNAL_CONTROL_PLANE:
                role = "remote" if index > 0 else "config"
            clusters.append(
                ClusterSpec(
                    name=f"cluster-{letter}",
                    network=f"network-{letter}",
                    region=f"region-{letter}",
                    zone=f"zone-{letter}1",
                    role=role,
                )
            )
        external = None
        if topology is Topology.EXTERNAL_CONTROL_PLANE:
            external = ClusterSpec(
                EXTERNAL, f"network-{EXTERNAL}", f"region-{EXTERNAL}", f"zone-{EXTERNAL}1", "external"
            )
        return cls(topology, tuple(clusters), external=external)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(cluster.name for cluster in self.clusters)

    @property
    def primaries(self) -> tuple[ClusterSpec, ...]:
        return tuple(cluster for cluster in self.clusters if cluster.role == "primary")

    @property
    def control_planes(self) -> tuple[ClusterSpec, ...]:
        """The clusters that run an istiod of the mesh: the primaries, or the external cluster."""
        return (self.external,) if self.external is not None else self.primaries

    @property
    def cacerts_clusters(self) -> tuple[str, ...]:
        """The clusters given a ``cacerts`` Secret: every cluster, or only the external control plane's (the one
        istiod there signs every data-plane cluster's workloads)."""
        return (self.external.name,) if self.external is not None else self.names

    @property
    def all_clusters(self) -> tuple[ClusterSpec, ...]:
        """The data-plane clusters, then the external control plane's cluster when there is one."""
        return self.clusters + ((self.external,) if self.external is not None else ())

    def cluster(self, name: str) -> ClusterSpec:
        for cluster in self.all_clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(
            f"no cluster named {name!r} in this mesh (it has {', '.join(c.name for c in self.all_clusters)})"
        )

    def config_cluster(self, name: str) -> str:
        """Where Istio configuration for ``name``'s workloads is applied: itself (a primary), its primary (a
        remote: its primary reads the configuration from its own API server), or the config cluster (an
        external control plane reads it from there)."""
        if self.external is not None:
            return next(c.name for c in self.clusters if c.role == "config")
        if self.cluster(name).role == "remote":
            return self.primaries[0].name
        return name

    def control_plane(self, name: str) -> str:
        """The cluster whose istiod serves ``name``'s proxies (discovery, certificates, injection)."""
        if self.external is not None:
            return self.external.name
        return self.config_cluster(name)

    def pairs(self) -> Iterator[ClusterPair]:
        """Every ordered pair of distinct clusters: 2 for two clusters, 6 for three."""
        for source in self.names:
            for destination in self.names:
                if source != destination:
                    yield ClusterPair(source, destination)
