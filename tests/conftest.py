"""Shared fixtures of the project's own tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import pytest

from meshfed.backends.embedded.mesh import EmbeddedBackend, EmbeddedMesh
from meshfed.pki import MeshPKI, create_mesh_pki
from meshfed.topology import MeshSpec, Topology

Provision = Callable[..., tuple[EmbeddedMesh, MeshPKI]]


@pytest.fixture
def provision() -> Iterator[Provision]:
    """Bring up an embedded mesh (torn down after the test); cacerts default to one shared ECDSA PKI."""
    meshes: list[EmbeddedMesh] = []

    def make(
        topology: str = "multi-primary", clusters: int = 2, cacerts: Mapping[str, Mapping[str, bytes]] | None = None
    ) -> tuple[EmbeddedMesh, MeshPKI]:
        spec = MeshSpec.default(Topology(topology), clusters)
        pki = create_mesh_pki(spec.names, key_type="ecdsa")
        files = cacerts if cacerts is not None else {name: ca.secret_data() for name, ca in pki.cluster_cas.items()}
        mesh = EmbeddedBackend().provision(spec, files)
        meshes.append(mesh)
        return mesh, pki

    yield make
    for mesh in meshes:
        mesh.teardown()
