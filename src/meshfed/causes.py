"""What a bare "connection failure" was, named from what can be read of the mesh.

Envoy 1.39 on keeps the transport failure reason out of its 503 body (envoyproxy/envoy#44746): a TLS handshake
refused by either side and a gateway that is not there both read "reset reason: remote connection failure".
A case that expects a TLS failure must not pass on a gateway that is down, so before such a call is matched it
is named from the evidence: the east-west gateway on its path has no ready pod or no address (gateway down), or
the two proxies do not verify each other's certificate chains, or the server's SPIFFE ID is not one the client
expects of the service (a TLS failure); with neither, it stays a connection failure whose cause is unknown.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Sequence

from meshfed import manifests
from meshfed.backends.base import BackendError, Mesh, ProxyCerts
from meshfed.calls import CallResult, Symptom
from meshfed.diagnose import cacerts_roots, gateway_down, istiod_clusters, root_mismatch, trust_domain
from meshfed.manifests import ISTIO_SYSTEM, TEST_NAMESPACE, only_in
from meshfed.pki import ChainVerificationError, Purpose, verify_chain
from meshfed.pki.verify import uri_sans


def _certs(mesh: Mesh, cluster: str, app: str, namespace: str) -> tuple[str, ProxyCerts] | None:
    """A ready proxy of ``app``: its pod's name and its certificates."""
    pods = [p for p in mesh[cluster].pods(namespace, {"app": app}) if p.ready and p.has_sidecar and not p.terminating]
    if not pods:
        return None
    try:
        return pods[0].name, mesh[cluster].proxy_certs(pods[0].name, namespace)
    except BackendError:
        return None


def peers_refuse(client: ProxyCerts, server: ProxyCerts) -> str | None:
    """Which side of a handshake would refuse the other's chain (each verifies against its own roots)."""
    for who, chain, roots, purpose in (
        ("the client", server.chain, client.trusted_roots, Purpose.SERVER),
        ("the server", client.chain, server.trusted_roots, Purpose.CLIENT),
    ):
        try:
            verify_chain(chain, roots, purpose=purpose)
        except ChainVerificationError as error:
            return f"{who} rejects the other's certificate ({error})"
    return None


class PathEvidence:
    """Names the bare connection failures of calls from the client in ``source`` to the service that runs only
    in ``destination``; the evidence is read when first needed and again after ``ttl`` seconds."""

    def __init__(self, mesh: Mesh, source: str, destination: str, namespace: str = TEST_NAMESPACE, ttl: float = 5.0):
        self.mesh, self.source, self.destination, self.namespace, self.ttl = mesh, source, destination, namespace, ttl
        self._read_at = -ttl
        self._cause: tuple[Symptom, str] | None = None

    def cause(self) -> tuple[Symptom, str] | None:
        """The symptom the evidence names and why; None when it names nothing."""
        if time.monotonic() - self._read_at >= self.ttl:
            self._cause = self._read()
            self._read_at = time.monotonic()
        return self._cause

    def _read(self) -> tuple[Symptom, str] | None:
        spec = self.mesh.spec
        if spec.cluster(self.source).network != spec.cluster(self.destination).network:
            down = gateway_down(self.mesh, self.destination)
            if down:
                return Symptom.GATEWAY_DOWN, down
        client = _certs(self.mesh, self.source, manifests.CLIENT, self.namespace)
        server = _certs(self.mesh, self.destination, only_in(self.destination), TEST_NAMESPACE)
        if client is None or server is None:
            return None
        refused = peers_refuse(client[1], server[1]) or self._unexpected_identity(client[0], server[1])
        return (Symptom.TLS_FAILURE_INFERRED, refused) if refused else None

    def _unexpected_identity(self, client_pod: str, server: ProxyCerts) -> str | None:
        """The client refuses a server whose SPIFFE ID is none of those its proxy expects of the service (Istio's
        secure naming): e.g. an istiod that named the other cluster's workloads in its own trust domain."""
        fqdn = urllib.parse.urlsplit(manifests.service_url(only_in(self.destination))).hostname or ""
        try:
            expected = self.mesh[self.source].server_identities(client_pod, self.namespace, fqdn)
        except BackendError:
            return None
        presented = uri_sans(server.chain[0]) if server.chain else []
        if not expected or set(presented) & expected:
            return None
        return (
            f"the client rejects the server's certificate: it expects {' or '.join(sorted(expected))} of {fqdn}, "
            f"the server presents {' '.join(presented) or 'no SPIFFE ID'}"
        )

    def name(self, result: CallResult) -> CallResult:
        if result.symptom is not Symptom.CONNECTION_FAILURE:
            return result
        found = self.cause()
        return result.named(found[0]) if found else result


def likely_cause(mesh: Mesh, results: Sequence[CallResult], destination: str | None) -> str | None:
    """What the mesh shows that explains failed calls (to the service that runs only in ``destination``, when
    given): roots or trust domains that differ, then what keeps ``destination`` (or any cluster) unreached."""
    symptoms = {r.symptom for r in results if not r.ok}
    if symptoms & {Symptom.TLS_VERIFY_FAILED, Symptom.UNKNOWN_CA, Symptom.CONNECTION_FAILURE}:
        mismatch = root_mismatch(cacerts_roots(mesh))
        if mismatch:
            return mismatch
    if not symptoms:
        return None
    domains = {name: trust_domain(mesh[name]) for name in mesh.spec.names}
    if len({domain for domain in domains.values() if domain}) > 1:
        return "trust domains differ: " + ", ".join(f"{name} {domain}" for name, domain in domains.items())
    found = [why for name in ([destination] if destination else mesh.spec.names) if (why := unreached(mesh, name))]
    return "; ".join(found) or None


def unreached(mesh: Mesh, destination: str) -> str | None:
    """Why calls from other clusters may not reach ``destination``: no remote secret for it where an istiod
    should read it, its east-west gateway down, its own service running without a sidecar."""
    # The config cluster needs none: an external istiod reads it through its istio-kubeconfig Secret.
    config = mesh.spec.config_cluster(destination) if mesh.spec.external is not None else None
    missing = [
        f"{name} has no remote secret for {destination} (istio-remote-secret-{destination}): its istiod does "
        f"not see {destination}'s endpoints"
        for name, plane in istiod_clusters(mesh).items()
        if name != destination
        and destination != config
        and plane.get("Secret", f"istio-remote-secret-{destination}", ISTIO_SYSTEM) is None
    ]
    if missing:
        return "; ".join(missing)
    down = gateway_down(mesh, destination)
    if down:
        return down
    bare = [p.name for p in mesh[destination].pods(TEST_NAMESPACE, {"app": only_in(destination)}) if not p.has_sidecar]
    if bare:
        return (
            f"{', '.join(bare)} in {destination} runs without a sidecar: Istio sends no call from another network "
            "to a workload without mTLS (it routes them by the SNI of Istio's mTLS)"
        )
    return None
