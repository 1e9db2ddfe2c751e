"""Read-only checks of a mesh that name the cause of a failure (the root of trust, for now).

Every check goes through the backend contract, so it reads a real cluster and the embedded mesh alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography import x509

from meshfed.backends.base import Mesh
from meshfed.manifests import ISTIO_SYSTEM
from meshfed.pki import BundleSourceError, PemError, bundle_from_secret, fingerprint, load_certs


def cacerts_roots(mesh: Mesh) -> dict[str, x509.Certificate | None]:
    """Each cluster's plug-in root (``root-cert.pem``, or ``ca.crt``), None where there is none."""
    roots: dict[str, x509.Certificate | None] = {}
    for name, cluster in mesh.clusters.items():
        secret = cluster.get("Secret", "cacerts", ISTIO_SYSTEM)
        root = None
        if secret is not None:
            try:
                files = bundle_from_secret(secret)
                data = files.get("root-cert.pem") or files.get("ca.crt")
                root = load_certs(data, f"{name} cacerts root-cert.pem")[0] if data else None
            except (BundleSourceError, PemError):
                root = None
        roots[name] = root
    return roots


def root_mismatch(roots: Mapping[str, x509.Certificate | None]) -> str | None:
    """One sentence naming the clusters whose roots differ, by SHA-256 fingerprint; None when all agree."""
    present = {name: fingerprint(root) for name, root in roots.items() if root is not None}
    if len(set(present.values())) <= 1:
        return None
    listed = ", ".join(f"{name} SHA256 {fp}" for name, fp in present.items())
    return f"root-cert.pem differs: {listed}: the clusters do not share one root of trust"
