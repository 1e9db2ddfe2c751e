"""CrossClusterAuthorization after its policy: denied, with at most one stale answer per caller proxy worker (a
connection opened before the policy answers once more under the old filter chain while Envoy drains it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conformance.test_core import STALE_ANSWERS_AFTER_A_POLICY, STRANGER
from conformance.test_core import test_cross_cluster_authorization as cross_cluster_authorization

from meshfed import manifests
from meshfed.calls import CallResult
from meshfed.options import SuiteOptions
from meshfed.topology import ClusterPair, Topology

from .conftest import Provision


def _options(tmp_path: Path) -> SuiteOptions:
    return SuiteOptions("embedded", Topology.MULTI_PRIMARY, 2, {}, "", None, False, False, tmp_path, steady_calls=20)


@pytest.mark.parametrize("stale", [STALE_ANSWERS_AFTER_A_POLICY, STALE_ANSWERS_AFTER_A_POLICY + 1])
def test_stale_answers_after_the_policy_are_counted_and_bounded(
    provision: Provision, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stale: int
) -> None:
    mesh, _ = provision()
    pair = ClusterPair("cluster-a", "cluster-b")
    source = mesh[pair.source]
    source.apply(manifests.service_account(STRANGER))
    source.apply(manifests.idle_client(STRANGER, source.name, image=mesh.spec.workload_image))
    assert source.wait_ready(STRANGER, manifests.TEST_NAMESPACE)
    # The stranger's proxy keeps answering as before the policy on `stale` calls of the steady window: the
    # calls right after the convergence (3 denied in a row) are replaced by an answer kept from before it.
    real_call, kept = source.call, []

    def call(pod: str, namespace: str, url: str, count: int) -> list[CallResult]:
        results = real_call(pod, namespace, url, count)
        if STRANGER not in pod:
            return results
        if all(r.ok for r in results):
            kept[:] = results[:1]
        elif count > 5 and kept:  # the steady window
            results[:stale] = [dataclasses.replace(kept[0]) for _ in range(stale)]
        return results

    monkeypatch.setattr(source, "call", call)
    observations: list[str] = []
    if stale <= STALE_ANSWERS_AFTER_A_POLICY:
        cross_cluster_authorization(mesh, pair, source, _options(tmp_path), observations.append)
        assert observations == [
            f"cluster-a->cluster-b as stranger: {stale}/20 answered on connections opened before the policy (tolerated)"
        ]
    else:
        with pytest.raises(pytest.fail.Exception, match=rf"{stale}/20 calls of the steady window were still answered"):
            cross_cluster_authorization(mesh, pair, source, _options(tmp_path), observations.append)
