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
        pki = create_mesh_pki(spec.cacerts_clusters, key_type="ecdsa")
        files = cacerts if cacerts is not None else {name: ca.secret_data() for name, ca in pki.cluster_cas.items()}
        mesh = EmbeddedBackend().provision(spec, files)
        meshes.append(mesh)
        return mesh, pki

    yield make
    for mesh in meshes:
        mesh.teardown()


_SLOW_LEFT_OUT = pytest.StashKey[int]()
SLOW_HINT = "run them with: pytest tests/ -m slow (.ci/run runs both)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The daily loop leaves out tests marked ``slow`` (whole conformance runs on the embedded mesh, the
    isolation proof, the sensitivity guards) unless a ``-m`` expression says otherwise."""
    if config.option.markexpr:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.stash[_SLOW_LEFT_OUT] = len(slow)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    left_out = config.stash.get(_SLOW_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_line(f"{left_out} slow test{'s' if left_out != 1 else ''} left out; {SLOW_HINT}")
