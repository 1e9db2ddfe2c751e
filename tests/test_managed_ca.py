"""A managed CA (no cacerts Secret, as on a vendor's Istio): SharedRootOfTrust judges what the proxies hold,
reports the secret-level check as not applicable, and still fails when the clusters' roots differ."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conformance.test_core import test_shared_root_of_trust as shared_root_of_trust

from meshfed.backends.embedded.mesh import EmbeddedBackend, EmbeddedMesh
from meshfed.pki import create_mesh_pki
from meshfed.topology import MeshSpec, Topology


def _managed(separate_roots: bool) -> Iterator[EmbeddedMesh]:
    spec = MeshSpec.default(Topology.MULTI_PRIMARY, 2)
    if separate_roots:
        cacerts = {
            name: create_mesh_pki([name], key_type="ecdsa").cluster_cas[name].secret_data() for name in spec.names
        }
    else:
        cacerts = {n: ca.secret_data() for n, ca in create_mesh_pki(spec.names, key_type="ecdsa").cluster_cas.items()}
    mesh = EmbeddedBackend().provision(spec, cacerts)
    try:
        for name in spec.names:
            for app in ("client", "echo"):
                assert mesh[name].wait_ready(app, "meshfed")
        # What a managed offering looks like from outside: proxies with certificates, no cacerts Secret.
        for name in spec.names:
            mesh[name].delete("Secret", "cacerts", "istio-system")
        mesh.backend = "existing"
        yield mesh
    finally:
        mesh.teardown()


def test_one_root_held_by_every_proxy_passes_with_the_secret_check_not_applicable() -> None:
    notes: list[str] = []
    for mesh in _managed(separate_roots=False):
        shared_root_of_trust(mesh, notes.append)
    assert len(notes) == 1 and "no cacerts Secret in any primary" in notes[0]


def test_different_roots_fail_even_without_cacerts() -> None:
    for mesh in _managed(separate_roots=True):
        with pytest.raises(pytest.fail.Exception, match=r"the proxy trusts .*, not |does not verify"):
            shared_root_of_trust(mesh, lambda reason: None)


def test_a_cacerts_secret_the_user_may_not_read_is_judged_from_the_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """A managed offering's user often may not read Secrets in the control plane's namespace: the 403 is
    the managed-CA case, said in one line, not an error of the case."""
    from meshfed.backends.base import Forbidden

    notes: list[str] = []
    for mesh in _managed(separate_roots=False):
        for name, cluster in mesh.clusters.items():
            original = cluster.get

            def get(kind: str, obj: str, namespace: str | None = None, *, _get=original, _name=name):  # type: ignore[no-untyped-def]
                if (kind, obj) == ("Secret", "cacerts"):
                    raise Forbidden(f"{_name}: GET .../secrets/cacerts was refused (403): forbidden")
                return _get(kind, obj, namespace)

            monkeypatch.setattr(cluster, "get", get)
        shared_root_of_trust(mesh, notes.append)
    assert notes == [
        "secret-level check: the cacerts Secret is not readable by this user (403) in cluster-a, cluster-b "
        "(a managed or external CA); the root every proxy trusts and every workload chain are checked"
    ]
