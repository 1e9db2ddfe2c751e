"""The shape of the mesh under test: its topology, its clusters, their networks and regions.

Defaults a user can rely on: clusters ``cluster-a``, ``cluster-b``, ...; each on its own network
(``network-a``, ...) and in its own region (``region-a``, ...); mesh ID ``mesh1``; trust domain
``cluster.local``; in primary-remote the first cluster is the primary.
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

    def __str__(self) -> str:
        return self.value


TOPOLOGIES = tuple(t.value for t in Topology)
Role = Literal["primary", "remote"]


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

    @classmethod
    def default(cls, topology: Topology, count: int) -> MeshSpec:
        if not 2 <= count <= MAX_CLUSTERS:
            raise ValueError(f"a mesh needs between 2 and {MAX_CLUSTERS} clusters, not {count}")
        clusters = []
        for index, letter in enumerate(string.ascii_lowercase[:count]):
            role: Role = "remote" if topology is Topology.PRIMARY_REMOTE and index > 0 else "primary"
            clusters.append(
                ClusterSpec(
                    name=f"cluster-{letter}",
                    network=f"network-{letter}",
                    region=f"region-{letter}",
                    zone=f"zone-{letter}1",
                    role=role,
                )
            )
        return cls(topology, tuple(clusters))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(cluster.name for cluster in self.clusters)

    @property
    def primaries(self) -> tuple[ClusterSpec, ...]:
        return tuple(cluster for cluster in self.clusters if cluster.role == "primary")

    def cluster(self, name: str) -> ClusterSpec:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no cluster named {name!r} in this mesh (it has {', '.join(self.names)})")

    def config_cluster(self, name: str) -> str:
        """Where Istio configuration for ``name``'s workloads is applied: itself, or its primary (a remote
        has no istiod; its primary reads the configuration from its own API server)."""
        if self.cluster(name).role == "remote":
            return self.primaries[0].name
        return name

    def pairs(self) -> Iterator[ClusterPair]:
        """Every ordered pair of distinct clusters: 2 for two clusters, 6 for three."""
        for source in self.names:
            for destination in self.names:
                if source != destination:
                    yield ClusterPair(source, destination)
