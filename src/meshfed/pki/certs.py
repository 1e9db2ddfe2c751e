"""PEM in and out, keys, fingerprints: the small shared vocabulary of the PKI modules."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KeyType = Literal["rsa", "ecdsa"]
KEY_TYPES: tuple[KeyType, ...] = ("rsa", "ecdsa")
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


class PemError(ValueError):
    """PEM data that does not hold what it should; the message names the problem."""


def new_key(key_type: KeyType, rsa_bits: int = 4096) -> PrivateKey:
    """A new private key: RSA (Istio's recipe uses 4096 bits) or ECDSA P-256."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if key_type == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    raise ValueError(f"unknown key type {key_type!r}: use one of {', '.join(KEY_TYPES)}")


def signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """The digest to sign with: SHA-256, or none for Ed25519 (which hashes by itself)."""
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def load_certs(data: bytes, what: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text, in order. ``what`` names the source in errors."""
    if _PEM_CERT_BEGIN not in data:
        raise PemError(f"{what} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise PemError(f"{what} holds a PEM certificate that cannot be parsed ({error})") from None


def load_key(data: bytes, what: str) -> PrivateKey:
    """The private key in a PEM text (PKCS#1, SEC1 or PKCS#8, unencrypted, as istiod reads it)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as error:
        raise PemError(f"{what} holds no readable unencrypted PEM private key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise PemError(f"{what} holds a {type(key).__name__}, which Istio cannot sign with")
    return key


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certs)


def key_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the form istiod and Envoy read. Write it only with ``write_private``."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_der(public_key: object) -> bytes:
    """The SubjectPublicKeyInfo of a public key, to compare keys whatever their type."""
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches_cert(key: PrivateKey, cert: x509.Certificate) -> bool:
    return public_der(key.public_key()) == public_der(cert.public_key())


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint as ``openssl x509 -noout -fingerprint -sha256`` prints it (``AB:CD:...``)."""
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def subject(cert: x509.Certificate) -> str:
    """The subject in the order ``openssl x509 -subject`` prints it: ``O=Istio, CN=Root CA``."""
    return name_text(cert.subject)


def name_text(name: x509.Name) -> str:
    return ", ".join(f"{attribute.rfc4514_attribute_name}={attribute.value!s}" for attribute in name)


def utcnow() -> datetime:
    return datetime.now(UTC)


def write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o644)


def write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600), from the first byte on."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
