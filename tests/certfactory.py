"""Crafting certificates for tests, including the odd ones real PKIs produce by mistake."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def name(cn: str, org: str = "Istio") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def key_usage(*, cert_sign: bool, digital_signature: bool = True) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make(
    subject: x509.Name,
    issuer: Issued | None = None,
    *,
    ca: bool | None = True,
    pathlen: int | None = None,
    usage: x509.KeyUsage | None = None,
    eku: Sequence[x509.ObjectIdentifier] | None = None,
    uris: Sequence[str] = (),
    dns: Sequence[str] = (),
    key_ids: bool = True,
    not_before: datetime = NOW - timedelta(days=1),
    not_after: datetime = NOW + timedelta(days=365),
    extra: Sequence[tuple[x509.ExtensionType, bool]] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> Issued:
    """A certificate; self-signed when ``issuer`` is None. ``ca=None`` leaves basicConstraints out."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    signer = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=pathlen if ca else None), True)
    if usage is None and ca:
        usage = key_usage(cert_sign=True)
    if usage is not None:
        builder = builder.add_extension(usage, True)
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), False)
    if key_ids:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        if issuer:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False
            )
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), not subject.rdns)
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical)
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def workload(issuer: Issued, uri: str = "spiffe://cluster.local/ns/echo/sa/client", **kwargs: object) -> Issued:
    """A leaf as istiod issues it: empty subject, critical URI SAN, serverAuth and clientAuth."""
    defaults: dict[str, object] = {
        "ca": False,
        "usage": key_usage(cert_sign=False),
        "eku": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        "uris": [uri],
    }
    defaults.update(kwargs)
    return make(x509.Name([]), issuer, **defaults)  # type: ignore[arg-type]
