"""pilot-agent, emulated: a proxy's key, its certificate from istiod, and the configuration it keeps.

At start the agent generates a key (ECDSA P-256, what ``ECC_SIGNATURE_ALGORITHM=ECDSA`` gives; Istio's
default is RSA 2048), reads the root of ``istio-ca-root-cert`` in its namespace to verify istiod, and
sends a CSR over TLS to its discovery address (``discoveryAddress``, port 15012): the local istiod Service
in a primary; in a remote, the remote's selector-less ``istiod`` Service, whose EndpointSlice holds
``remotePilotAddress`` (the primary's east-west gateway); with an external control plane, the address the
external istiod's mesh config names (its ingress gateway's). The TLS server name is the host of that address
(``pilot/pkg/grpc/tls.go``: an IP address is sent as no SNI at all). The CSR names the cluster the injector
gave the proxy (``ISTIO_META_CLUSTER_ID``, from ``/inject/cluster/<c>``). Without a certificate the proxy
is not ready. The certificate is renewed at half its lifetime by the mesh clock, never in between; a
renewal that cannot reach istiod keeps the old certificate.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshfed.backends.embedded import xds
from meshfed.backends.embedded.node import ControlPlane, Node
from meshfed.backends.embedded.tls import trust_only
from meshfed.pki import SpiffeId, WorkloadCert
from meshfed.pki.certs import load_certs


@dataclass(frozen=True)
class Injection:
    """What the sidecar injector put into the pod: where istiod is and which network the proxy is on."""

    discovery_address: str  # host (a Service name or an IP) of discoveryAddress
    network: str
    trust_domain: str
    revision: str
    pod_labels: Mapping[str, str] = field(default_factory=dict)  # labels the webhook adds to the pod
    cluster_id: str = ""  # ISTIO_META_CLUSTER_ID ("": the cluster the pod runs in)
    discovery_port: int = 15012


class ProxyAgent:
    def __init__(
        self,
        runtime: Node,
        pod: str,
        namespace: str,
        service_account: str,
        labels: Mapping[str, str],
        injection: Injection,
        *,
        is_gateway: bool = False,
    ) -> None:
        self.runtime = runtime
        self.pod = pod
        self.namespace = namespace
        self.service_account = service_account
        self.labels = dict(labels)
        self.injection = injection
        self.is_gateway = is_gateway
        self.cert: WorkloadCert | None = None
        self.issued_at: datetime | None = None
        self._config: xds.ProxyConfig | None = None
        self._generation = -1
        self.config_version = 0  # how many configurations this proxy has had
        self.istiod: ControlPlane | None = None
        self.error = ""
        self.on_certificate: Callable[[WorkloadCert], None] = lambda _: None
        self._lock = threading.Lock()
        self._calling = threading.Lock()  # one conversation with istiod at a time

    @property
    def network(self) -> str:
        """The proxy's Istio network (``ISTIO_META_NETWORK``): what istiod selects its endpoints by."""
        return self.injection.network

    @property
    def node_network(self) -> str:
        """The network the pod's packets travel (its cluster's), whatever Istio network it was told it is on."""
        return self.runtime.spec.network

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId.for_workload(self.injection.trust_domain, self.namespace, self.service_account)

    @property
    def config(self) -> xds.ProxyConfig | None:
        """The newest configuration of its istiod; the last one it got while istiod is away."""
        istiod = self.istiod
        if istiod is not None and istiod.running and istiod.generation != self._generation:
            generation, config = istiod.config_for_generation(self)
            with self._lock:
                if generation != self._generation:
                    self._config, self._generation = config, generation
                    self.config_version += 1
        return self._config

    def bootstrap(self) -> bool:
        """Get a certificate and the first push; False (with ``error``) when istiod cannot be reached."""
        with self._calling:
            return self._attempt(with_csr=True)

    def _attempt(self, *, with_csr: bool) -> bool:
        try:
            self._call_istiod(with_csr=with_csr)
        except (OSError, ssl.SSLError, ValueError) as error:
            failed = "failed to get a certificate from" if with_csr else "cannot reach istiod at"
            self.error = f"{failed} {self.injection.discovery_address}:{self.injection.discovery_port}: {error}"
            return False
        self.error = ""
        return True

    @property
    def disconnected(self) -> bool:
        """Without a certificate, or without a running istiod to stream configuration from."""
        return self.cert is None or self.istiod is None or not self.istiod.running

    def renew_if_due(self) -> None:
        """Renew at half the certificate's lifetime (pilot-agent's default grace period)."""
        if self.cert is None or self.issued_at is None:
            return
        leaf = self.cert.leaf
        half = leaf.not_valid_before_utc + (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 2
        if self.runtime.clock.now() >= half:
            self.bootstrap()

    def reconnect(self) -> bool:
        """Get a certificate if there is none, else open the xDS stream again (after istiod came back);
        the certificate stays until renewal. Nothing to do when connected (a call in flight counts)."""
        with self._calling:
            return not self.disconnected or self._attempt(with_csr=self.cert is None)

    def detach(self) -> None:
        if self.istiod is not None:
            self.istiod.unregister(self)
            self.istiod = None

    def _call_istiod(self, *, with_csr: bool) -> None:
        root_map = self.runtime.store.get("ConfigMap", "istio-ca-root-cert", self.namespace)
        if root_map is None:
            raise ValueError(f"no istio-ca-root-cert in namespace {self.namespace}: cannot verify istiod")
        roots = root_map["data"]["root-cert.pem"].encode()
        key = ec.generate_private_key(ec.SECP256R1())
        request = {
            "type": "csr" if with_csr else "xds",
            "cluster": self.injection.cluster_id or self.runtime.name,
            "namespace": self.namespace,
            "pod": self.pod,
        }
        if with_csr:
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .add_extension(
                    x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(self.identity))]), critical=True
                )
                .sign(key, hashes.SHA256())
            )
            request["csr"] = csr.public_bytes(serialization.Encoding.PEM).decode()
        host, port = self.injection.discovery_address, self.injection.discovery_port
        raw = self.runtime.connect(self.node_network, host, port, timeout=2.0)
        # The server name is the host of the address (a revision's istiod is told apart by its Service name);
        # Python, like Go, sends no SNI for an IP address.
        with trust_only(roots).wrap_socket(raw, server_hostname=host) as conn:
            conn.sendall(json.dumps(request).encode() + b"\n")
            line = conn.makefile("rb").readline()
        if not line:
            raise ValueError("istiod closed the connection")
        response = json.loads(line)
        if "error" in response:
            raise ValueError(response["error"])
        istiod = self.runtime.mesh.istiod(response["istiod"])
        if istiod is None or not istiod.running:
            raise ValueError(f"istiod {response['istiod']} went away")
        if with_csr:
            self._install(key, response)
        if istiod is not None and istiod is not self.istiod:
            self.detach()
            self.istiod = istiod
            istiod.register(self)
            self._generation = -1

    def _install(self, key: ec.EllipticCurvePrivateKey, response: Mapping[str, list[str]]) -> None:
        chain = tuple(c for pem in response["certChain"] for c in load_certs(pem.encode(), "certChain"))
        trusted = tuple(c for pem in response["roots"] for c in load_certs(pem.encode(), "roots"))
        cert = WorkloadCert(key, chain, trusted)
        with self._lock:
            self.cert = cert
            self.issued_at = self.runtime.clock.now()
        self.on_certificate(cert)
