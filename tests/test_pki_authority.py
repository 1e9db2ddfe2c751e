"""The PKI meshfed makes is the one Istio's recipe makes, and real tools accept it."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.pki import (
    PLUGIN_FILES,
    MeshPKI,
    Purpose,
    SpiffeId,
    cert_pem,
    create_mesh_pki,
    fingerprint,
    validate_bundle,
    verify_workload_chain,
)
from meshfed.pki.certs import utcnow

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


@pytest.fixture(scope="module")
def pki() -> MeshPKI:
    return create_mesh_pki(["cluster-a", "cluster-b"], key_type="ecdsa")


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    return str(name.get_attributes_for_oid(oid)[0].value)


def test_root_has_istio_recipe_fields(pki: MeshPKI) -> None:
    root = pki.root.cert
    assert _attr(root.subject, NameOID.ORGANIZATION_NAME) == "Istio"
    assert _attr(root.subject, NameOID.COMMON_NAME) == "Root CA"
    assert root.issuer == root.subject
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length is None
    assert root.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


def test_intermediate_has_istio_recipe_fields(pki: MeshPKI) -> None:
    for cluster, ca in pki.cluster_cas.items():
        cert = ca.ca_cert
        assert _attr(cert.subject, NameOID.ORGANIZATION_NAME) == "Istio"
        assert _attr(cert.subject, NameOID.COMMON_NAME) == "Intermediate CA"
        assert _attr(cert.subject, NameOID.LOCALITY_NAME) == cluster
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
        assert ca.cert_chain == (cert, pki.root.cert)
        assert ca.root_certs == (pki.root.cert,)


def test_validity_is_configurable() -> None:
    now = utcnow().replace(microsecond=0)  # X.509 times have whole seconds
    pki = create_mesh_pki(["c1"], key_type="ecdsa", intermediate_days=10, root_days=20, now=now)
    assert pki.root.cert.not_valid_after_utc - now == timedelta(days=20)
    assert pki.cluster_cas["c1"].ca_cert.not_valid_after_utc - now == timedelta(days=10)


def test_rsa_keys_are_4096_bits_and_ecdsa_keys_p256(pki: MeshPKI) -> None:
    assert isinstance(pki.root.key, ec.EllipticCurvePrivateKey)
    assert isinstance(pki.root.key.curve, ec.SECP256R1)
    rsa_pki = create_mesh_pki(["c1"], key_type="rsa")
    assert isinstance(rsa_pki.root.key, rsa.RSAPrivateKey) and rsa_pki.root.key.key_size == 4096
    assert validate_bundle(rsa_pki.cluster_cas["c1"].secret_data(), source="c1").findings == ()


def test_workload_certificate_is_what_istiod_issues(pki: MeshPKI) -> None:
    identity = SpiffeId.for_workload("cluster.local", "meshfed", "client")
    workload = pki.cluster_cas["cluster-a"].issue_workload(identity, key_type="ecdsa", ttl=timedelta(hours=24))
    leaf = workload.leaf
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical, "an empty subject makes the SAN critical"
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(identity)]
    assert len(list(san.value)) == 1
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Valid for the TTL from issuance, backdated two minutes for clock skew, as istiod does.
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=24, minutes=2)
    assert workload.chain[1:] == pki.cluster_cas["cluster-a"].cert_chain


def test_workload_from_one_cluster_verifies_against_the_others_roots(pki: MeshPKI) -> None:
    identity = SpiffeId.for_workload("cluster.local", "meshfed", "echo")
    workload = pki.cluster_cas["cluster-a"].issue_workload(identity, key_type="ecdsa")
    other_roots = pki.cluster_cas["cluster-b"].root_certs
    for purpose in Purpose:
        assert verify_workload_chain(workload.chain, other_roots, purpose=purpose) == identity


def test_extra_trusted_roots_are_added_once(pki: MeshPKI) -> None:
    other = create_mesh_pki(["x"], key_type="ecdsa").root.cert
    ca = pki.cluster_cas["cluster-a"]
    workload = ca.issue_workload(
        SpiffeId.for_workload("cluster.local", "a", "b"), key_type="ecdsa", extra_trusted_roots=[other, pki.root.cert]
    )
    assert workload.trusted_roots == (pki.root.cert, other)


def test_write_uses_plugin_layout_and_private_modes(pki: MeshPKI, tmp_path: Path) -> None:
    pki.write(tmp_path)
    assert (tmp_path / "root-cert.pem").read_bytes() == cert_pem(pki.root.cert)
    assert stat.S_IMODE((tmp_path / "root-key.pem").stat().st_mode) == 0o600
    for cluster in pki.cluster_cas:
        assert sorted(p.name for p in (tmp_path / cluster).iterdir()) == sorted(PLUGIN_FILES)
        assert stat.S_IMODE((tmp_path / cluster / "ca-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / cluster / "ca-cert.pem").stat().st_mode) == 0o644


@needs_openssl
def test_openssl_verifies_meshfed_chains(pki: MeshPKI, tmp_path: Path) -> None:
    pki.write(tmp_path)
    identity = SpiffeId.for_workload("cluster.local", "meshfed", "client")
    for cluster, ca in pki.cluster_cas.items():
        folder = tmp_path / cluster
        subprocess.run(
            ["openssl", "verify", "-CAfile", folder / "root-cert.pem", folder / "ca-cert.pem"],
            check=True,
            capture_output=True,
        )
        (folder / "leaf.pem").write_bytes(cert_pem(ca.issue_workload(identity, key_type="ecdsa").leaf))
        for purpose in ("sslclient", "sslserver"):
            result = subprocess.run(
                [
                    *("openssl", "verify", "-purpose", purpose, "-CAfile", tmp_path / "root-cert.pem"),
                    *("-untrusted", folder / "cert-chain.pem", folder / "leaf.pem"),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr


@needs_openssl
def test_fingerprint_matches_openssl(pki: MeshPKI, tmp_path: Path) -> None:
    (tmp_path / "root.pem").write_bytes(cert_pem(pki.root.cert))
    printed = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", tmp_path / "root.pem"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert printed.split("=", 1)[1] == fingerprint(pki.root.cert)
