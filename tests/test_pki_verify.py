"""Chain verification must agree with the real thing: each verdict is compared with ``openssl verify``.

OpenSSL's ``X509_verify_cert`` is the algorithm BoringSSL (inside Envoy) inherited; with default
flags (trusted-first, no partial chains, not strict) both accept and reject the same chains, which is
what meshfed's verifier must do to be no stricter and no laxer than Istio's proxies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.pki import ChainVerificationError, Purpose, SpiffeId, cert_pem, verify_chain, verify_workload_chain
from tests.certfactory import NOW, Issued, key_usage, make, name, workload

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")


@dataclass
class Case:
    leaf: x509.Certificate
    chain: list[x509.Certificate] = field(default_factory=list)
    roots: list[x509.Certificate] = field(default_factory=list)
    purpose: Purpose = Purpose.CLIENT
    expected: str = "OK"  # OpenSSL's reason, or OK


def _pki() -> tuple[Issued, Issued]:
    root = make(name("Root CA"))
    intermediate = make(name("Intermediate CA"), root, pathlen=0)
    return root, intermediate


def good() -> Case:
    root, inter = _pki()
    return Case(workload(inter).cert, [inter.cert], [root.cert])


def good_with_root_in_chain() -> Case:
    root, inter = _pki()
    return Case(workload(inter).cert, [inter.cert, root.cert], [root.cert])


def chain_out_of_order() -> Case:
    root, inter = _pki()
    return Case(workload(inter).cert, [root.cert, inter.cert], [root.cert])


def unrelated_extra_cert() -> Case:
    root, inter = _pki()
    stranger = make(name("Stranger CA"))
    return Case(workload(inter).cert, [stranger.cert, inter.cert], [root.cert])


def missing_intermediate() -> Case:
    root, inter = _pki()
    return Case(workload(inter).cert, [], [root.cert], expected="unable to get local issuer certificate")


def other_root_same_subject() -> Case:
    _root, inter = _pki()
    impostor = make(name("Root CA"))
    return Case(workload(inter).cert, [inter.cert], [impostor.cert], expected="unable to get local issuer certificate")


def other_root_same_subject_no_key_ids() -> Case:
    root = make(name("Root CA"), key_ids=False)
    inter = make(name("Intermediate CA"), root, pathlen=0, key_ids=False)
    impostor = make(name("Root CA"), key_ids=False)
    return Case(
        workload(inter, key_ids=False).cert, [inter.cert], [impostor.cert], expected="certificate signature failure"
    )


def two_roots_same_subject_trusted() -> Case:
    root, inter = _pki()
    impostor = make(name("Root CA"))
    return Case(workload(inter).cert, [inter.cert], [impostor.cert, root.cert])


def expired_leaf() -> Case:
    root, inter = _pki()
    leaf = workload(inter, not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(hours=1))
    return Case(leaf.cert, [inter.cert], [root.cert], expected="certificate has expired")


def expired_intermediate() -> Case:
    root = make(name("Root CA"))
    inter = make(name("Intermediate CA"), root, pathlen=0, not_after=NOW - timedelta(minutes=5))
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="certificate has expired")


def expired_root() -> Case:
    root = make(name("Root CA"), not_after=NOW - timedelta(days=1))
    inter = make(name("Intermediate CA"), root, pathlen=0)
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="certificate has expired")


def leaf_not_yet_valid() -> Case:
    root, inter = _pki()
    leaf = workload(inter, not_before=NOW + timedelta(hours=1))
    return Case(leaf.cert, [inter.cert], [root.cert], expected="certificate is not yet valid")


def intermediate_not_ca() -> Case:
    root = make(name("Root CA"))
    inter = make(name("Intermediate CA"), root, ca=False, usage=key_usage(cert_sign=True))
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="invalid CA certificate")


def intermediate_without_basic_constraints() -> Case:
    root = make(name("Root CA"))
    inter = make(name("Intermediate CA"), root, ca=None, usage=key_usage(cert_sign=True))
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="invalid CA certificate")


def intermediate_without_cert_sign() -> Case:
    root = make(name("Root CA"))
    inter = make(name("Intermediate CA"), root, usage=key_usage(cert_sign=False))
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="invalid CA certificate")


def path_length_exceeded() -> Case:
    root = make(name("Root CA"))
    upper = make(name("Upper CA"), root, pathlen=0)
    lower = make(name("Lower CA"), upper, pathlen=0)
    return Case(workload(lower).cert, [lower.cert, upper.cert], [root.cert], expected="path length constraint exceeded")


def path_length_respected() -> Case:
    root = make(name("Root CA"), pathlen=2)
    upper = make(name("Upper CA"), root, pathlen=1)
    lower = make(name("Lower CA"), upper, pathlen=0)
    return Case(workload(lower).cert, [lower.cert, upper.cert], [root.cert])


def server_only_leaf_as_client() -> Case:
    root, inter = _pki()
    leaf = workload(inter, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    return Case(leaf.cert, [inter.cert], [root.cert], Purpose.CLIENT, "unsupported certificate purpose")


def server_only_leaf_as_server() -> Case:
    root, inter = _pki()
    leaf = workload(inter, eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    return Case(leaf.cert, [inter.cert], [root.cert], Purpose.SERVER)


def intermediate_eku_client_only_checked_as_server() -> Case:
    root = make(name("Root CA"))
    inter = make(name("Intermediate CA"), root, pathlen=0, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    return Case(workload(inter).cert, [inter.cert], [root.cert], Purpose.SERVER, "unsupported certificate purpose")


def leaf_key_encipherment_only_as_client() -> Case:
    root, inter = _pki()
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    leaf = workload(inter, usage=usage)
    return Case(leaf.cert, [inter.cert], [root.cert], Purpose.CLIENT, "unsupported certificate purpose")


def leaf_key_encipherment_only_as_server() -> Case:
    root, inter = _pki()
    usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    leaf = workload(inter, usage=usage)
    return Case(leaf.cert, [inter.cert], [root.cert], Purpose.SERVER)


def unknown_critical_extension() -> Case:
    root, inter = _pki()
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    leaf = workload(inter, extra=[(odd, True)])
    return Case(leaf.cert, [inter.cert], [root.cert], expected="unhandled critical extension")


def unknown_noncritical_extension() -> Case:
    root, inter = _pki()
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00")
    return Case(workload(inter, extra=[(odd, False)]).cert, [inter.cert], [root.cert])


def _constrained(permitted: list[x509.GeneralName] | None, excluded: list[x509.GeneralName] | None) -> Issued:
    root = make(name("Root CA"))
    constraint = x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)
    return make(name("Intermediate CA"), root, pathlen=0, extra=[(constraint, True)]), root  # type: ignore[return-value]


def uri_within_name_constraints() -> Case:
    inter, root = _constrained([x509.UniformResourceIdentifier("cluster.local")], None)  # type: ignore[misc]
    return Case(workload(inter).cert, [inter.cert], [root.cert])


def uri_outside_name_constraints() -> Case:
    inter, root = _constrained([x509.UniformResourceIdentifier("example.org")], None)  # type: ignore[misc]
    return Case(workload(inter).cert, [inter.cert], [root.cert], expected="permitted subtree violation")


def dns_excluded_by_name_constraints() -> Case:
    inter, root = _constrained(None, [x509.DNSName("blocked.example")])  # type: ignore[misc]
    leaf = workload(inter, dns=["api.blocked.example"])
    return Case(leaf.cert, [inter.cert], [root.cert], expected="excluded subtree violation")


def self_signed_leaf_untrusted() -> Case:
    leaf = make(name("Lonely"), ca=False, usage=key_usage(cert_sign=False))
    root, _ = _pki()
    return Case(leaf.cert, [], [root.cert], expected="self-signed certificate")


def root_in_chain_not_trusted() -> Case:
    root, inter = _pki()
    other = make(name("Other Root"))
    return Case(
        workload(inter).cert,
        [inter.cert, root.cert],
        [other.cert],
        expected="self-signed certificate in certificate chain",
    )


def intermediate_trusted_without_root() -> Case:
    _, inter = _pki()
    return Case(workload(inter).cert, [], [inter.cert], expected="unable to get issuer certificate")


def multi_root_trust_store() -> Case:
    root, inter = _pki()
    new_root = make(name("New Root CA"))
    return Case(workload(inter).cert, [inter.cert], [new_root.cert, root.cert])


CASES: dict[str, Callable[[], Case]] = {
    fn.__name__: fn
    for fn in (
        good,
        good_with_root_in_chain,
        chain_out_of_order,
        unrelated_extra_cert,
        missing_intermediate,
        other_root_same_subject,
        other_root_same_subject_no_key_ids,
        two_roots_same_subject_trusted,
        expired_leaf,
        expired_intermediate,
        expired_root,
        leaf_not_yet_valid,
        intermediate_not_ca,
        intermediate_without_basic_constraints,
        intermediate_without_cert_sign,
        path_length_exceeded,
        path_length_respected,
        server_only_leaf_as_client,
        server_only_leaf_as_server,
        intermediate_eku_client_only_checked_as_server,
        leaf_key_encipherment_only_as_client,
        leaf_key_encipherment_only_as_server,
        unknown_critical_extension,
        unknown_noncritical_extension,
        uri_within_name_constraints,
        uri_outside_name_constraints,
        dns_excluded_by_name_constraints,
        self_signed_leaf_untrusted,
        root_in_chain_not_trusted,
        intermediate_trusted_without_root,
        multi_root_trust_store,
    )
}


def _meshfed_verdict(case: Case) -> str:
    try:
        verify_chain([case.leaf, *case.chain], case.roots, purpose=case.purpose, now=NOW)
    except ChainVerificationError as error:
        return error.reason
    return "OK"


def _openssl_verdict(case: Case, tmp_path: Path) -> str:
    (tmp_path / "leaf.pem").write_bytes(cert_pem(case.leaf))
    (tmp_path / "roots.pem").write_bytes(cert_pem(*case.roots))
    command = ["openssl", "verify", "-attime", str(int(NOW.timestamp()))]
    command += ["-purpose", "sslclient" if case.purpose is Purpose.CLIENT else "sslserver"]
    command += ["-CAfile", str(tmp_path / "roots.pem")]
    if case.chain:
        (tmp_path / "chain.pem").write_bytes(cert_pem(*case.chain))
        command += ["-untrusted", str(tmp_path / "chain.pem")]
    result = subprocess.run([*command, str(tmp_path / "leaf.pem")], capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "OK"
    match = re.search(r"error \d+ at \d+ depth lookup: (.+)", output)
    assert match, output
    # OpenSSL 3 renamed X509_V_ERR_INVALID_PURPOSE; BoringSSL, inside Envoy, keeps the old words.
    return match.group(1).strip().replace("unsuitable certificate purpose", "unsupported certificate purpose")


@pytest.mark.parametrize("case_name", list(CASES))
def test_verdict_matches_the_expected_openssl_reason(case_name: str) -> None:
    case = CASES[case_name]()
    assert _meshfed_verdict(case) == case.expected


@needs_openssl
@pytest.mark.parametrize("case_name", list(CASES))
def test_verdict_agrees_with_openssl_verify(case_name: str, tmp_path: Path) -> None:
    case = CASES[case_name]()
    assert _meshfed_verdict(case) == _openssl_verdict(case, tmp_path)


def test_workload_chain_yields_its_spiffe_id() -> None:
    root, inter = _pki()
    leaf = workload(inter, uri="spiffe://cluster.local/ns/echo/sa/echo")
    identity = verify_workload_chain([leaf.cert, inter.cert], [root.cert], now=NOW)
    assert identity == SpiffeId.for_workload("cluster.local", "echo", "echo")


def test_workload_chain_without_uri_san_has_no_identity() -> None:
    root, inter = _pki()
    leaf = make(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")]), inter, ca=False, usage=key_usage(cert_sign=False)
    )
    with pytest.raises(ChainVerificationError, match="no SPIFFE ID"):
        verify_workload_chain([leaf.cert, inter.cert], [root.cert], now=NOW)


def test_error_names_depth_and_subject() -> None:
    case = expired_intermediate()
    with pytest.raises(ChainVerificationError) as caught:
        verify_chain([case.leaf, *case.chain], case.roots, now=NOW)
    assert caught.value.depth == 1
    assert str(caught.value) == "certificate has expired: certificate at depth 1 (O=Istio, CN=Intermediate CA)"
