"""A wrong procedure breaks traffic on the embedded mesh, and the traffic record names the step."""

from __future__ import annotations

from meshfed.expect import Traffic
from meshfed.manifests import CLIENT, TEST_NAMESPACE, only_in, service_url
from tests.conftest import Provision


def test_moving_the_data_plane_before_its_control_plane_loses_calls(provision: Provision) -> None:
    mesh, _ = provision()
    a, b = mesh["cluster-a"], mesh["cluster-b"]
    url = service_url(only_in("cluster-b"))
    calls = {
        "cluster-a->cluster-b": lambda n: a.call(
            a.pod_of(TEST_NAMESPACE, CLIENT).name, TEST_NAMESPACE, url, n, timeout=2
        )
    }
    with Traffic(calls) as traffic:
        traffic.step("data plane of cluster-b moved to canary before any canary control plane")
        b.patch(
            "Namespace",
            TEST_NAMESPACE,
            None,
            {"metadata": {"labels": {"istio-injection": None, "istio.io/rev": "canary"}}},
        )
        b.rollout_restart(only_in("cluster-b"), TEST_NAMESPACE, timeout=5)
        traffic.step("after", settle=0.5)
    assert not any(p.has_sidecar for p in b.pods(TEST_NAMESPACE, {"app": only_in("cluster-b")})), (
        "no injector for canary: no sidecar"
    )
    lost = traffic.lost()
    assert any(line.startswith("after: cluster-a->cluster-b: ") for line in lost), lost


def test_removing_the_old_root_before_the_new_intermediates_is_refused_by_istiod(provision: Provision) -> None:
    """istiod verifies a new bundle before taking it (UpdateVerifiedKeyCertBundleFromFile): an
    intermediate whose root is gone is refused and the old CA stays, so the rotation never completes."""
    from meshfed import manifests
    from meshfed.manifests import ISTIO_SYSTEM
    from meshfed.pki import bundle_from_secret
    from meshfed.pki.authority import new_root
    from meshfed.pki.certs import cert_pem

    mesh, pki = provision()
    a = mesh["cluster-a"]
    spec = mesh.spec.cluster("cluster-a")
    a.apply(manifests.istio_operator(spec, mesh.spec, pilot_env={"ISTIO_MULTIROOT_MESH": "true"}))
    new = new_root(key_type="ecdsa")
    files = bundle_from_secret(a.get("Secret", "cacerts", ISTIO_SYSTEM) or {})
    a.apply(manifests.cacerts({**files, "root-cert.pem": files["root-cert.pem"] + cert_pem(new.cert)}))
    a.apply(manifests.cacerts({**files, "root-cert.pem": cert_pem(new.cert)}))  # old root gone too early
    log = a.istiod_log()  # type: ignore[attr-defined]
    assert any(line.startswith("Failed to update new Plug-in CA certs") for line in log), log
    a.rollout_restart("client", TEST_NAMESPACE)
    chain = a.proxy_certs(a.pod_of(TEST_NAMESPACE, CLIENT).name, TEST_NAMESPACE).chain
    assert chain[-1] == pki.root.cert, "workloads still chain to the old root: the rotation check at the end fails"
