"""Bundles made with the openssl command the way Istio's tools/certs Makefile makes them load and validate.

The commands and extensions below follow ``tools/certs/Makefile.selfsigned.mk`` and ``common.mk`` of
istio/istio (root: ``CA:true``; intermediate: ``CA:true, pathlen:0``, SAN ``istiod.istio-system.svc``,
``L=<cluster>``; workload: ``CA:false``, serverAuth and clientAuth, URI SAN
``spiffe://cluster.local/ns/<cluster>/sa/default``). Key size is the Makefile's
``ROOTCA_KEYSZ``/``INTERMEDIATE_KEYSZ`` set to 2048 to keep the test quick.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meshfed.cli import main
from meshfed.pki import SpiffeId, load_bundle_dir, load_certs, verify_workload_chain

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")

REQ = """[ req ]
encrypt_key = no
prompt = no
utf8 = yes
default_md = sha256
req_extensions = req_ext
x509_extensions = req_ext
distinguished_name = req_dn
"""


def _openssl(*args: object, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def _make_root(work: Path) -> None:
    (work / "root-ca.conf").write_text(
        REQ
        + "[ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true\n"
        + "keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n"
        + "[ req_dn ]\nO = Istio\nCN = Root CA\n"
    )
    _openssl("genrsa", "-out", "root-key.pem", 2048, cwd=work)
    _openssl("req", "-new", "-key", "root-key.pem", "-config", "root-ca.conf", "-out", "root-cert.csr", cwd=work)
    _openssl(
        "x509", "-req", "-days", 3650, "-signkey", "root-key.pem", "-extensions", "req_ext",
        "-extfile", "root-ca.conf", "-in", "root-cert.csr", "-out", "root-cert.pem", cwd=work,
    )  # fmt: skip


def _make_cacerts(work: Path, cluster: str) -> Path:
    folder = work / cluster
    folder.mkdir()
    (folder / "intermediate.conf").write_text(
        REQ
        + "[ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true, pathlen:0\n"
        + "keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n"
        + "subjectAltName=@san\n[ san ]\nDNS.1 = istiod.istio-system.svc\n"
        + f"[ req_dn ]\nO = Istio\nCN = Intermediate CA\nL = {cluster}\n"
    )
    _openssl("genrsa", "-out", f"{cluster}/ca-key.pem", 2048, cwd=work)
    _openssl(
        "req", "-new", "-config", f"{cluster}/intermediate.conf", "-key", f"{cluster}/ca-key.pem",
        "-out", f"{cluster}/cluster-ca.csr", cwd=work,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-days", 730, "-CA", "root-cert.pem", "-CAkey", "root-key.pem", "-CAcreateserial",
        "-extensions", "req_ext", "-extfile", f"{cluster}/intermediate.conf",
        "-in", f"{cluster}/cluster-ca.csr", "-out", f"{cluster}/ca-cert.pem", cwd=work,
    )  # fmt: skip
    (folder / "cert-chain.pem").write_bytes(
        (folder / "ca-cert.pem").read_bytes() + (work / "root-cert.pem").read_bytes()
    )
    shutil.copy(work / "root-cert.pem", folder / "root-cert.pem")
    return folder


def _make_workload(folder: Path) -> Path:
    ns = folder.name
    (folder / "workload.conf").write_text(
        REQ
        + "[ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:false\n"
        + "keyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth, clientAuth\n"
        + f"subjectAltName=@san\n[ san ]\nURI.1 = spiffe://cluster.local/ns/{ns}/sa/default\n"
        + f"[ req_dn ]\nO = Istio\nCN = Workload\nL = {ns}\n"
    )
    _openssl("genrsa", "-out", "key.pem", 2048, cwd=folder)
    _openssl("req", "-new", "-config", "workload.conf", "-key", "key.pem", "-out", "workload.csr", cwd=folder)
    _openssl(
        "x509", "-req", "-days", 1, "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
        "-extensions", "req_ext", "-extfile", "workload.conf", "-in", "workload.csr", "-out", "workload-cert.pem",
        cwd=folder,
    )  # fmt: skip
    return folder / "workload-cert.pem"


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("istio-certs")
    _make_root(work)
    for cluster in ("cluster1", "cluster2"):
        _make_cacerts(work, cluster)
    return work


def test_openssl_made_bundles_validate_clean(recipe: Path) -> None:
    for cluster in ("cluster1", "cluster2"):
        report = load_bundle_dir(recipe / cluster)
        assert report.findings == (), report.findings
        assert report.signing_cert is not None and "L=" + cluster in str(report.signing_cert.subject.rfc4514_string())


def test_pki_verify_accepts_them(recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pki", "verify", str(recipe / "cluster1"), str(recipe / "cluster2")]) == 0
    assert capsys.readouterr().out.count(" ok") == 2


def test_openssl_made_workload_verifies_against_the_other_cluster(recipe: Path) -> None:
    leaf = load_certs(_make_workload(recipe / "cluster1").read_bytes(), "workload-cert.pem")
    chain = load_certs((recipe / "cluster1" / "cert-chain.pem").read_bytes(), "cert-chain.pem")
    roots = load_certs((recipe / "cluster2" / "root-cert.pem").read_bytes(), "root-cert.pem")
    assert verify_workload_chain(leaf + chain, roots) == SpiffeId.for_workload("cluster.local", "cluster1", "default")


def test_a_second_openssl_root_is_caught(recipe: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _make_root(tmp_path)
    other = _make_cacerts(tmp_path, "cluster2")
    assert main(["pki", "verify", str(recipe / "cluster1"), str(other)]) == 1
    out = capsys.readouterr().out
    assert "cluster2: root-cert.pem: this cluster's root" in out and "differs from cluster1's root" in out
