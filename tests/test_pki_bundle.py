"""Every problem a plug-in CA bundle can have is caught, with the file named and a fix."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest

from meshfed.pki import (
    BundleSourceError,
    PluginCA,
    bundle_from_secret,
    cert_pem,
    create_mesh_pki,
    fingerprint,
    load_bundle_dir,
    validate_bundle,
)
from meshfed.pki.authority import CertAndKey, new_intermediate, new_root
from meshfed.pki.bundle import BundleReport, compare_roots
from meshfed.pki.certs import key_pem
from tests.certfactory import key_usage, make, name


@pytest.fixture(scope="module")
def pair() -> tuple[PluginCA, PluginCA]:
    pki = create_mesh_pki(["cluster-a", "cluster-b"], key_type="ecdsa")
    return pki.cluster_cas["cluster-a"], pki.cluster_cas["cluster-b"]


def _codes(report: BundleReport) -> list[tuple[str, str, str]]:
    return [(f.code, f.severity, f.file) for f in report.findings]


def _only(report: BundleReport, code: str) -> str:
    matching = [f for f in report.findings if f.code == code]
    assert len(matching) == 1, report.findings
    return matching[0].problem


def test_a_good_bundle_has_no_findings(pair: tuple[PluginCA, PluginCA]) -> None:
    report = validate_bundle(pair[0].secret_data(), source="cluster-a")
    assert report.findings == () and report.ok
    assert report.signing_root == pair[0].root_certs[0]
    assert report.plugin_ca().ca_cert == pair[0].ca_cert


def test_no_files_means_istiod_would_self_sign() -> None:
    report = validate_bundle({}, source="x")
    assert _codes(report) == [("no-ca-files", "error", "ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem")]
    assert "self-signed CA" in report.findings[0].problem


def test_incomplete_bundle_is_refused_as_istiod_refuses_it(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data()
    del files["ca-key.pem"]
    report = validate_bundle(files, source="x")
    assert ("incomplete-bundle", "error", "ca-key.pem") in _codes(report)
    assert "incomplete signing CA bundle detected" in _only(report, "incomplete-bundle")
    with pytest.raises(ValueError, match="has errors"):
        report.plugin_ca()


def test_unreadable_files_are_named(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"ca-cert.pem": b"not a certificate", "ca-key.pem": b"nope"}
    report = validate_bundle(files, source="x")
    assert ("unreadable", "error", "ca-cert.pem") in _codes(report)
    assert ("unreadable", "error", "ca-key.pem") in _codes(report)
    assert "holds no PEM certificate" in report.findings[0].problem


def test_key_of_another_cluster_does_not_match(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"ca-key.pem": key_pem(pair[1].ca_key)}
    report = validate_bundle(files, source="x")
    assert _codes(report) == [("key-mismatch", "error", "ca-key.pem")]
    assert "is not the private key of ca-cert.pem" in report.findings[0].problem


def test_intermediate_from_an_unrelated_root(pair: tuple[PluginCA, PluginCA]) -> None:
    stranger = new_root(key_type="ecdsa", common_name="Other Root")
    files = pair[0].secret_data() | {"root-cert.pem": cert_pem(stranger.cert)}
    report = validate_bundle(files, source="x")
    assert ("not-signed-by-root", "error", "ca-cert.pem") in _codes(report)
    assert "is not signed by any root in root-cert.pem" in _only(report, "not-signed-by-root")


def test_intermediate_from_a_different_root_with_the_same_subject(pair: tuple[PluginCA, PluginCA]) -> None:
    impostor = new_root(key_type="ecdsa")  # O=Istio, CN=Root CA, like the real one
    assert impostor.cert.subject == pair[0].root_certs[0].subject
    files = pair[0].secret_data() | {"root-cert.pem": cert_pem(impostor.cert)}
    report = validate_bundle(files, source="x")
    problem = _only(report, "not-signed-by-root")
    assert "different root with the same subject" in problem
    assert fingerprint(impostor.cert) in problem


def test_chain_out_of_order_is_a_warning(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"cert-chain.pem": cert_pem(pair[0].root_certs[0], pair[0].ca_cert)}
    report = validate_bundle(files, source="x")
    assert _codes(report) == [("chain-order", "warning", "cert-chain.pem")]
    assert report.ok


def test_chain_without_the_intermediate(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"cert-chain.pem": cert_pem(pair[0].root_certs[0])}
    report = validate_bundle(files, source="x")
    assert _codes(report) == [("chain-content", "error", "cert-chain.pem")]
    assert "does not contain ca-cert.pem" in report.findings[0].problem


def test_chain_with_another_clusters_intermediate(pair: tuple[PluginCA, PluginCA]) -> None:
    a, b = pair
    files = a.secret_data() | {"cert-chain.pem": cert_pem(a.ca_cert, b.ca_cert, a.root_certs[0])}
    report = validate_bundle(files, source="x")
    assert _codes(report) == [("chain-content", "error", "cert-chain.pem")]
    assert "L=cluster-b" in report.findings[0].problem


def test_chain_without_the_root_is_fine(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"cert-chain.pem": cert_pem(pair[0].ca_cert)}
    assert validate_bundle(files, source="x").findings == ()


def _crafted(ca_cert: CertAndKey, root: CertAndKey, *chain: CertAndKey) -> dict[str, bytes]:
    return {
        "ca-cert.pem": cert_pem(ca_cert.cert),
        "ca-key.pem": key_pem(ca_cert.key),
        "root-cert.pem": cert_pem(root.cert),
        "cert-chain.pem": cert_pem(ca_cert.cert, *(c.cert for c in chain), root.cert),
    }


def test_intermediate_that_is_not_a_ca() -> None:
    root = make(name("Root CA"))
    leafish = make(name("Intermediate CA"), root, ca=False, usage=key_usage(cert_sign=True))
    report = validate_bundle(
        _crafted(CertAndKey(leafish.cert, leafish.key), CertAndKey(root.cert, root.key)), source="x"
    )
    assert _codes(report) == [("not-a-ca", "error", "ca-cert.pem")]
    assert "CA:true is missing" in report.findings[0].problem


def test_intermediate_without_cert_sign_usage() -> None:
    root = make(name("Root CA"))
    weak = make(name("Intermediate CA"), root, usage=key_usage(cert_sign=False))
    report = validate_bundle(_crafted(CertAndKey(weak.cert, weak.key), CertAndKey(root.cert, root.key)), source="x")
    assert _codes(report) == [("not-a-ca", "error", "ca-cert.pem")]
    assert "without keyCertSign" in report.findings[0].problem


def test_path_length_forbids_workloads_below_a_second_level_intermediate() -> None:
    root = make(name("Root CA"))
    middle = make(name("Middle CA"), root, pathlen=0)
    lower = make(name("Intermediate CA"), middle, pathlen=0)
    files = _crafted(
        CertAndKey(lower.cert, lower.key), CertAndKey(root.cert, root.key), CertAndKey(middle.cert, middle.key)
    )
    report = validate_bundle(files, source="x")
    problem = _only(report, "path-length")
    assert "O=Istio, CN=Middle CA allows 0 intermediate CA(s) below it (pathlen:0) but 1 stand below it" in problem
    assert "path length constraint exceeded" in problem


def test_two_level_intermediates_within_path_length_are_fine() -> None:
    root = make(name("Root CA"))
    middle = make(name("Middle CA"), root, pathlen=1)
    lower = make(name("Intermediate CA"), middle, pathlen=0)
    files = _crafted(
        CertAndKey(lower.cert, lower.key), CertAndKey(root.cert, root.key), CertAndKey(middle.cert, middle.key)
    )
    assert validate_bundle(files, source="x").findings == ()


def test_expired_not_yet_valid_and_expiring(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data()
    expires = pair[0].ca_cert.not_valid_after_utc
    expired = validate_bundle(files, source="x", now=expires + timedelta(days=1))
    assert ("expired", "error", "ca-cert.pem") in _codes(expired)
    assert "expired on" in _only(expired, "expired")
    early = validate_bundle(files, source="x", now=pair[0].ca_cert.not_valid_before_utc - timedelta(hours=1))
    assert [c for c in _codes(early) if c[0] == "not-yet-valid"] == [
        ("not-yet-valid", "error", "ca-cert.pem"),
        ("not-yet-valid", "error", "root-cert.pem"),
    ]
    soon = validate_bundle(files, source="x", now=expires - timedelta(days=10))
    assert _codes(soon) == [("expiring", "warning", "ca-cert.pem")]
    assert "in 9 days" in soon.findings[0].problem or "in 10 days" in soon.findings[0].problem
    assert soon.ok
    assert (
        validate_bundle(files, source="x", now=expires - timedelta(days=10), horizon=timedelta(days=5)).findings == ()
    )


def test_root_that_is_not_self_signed(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"root-cert.pem": cert_pem(pair[0].ca_cert)}
    report = validate_bundle(files, source="x")
    assert ("root-not-self-signed", "error", "root-cert.pem") in _codes(report)


def test_kubernetes_tls_layout(pair: tuple[PluginCA, PluginCA]) -> None:
    a = pair[0]
    files = {"tls.crt": cert_pem(a.ca_cert), "tls.key": key_pem(a.ca_key), "ca.crt": cert_pem(*a.root_certs)}
    report = validate_bundle(files, source="x")
    assert report.findings == () and report.layout.signing_cert == "tls.crt"
    del files["ca.crt"]
    assert _codes(validate_bundle(files, source="x"))[0] == ("incomplete-bundle", "error", "ca.crt")


def test_bundle_from_secret_data(pair: tuple[PluginCA, PluginCA]) -> None:
    data = {k: base64.b64encode(v).decode() for k, v in pair[0].secret_data().items()}
    files = bundle_from_secret({"data": data})
    assert validate_bundle(files, source="Secret istio-system/cacerts").ok
    with pytest.raises(BundleSourceError, match=r"data\['ca-cert.pem'\] is not base64"):
        bundle_from_secret({"data": {"ca-cert.pem": "%%%"}})
    plain = bundle_from_secret({"stringData": {"root-cert.pem": cert_pem(*pair[0].root_certs).decode()}})
    assert plain["root-cert.pem"] == cert_pem(*pair[0].root_certs)


def test_folder_loading(pair: tuple[PluginCA, PluginCA], tmp_path: Path) -> None:
    pair[0].write(tmp_path / "cluster-a")
    assert load_bundle_dir(tmp_path / "cluster-a").ok
    with pytest.raises(BundleSourceError, match="is not a folder"):
        load_bundle_dir(tmp_path / "missing")


def test_shared_root_passes_and_a_second_root_is_named(pair: tuple[PluginCA, PluginCA]) -> None:
    a, b = pair
    reports = {
        name: validate_bundle(ca.secret_data(), source=name) for name, ca in (("cluster-a", a), ("cluster-b", b))
    }
    assert compare_roots(reports) == []
    other = create_mesh_pki(["cluster-b"], key_type="ecdsa").cluster_cas["cluster-b"]
    reports["cluster-b"] = validate_bundle(other.secret_data(), source="cluster-b")
    [(cluster, finding)] = compare_roots(reports)
    assert (cluster, finding.code, finding.file) == ("cluster-b", "root-mismatch", "root-cert.pem")
    assert fingerprint(other.root_certs[0]) in finding.problem and fingerprint(a.root_certs[0]) in finding.problem
    assert "neither trusts the other's" in finding.problem


def test_root_rotation_in_progress_is_a_warning(pair: tuple[PluginCA, PluginCA]) -> None:
    a, b = pair
    new = new_root(key_type="ecdsa", common_name="New Root CA")
    old_root = a.root_certs[0]
    rotated = PluginCA.from_parts(new_intermediate(new, "cluster-b", key_type="ecdsa"), [new.cert, old_root])
    a_both = PluginCA(a.ca_cert, a.ca_key, (old_root, new.cert), a.cert_chain)
    reports = {
        "cluster-a": validate_bundle(a_both.secret_data(), source="a"),
        "cluster-b": validate_bundle(rotated.secret_data(), source="b"),
    }
    assert compare_roots(reports) == []
    reports["cluster-a"] = validate_bundle(a.secret_data(), source="a")
    [(cluster, finding)] = compare_roots(reports)
    assert cluster == "cluster-b"
    assert finding.code == "root-mismatch" and "cluster-a does not trust the other's" in finding.problem
    a_partial = PluginCA(a.ca_cert, a.ca_key, (old_root, new.cert), a.cert_chain)
    b_old_only = validate_bundle(b.secret_data(), source="b")
    reports = {"cluster-a": validate_bundle(a_partial.secret_data(), source="a"), "cluster-b": b_old_only}
    [(_cluster, finding)] = compare_roots(reports)
    assert (finding.code, finding.severity) == ("root-set-differs", "warning")


def test_sentence_names_place_file_problem_and_fix(pair: tuple[PluginCA, PluginCA]) -> None:
    files = pair[0].secret_data() | {"ca-key.pem": key_pem(pair[1].ca_key)}
    sentence = validate_bundle(files, source="x").findings[0].sentence("cluster-a")
    assert sentence.startswith("cluster-a: ca-key.pem: is not the private key of ca-cert.pem")
    assert sentence.endswith("; put the key that belongs to ca-cert.pem here.")
    assert "PRIVATE KEY" not in sentence
