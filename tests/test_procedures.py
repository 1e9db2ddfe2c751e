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
