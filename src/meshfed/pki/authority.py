"""Making a mesh PKI the way Istio recommends, and issuing workload certificates from it.

One root shared by the mesh and one intermediate per cluster, with the fields of Istio's own recipe
(``tools/certs/Makefile.selfsigned.mk`` and ``common.mk`` in istio/istio): root ``O=Istio, CN=Root CA``;
intermediate ``O=Istio, CN=Intermediate CA, L=<cluster>``, ``CA:true, pathlen:0``, SAN
``DNS:istiod.istio-system.svc``. Each cluster's plug-in bundle is the four files istiod reads from the
``cacerts`` Secret: ``ca-cert.pem``, ``ca-key.pem``, ``root-cert.pem``, ``cert-chain.pem``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.pki.certs import (
    KeyType,
    PrivateKey,
    PublicKey,
    cert_pem,
    key_pem,
    new_key,
    signature_hash,
    utcnow,
    write_private,
    write_public,
)
from meshfed.pki.spiffe import SpiffeId

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
ROOT_CERT = "root-cert.pem"
CERT_CHAIN = "cert-chain.pem"
PLUGIN_FILES = (CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN)

ROOT_DAYS = 3650  # ROOTCA_DAYS in Istio's common.mk
INTERMEDIATE_DAYS = 730  # INTERMEDIATE_DAYS in Istio's common.mk
WORKLOAD_TTL = timedelta(hours=24)  # istiod's DEFAULT_WORKLOAD_CERT_TTL
CLOCK_SKEW_GRACE = timedelta(minutes=2)  # istiod backdates notBefore (see the reference secret dump)
ISTIOD_SAN = "istiod.istio-system.svc"


@dataclass(frozen=True)
class CertAndKey:
    cert: x509.Certificate
    key: PrivateKey = field(repr=False)


def _ca_key_usage() -> x509.KeyUsage:
    # keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign (common.mk)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=True,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _serial() -> int:
    return x509.random_serial_number()


def new_root(
    *,
    key_type: KeyType = "rsa",
    days: int = ROOT_DAYS,
    organization: str = "Istio",
    common_name: str = "Root CA",
    now: datetime | None = None,
    rsa_bits: int = 4096,
) -> CertAndKey:
    """A self-signed root CA as Istio's recipe makes it (no CN when ``common_name`` is empty, as istiod's
    self-signed root ``O=<trust domain>``)."""
    now = now or utcnow()
    key = new_key(key_type, rsa_bits)
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    name = x509.Name(attributes)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .sign(key, signature_hash(key))
    )
    return CertAndKey(cert, key)


def new_intermediate(
    root: CertAndKey,
    cluster: str,
    *,
    key_type: KeyType = "rsa",
    days: int = INTERMEDIATE_DAYS,
    now: datetime | None = None,
) -> CertAndKey:
    """A cluster's intermediate CA, signed by ``root``, as Istio's recipe makes it."""
    now = now or utcnow()
    key = new_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Istio"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Intermediate CA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, cluster),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root.cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(ISTIOD_SAN)]), critical=False)
        .sign(root.key, signature_hash(root.key))
    )
    return CertAndKey(cert, key)


@dataclass(frozen=True)
class WorkloadCert:
    """What a proxy holds: its key, its certificate chain (leaf first) and the roots it trusts."""

    key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    trusted_roots: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


@dataclass(frozen=True)
class PluginCA:
    """A cluster's signing CA in Istio's plug-in layout (the ``cacerts`` Secret)."""

    ca_cert: x509.Certificate
    ca_key: PrivateKey = field(repr=False)
    root_certs: tuple[x509.Certificate, ...]  # root-cert.pem; several during a root rotation
    cert_chain: tuple[x509.Certificate, ...]  # cert-chain.pem: ca-cert.pem first, up to the root

    @classmethod
    def from_parts(cls, intermediate: CertAndKey, roots: Sequence[x509.Certificate]) -> PluginCA:
        return cls(intermediate.cert, intermediate.key, tuple(roots), (intermediate.cert, roots[0]))

    def secret_data(self) -> dict[str, bytes]:
        """The four files, as the ``cacerts`` Secret holds them. ``ca-key.pem`` is the private key."""
        return {
            CA_CERT: cert_pem(self.ca_cert),
            CA_KEY: key_pem(self.ca_key),
            ROOT_CERT: cert_pem(*self.root_certs),
            CERT_CHAIN: cert_pem(*self.cert_chain),
        }

    def write(self, folder: Path) -> None:
        """Write the four files into ``folder``; the key is mode 0600."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.secret_data().items():
            (write_private if name == CA_KEY else write_public)(folder / name, data)

    def sign_workload(
        self, public_key: PublicKey, identity: SpiffeId, *, ttl: timedelta = WORKLOAD_TTL, now: datetime | None = None
    ) -> tuple[x509.Certificate, ...]:
        """Sign a workload certificate the way istiod's CA does; returns the chain the proxy serves.

        Empty subject, so the SAN (exactly one URI, the SPIFFE ID) is critical; ``CA:false``;
        digitalSignature and keyEncipherment; serverAuth and clientAuth; valid from two minutes ago
        (istiod's clock-skew grace) for ``ttl``. The chain is the leaf followed by ``cert-chain.pem``.
        """
        now = now or utcnow()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(_serial())
            .not_valid_before(now - CLOCK_SKEW_GRACE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_cert.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]), critical=True)
            .sign(self.ca_key, signature_hash(self.ca_key))
        )
        return (leaf, *self.cert_chain)

    def sign_server(
        self,
        public_key: PublicKey,
        names: Sequence[str],
        *,
        ttl: timedelta = timedelta(days=1),
        now: datetime | None = None,
    ) -> x509.Certificate:
        """A serving certificate for ``names`` (DNS names, or IP addresses as IP SANs): istiod's own on 15012 and
        15017 (``getDNSNames``), or a gateway's ``credentialName`` certificate."""
        now = now or utcnow()
        alt_names: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW_GRACE)
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=True)
            .sign(self.ca_key, signature_hash(self.ca_key))
        )

    def issue_workload(
        self,
        identity: SpiffeId,
        *,
        key_type: KeyType = "rsa",
        ttl: timedelta = WORKLOAD_TTL,
        now: datetime | None = None,
        extra_trusted_roots: Sequence[x509.Certificate] = (),
    ) -> WorkloadCert:
        """A new key and its workload certificate; the proxy trusts ``root-cert.pem`` plus any extra
        roots (MeshConfig ``caCertificates``). RSA keys are 2048 bits, istiod's default."""
        key = new_key(key_type, rsa_bits=2048)
        chain = self.sign_workload(key.public_key(), identity, ttl=ttl, now=now)
        trusted = tuple(self.root_certs) + tuple(r for r in extra_trusted_roots if r not in self.root_certs)
        return WorkloadCert(key, chain, trusted)


@dataclass(frozen=True)
class MeshPKI:
    """One root and one plug-in CA per cluster."""

    root: CertAndKey
    cluster_cas: Mapping[str, PluginCA]

    def write(self, out: Path) -> None:
        """``out/root-cert.pem``, ``out/root-key.pem`` (0600) and ``out/<cluster>/`` with the four files."""
        out.mkdir(parents=True, exist_ok=True)
        write_public(out / ROOT_CERT, cert_pem(self.root.cert))
        write_private(out / "root-key.pem", key_pem(self.root.key))
        for cluster, ca in self.cluster_cas.items():
            ca.write(out / cluster)


def create_mesh_pki(
    clusters: Sequence[str],
    *,
    key_type: KeyType = "rsa",
    intermediate_days: int = INTERMEDIATE_DAYS,
    root_days: int = ROOT_DAYS,
    now: datetime | None = None,
) -> MeshPKI:
    """The PKI Istio recommends for a multi-cluster mesh: a shared root, an intermediate per cluster."""
    if not clusters:
        raise ValueError("a mesh PKI needs at least one cluster name")
    now = now or utcnow()
    root = new_root(key_type=key_type, days=root_days, now=now)
    cas = {
        cluster: PluginCA.from_parts(
            new_intermediate(root, cluster, key_type=key_type, days=intermediate_days, now=now), [root.cert]
        )
        for cluster in clusters
    }
    return MeshPKI(root, cas)
