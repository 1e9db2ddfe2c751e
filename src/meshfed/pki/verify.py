"""Certificate chain verification as Istio's proxies do it (Envoy on BoringSSL's ``X509_verify_cert``).

It must accept what Envoy accepts and reject what Envoy rejects: a verifier stricter than the proxy
would report failures a real mesh does not have, a laxer one would hide them. So it follows the
OpenSSL-family algorithm rather than a Web PKI profile:

* The path is built from the leaf through the peer's certificates to a certificate of the trust
  store, looking in the trust store first (trusted-first), matching issuer to subject name and, when
  both are present, the authority key id to the subject key id. Several candidates with the same
  name are all tried: two roots can share a subject, and only the signature tells them apart.
* The path must end at a self-signed trusted certificate (Envoy does not set
  ``X509_V_FLAG_PARTIAL_CHAIN``).
* Then, as ``check_chain_extensions``: no unknown critical extension; every issuer a CA
  (v1, or basicConstraints ``CA:TRUE``; keyUsage with keyCertSign when keyUsage is present); path length
  constraints; the TLS purpose (``ssl_server`` when a client checks a server, ``ssl_client`` when a
  server checks a client): an extended key usage, if present, must name it, on the leaf and on CAs.
* Name constraints, for DNS and URI names (the ones Istio certificates carry).
* Then, from the root down, every signature and every validity period, the trust anchor's included.

What it does not do, like Envoy in Istio's configuration: revocation, policy constraints (it
accepts every policy), Netscape certificate types. Error reasons use OpenSSL's wording
(``X509_verify_cert_error_string``), so they read as ``openssl verify`` prints them.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from meshfed.pki.certs import subject, utcnow
from meshfed.pki.spiffe import SpiffeId, SpiffeIdError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Purpose(enum.Enum):
    """Whose chain is checked: a server's (by a client) or a client's (by a server)."""

    SERVER = "ssl_server"
    CLIENT = "ssl_client"

    @property
    def eku(self) -> x509.ObjectIdentifier:
        return ExtendedKeyUsageOID.SERVER_AUTH if self is Purpose.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH


# Extensions BoringSSL understands; any other marked critical fails with "unhandled critical extension".
_HANDLED_EXTENSIONS = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.NAME_CONSTRAINTS,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.POLICY_CONSTRAINTS,
    ExtensionOID.POLICY_MAPPINGS,
    ExtensionOID.INHIBIT_ANY_POLICY,
    x509.ObjectIdentifier("2.16.840.1.113730.1.1"),  # Netscape certificate type
}


class ChainVerificationError(Exception):
    """The chain does not verify. ``reason`` is OpenSSL's wording, ``depth`` 0 is the leaf."""

    def __init__(self, reason: str, depth: int, cert: x509.Certificate | None) -> None:
        self.reason = reason
        self.depth = depth
        self.subject = subject(cert) if cert is not None else ""
        where = f"certificate at depth {depth}" + (f" ({self.subject})" if self.subject else "")
        super().__init__(f"{reason}: {where}")


@dataclass(frozen=True)
class VerifiedChain:
    path: tuple[x509.Certificate, ...]  # leaf first, trust anchor last

    @property
    def leaf(self) -> x509.Certificate:
        return self.path[0]

    @property
    def root(self) -> x509.Certificate:
        return self.path[-1]

    @property
    def identity(self) -> SpiffeId | None:
        """The first URI SAN of the leaf when it is a SPIFFE ID: the principal Envoy reports."""
        uris = uri_sans(self.leaf)
        if not uris:
            return None
        try:
            return SpiffeId.parse(uris[0])
        except SpiffeIdError:
            return None


def uri_sans(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def host_sans(cert: x509.Certificate) -> tuple[list[str], list[IPAddress]]:
    """A certificate's DNS names and IP addresses (what a TLS client checks the host it dials against)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [ip for ip in san.get_values_for_type(x509.IPAddress) if isinstance(ip, IPAddress)]
    return san.get_values_for_type(x509.DNSName), ips


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _key_id(cert: x509.Certificate) -> bytes | None:
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    return ski.digest if isinstance(ski, x509.SubjectKeyIdentifier) else None


def _authority_key_id(cert: x509.Certificate) -> bytes | None:
    aki = _ext(cert, x509.AuthorityKeyIdentifier)
    return aki.key_identifier if isinstance(aki, x509.AuthorityKeyIdentifier) else None


def self_issued(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def _may_issue(issuer: x509.Certificate, cert: x509.Certificate) -> bool:
    """OpenSSL's ``X509_check_issued``: names match, and key ids match when both are present."""
    if cert.issuer != issuer.subject:
        return False
    aki, ski = _authority_key_id(cert), _key_id(issuer)
    return aki is None or ski is None or aki == ski


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _pick_issuer(cert: x509.Certificate, pool: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The issuer among ``pool``: the first whose signature verifies, else the first that matches by name."""
    candidates = [issuer for issuer in pool if issuer is not cert and _may_issue(issuer, cert)]
    for issuer in candidates:
        if signed_by(cert, issuer):
            return issuer
    return candidates[0] if candidates else None


def _build_path(
    chain: Sequence[x509.Certificate], trusted: Sequence[x509.Certificate]
) -> tuple[list[x509.Certificate], bool]:
    """Leaf to as far as it goes; True when it ends at a trusted certificate."""
    leaf = chain[0]
    if leaf in trusted and self_issued(leaf):
        return [leaf], True
    path = [leaf]
    untrusted = list(chain[1:])
    anchored = False
    while len(path) <= 100:  # BoringSSL's default maximum depth
        current = path[-1]
        if anchored:
            if self_issued(current):
                return path, True
            issuer = _pick_issuer(current, trusted)
        else:
            issuer = _pick_issuer(current, trusted)
            if issuer is not None:
                anchored = True
            elif self_issued(current):
                return path, False
            else:
                issuer = _pick_issuer(current, untrusted)
        if issuer is None or issuer in path:
            return path, anchored
        path.append(issuer)
    raise ChainVerificationError("certificate chain too long", len(path), path[-1])


def _chain_building_error(path: list[x509.Certificate], anchored: bool) -> ChainVerificationError:
    last = path[-1]
    depth = len(path) - 1
    if anchored:
        return ChainVerificationError("unable to get issuer certificate", depth, last)
    if self_issued(last):
        if depth == 0:
            return ChainVerificationError("self-signed certificate", depth, last)
        return ChainVerificationError("self-signed certificate in certificate chain", depth, last)
    return ChainVerificationError("unable to get local issuer certificate", depth, last)


def _is_ca(cert: x509.Certificate) -> bool:
    """BoringSSL's ``X509_check_ca``: keyUsage, if present, allows keyCertSign; and the certificate is
    v1 or has basicConstraints ``CA:TRUE`` (a v3 certificate without basicConstraints is no CA)."""
    usage = _ext(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        return False
    if cert.version is x509.Version.v1:
        return True
    constraints = _ext(cert, x509.BasicConstraints)
    return isinstance(constraints, x509.BasicConstraints) and constraints.ca


def _check_purpose(cert: x509.Certificate, purpose: Purpose, depth: int) -> None:
    eku = _ext(cert, x509.ExtendedKeyUsage)
    if isinstance(eku, x509.ExtendedKeyUsage) and purpose.eku not in eku:
        raise ChainVerificationError("unsupported certificate purpose", depth, cert)
    usage = _ext(cert, x509.KeyUsage)
    if depth == 0 and isinstance(usage, x509.KeyUsage):
        # A client signs or agrees on keys; a server may also be sent an encrypted key (RSA key exchange).
        tls = usage.digital_signature or usage.key_agreement
        if purpose is Purpose.SERVER:
            tls = tls or usage.key_encipherment
        if not tls:
            raise ChainVerificationError("unsupported certificate purpose", depth, cert)


def _check_extensions(path: list[x509.Certificate], purpose: Purpose) -> None:
    below = 0  # non-self-issued CA certificates between this one and the leaf
    for depth, cert in enumerate(path):
        for extension in cert.extensions:
            if extension.critical and extension.oid not in _HANDLED_EXTENSIONS:
                raise ChainVerificationError("unhandled critical extension", depth, cert)
        if depth > 0 and not _is_ca(cert):
            raise ChainVerificationError("invalid CA certificate", depth, cert)
        _check_purpose(cert, purpose, depth)
        constraints = _ext(cert, x509.BasicConstraints)
        if (
            depth > 1
            and isinstance(constraints, x509.BasicConstraints)
            and constraints.path_length is not None
            and below > constraints.path_length
        ):
            raise ChainVerificationError("path length constraint exceeded", depth, cert)
        if depth > 0 and not self_issued(cert):
            below += 1


def _host_within(host: str, base: str) -> bool:
    """RFC 5280 matching for DNS and URI-host subtrees: ``.example.com`` means proper subdomains."""
    host, base = host.lower().rstrip("."), base.lower().rstrip(".")
    if not base:
        return True
    if base.startswith("."):
        return host.endswith(base)
    return host == base or host.endswith("." + base)


def _names(cert: x509.Certificate, kind: type[x509.DNSName | x509.UniformResourceIdentifier]) -> list[str]:
    """A certificate's DNS names, or the hosts of its URIs (RFC 5280 constrains URIs by host)."""
    san = _ext(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return []
    if kind is x509.UniformResourceIdentifier:
        return [urlsplit(uri).hostname or "" for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    return san.get_values_for_type(x509.DNSName)


def _check_name_constraints(path: list[x509.Certificate]) -> None:
    for depth, ca in enumerate(path):
        constraints = _ext(ca, x509.NameConstraints)
        if depth == 0 or not isinstance(constraints, x509.NameConstraints):
            continue
        for below, cert in enumerate(path[:depth]):
            if below > 0 and self_issued(cert):
                continue
            for kind in (x509.DNSName, x509.UniformResourceIdentifier):
                permitted = [t.value for t in constraints.permitted_subtrees or () if isinstance(t, kind)]
                excluded = [t.value for t in constraints.excluded_subtrees or () if isinstance(t, kind)]
                for host in _names(cert, kind):
                    if any(_host_within(host, base) for base in excluded):
                        raise ChainVerificationError("excluded subtree violation", below, cert)
                    if permitted and not any(_host_within(host, base) for base in permitted):
                        raise ChainVerificationError("permitted subtree violation", below, cert)


def _check_signatures_and_times(path: list[x509.Certificate], now: datetime) -> None:
    for depth in range(len(path) - 1, -1, -1):
        cert = path[depth]
        if depth < len(path) - 1 and not signed_by(cert, path[depth + 1]):
            raise ChainVerificationError("certificate signature failure", depth, cert)
        if now < cert.not_valid_before_utc:
            raise ChainVerificationError("certificate is not yet valid", depth, cert)
        if now > cert.not_valid_after_utc:
            raise ChainVerificationError("certificate has expired", depth, cert)


def verify_chain(
    chain: Sequence[x509.Certificate],
    trusted_roots: Sequence[x509.Certificate],
    *,
    purpose: Purpose = Purpose.CLIENT,
    now: datetime | None = None,
) -> VerifiedChain:
    """Verify a peer's chain (leaf first, as sent in the handshake) against the trusted roots."""
    if not chain:
        raise ChainVerificationError("no certificate presented", 0, None)
    path, anchored = _build_path(chain, list(trusted_roots))
    if not (anchored and self_issued(path[-1]) and path[-1] in trusted_roots):
        raise _chain_building_error(path, anchored)
    _check_extensions(path, purpose)
    _check_name_constraints(path)
    _check_signatures_and_times(path, now or utcnow())
    return VerifiedChain(tuple(path))


def verify_workload_chain(
    chain: Sequence[x509.Certificate],
    trusted_roots: Sequence[x509.Certificate],
    *,
    purpose: Purpose = Purpose.CLIENT,
    now: datetime | None = None,
) -> SpiffeId:
    """Verify a workload's chain as a peer proxy would, and return the SPIFFE ID it proves."""
    verified = verify_chain(chain, trusted_roots, purpose=purpose, now=now)
    identity = verified.identity
    if identity is None:
        raise ChainVerificationError("no SPIFFE ID in the certificate's URI SAN", 0, verified.leaf)
    return identity
