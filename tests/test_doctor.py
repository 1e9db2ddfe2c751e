"""`meshfed doctor` names the cause of each known misconfiguration, first, in one line with a hint."""

from __future__ import annotations

import json

import pytest

from meshfed.cli import main
from meshfed.misconfig import CATALOG, Misconfiguration
from meshfed.topology import MeshSpec, Topology


@pytest.mark.parametrize("entry", CATALOG, ids=[m.name for m in CATALOG])
def test_doctor_names_each_misconfiguration_first(entry: Misconfiguration, capsys: pytest.CaptureFixture[str]) -> None:
    # Each entry in the first topology it can happen in (primary-remote's own need a remote, an external
    # control plane's its external cluster).
    topology = next(t for t in Topology if entry.not_applicable(MeshSpec.default(t, 2)) is None).value
    code = main(["doctor", "--break", entry.name, "--topology", topology, "-o", "json"])
    document = json.loads(capsys.readouterr().out)
    problems = [c for c in document["checks"] if c["status"] != "ok"]
    assert problems, f"{entry.name}: the doctor found nothing"
    assert problems[0]["check"] == entry.stages[0].finding
    assert problems[0]["hint"]
    assert code == (1 if problems[0]["status"] == "error" else 0)


def test_doctor_on_a_healthy_mesh(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--topology", "primary-remote"]) == 0
    assert "no problem found" in capsys.readouterr().out


def test_doctor_bad_input_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--break", "gremlins"]) == 2
    assert capsys.readouterr().err.startswith("meshfed: no misconfiguration 'gremlins': use one of second-root-ca,")
    assert main(["doctor", "--backend", "kind", "--break", "second-root-ca"]) == 2
    assert capsys.readouterr().err == (
        "meshfed: --break only breaks an embedded mesh; meshfed doctor never changes real clusters\n"
    )


def test_proxies_without_istiod_are_named_and_clear_once_it_is_back() -> None:
    from meshfed.backends.embedded.mesh import EmbeddedBackend
    from meshfed.diagnose import check_proxy_connections
    from meshfed.manifests import ISTIO_SYSTEM
    from meshfed.pki import create_mesh_pki
    from meshfed.topology import MeshSpec, Topology

    spec = MeshSpec.default(Topology.MULTI_PRIMARY, 2)
    pki = create_mesh_pki(spec.names, key_type="ecdsa")
    mesh = EmbeddedBackend().provision(spec, {n: ca.secret_data() for n, ca in pki.cluster_cas.items()})
    try:
        assert check_proxy_connections(mesh) == []
        mesh["cluster-a"].scale("istiod", ISTIO_SYSTEM, 0)
        found = check_proxy_connections(mesh)
        assert {(c.check, c.status, c.cluster) for c in found} == {("proxy-disconnected", "error", "cluster-a")}
        named = {c.evidence.split(" ")[0].rsplit("-", 2)[0] for c in found}  # namespace/deployment
        assert named >= {"meshfed/client", "meshfed/echo", "istio-system/istio-eastwestgateway"}, named
        mesh["cluster-a"].scale("istiod", ISTIO_SYSTEM, 1)
        assert check_proxy_connections(mesh) == [], "the proxies reconnect once istiod is back"
    finally:
        mesh.teardown()


@pytest.mark.parametrize(
    ("istio_version", "symptom", "belongs_to"),
    [
        ("1.28.10", "TLS verify failed", "Istio before 1.29"),
        ("1.29.6", "connection reset", "Istio 1.29 and later"),
        ("1.31-dev-eed52ebb66ad", "connection reset", "Istio 1.29 and later"),
        ("embedded", "connection reset", "Istio 1.29 and later"),  # the embedded mesh emulates the newest
    ],
)
def test_an_expectation_that_changed_with_istio_belongs_to_its_versions(
    istio_version: str, symptom: str, belongs_to: str
) -> None:
    from meshfed.misconfig import entry
    from meshfed.topology import MeshSpec, Topology

    stage = entry("different-trust-domains").stages[0]
    expectations, said = stage.expectations(MeshSpec.default(Topology.MULTI_PRIMARY, 2), istio_version)
    assert said.startswith(belongs_to) and "istio/istio#58455" in said
    assert all(symptom in {s.value for s in e.symptoms} for e in expectations)
