"""Faults injected on purpose: refused where they cannot happen, made with real means on real nodes, and told
apart from the misconfigurations they resemble."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshfed import manifests
from meshfed.backends.base import BackendError
from meshfed.backends.kube import KubeCluster
from meshfed.calls import Symptom
from meshfed.faults import FAULTS, fault
from meshfed.manifests import ISTIO_SYSTEM
from meshfed.misconfig import TLS_FAILURES, Expect, observe
from meshfed.options import OptionError
from meshfed.pki import create_mesh_pki
from tests.conftest import Provision
from tests.test_options import _values


def test_a_fault_that_cannot_happen_in_the_topology_is_refused_with_the_reason() -> None:
    with pytest.raises(OptionError, match=r"^--inject-fault second-root cannot happen in primary-remote \(in primary"):
        _values(meshfed_topology="primary-remote", meshfed_inject_fault="second-root")


def test_a_fault_on_someone_elses_mesh_needs_allow_destructive() -> None:
    contexts = [("a", "ctx-a"), ("b", "ctx-b")]
    with pytest.raises(OptionError, match="breaks the mesh: on the existing backend add --allow-destructive"):
        _values(meshfed_backend="existing", meshfed_context=contexts, meshfed_inject_fault="eastwest-gateway-down")
    allowed = _values(
        meshfed_backend="existing",
        meshfed_context=contexts,
        meshfed_inject_fault="eastwest-gateway-down",
        meshfed_allow_destructive=True,
    )
    assert allowed.fault == "eastwest-gateway-down"


def test_every_feature_is_guarded_by_some_fault() -> None:
    from meshfed.cases import Feature

    assert {feature for f in FAULTS for feature in f.guards} == set(Feature)
    with pytest.raises(KeyError, match="no fault 'nope': use one of gateway-drops-packets"):
        fault("nope")


def _fake_node(tmp_path: Path, rules: str) -> tuple[list[str], Path]:
    """A node command that logs what it is asked and lists ``rules`` for ``iptables -S``."""
    log = tmp_path / "node.log"
    script = tmp_path / "node"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncase "$*" in *" -S FORWARD"*) cat {tmp_path / "rules"};; esac\n')
    (tmp_path / "rules").write_text(rules)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return [str(script)], log


def _cluster(tmp_path: Path, name: str, node_command: list[str]) -> KubeCluster:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(manifests.kubeconfig(name, "https://127.0.0.1:1", token="t"))
    return KubeCluster(
        name, kubeconfig, None, kubectl=Path("kubectl"), istioctl_binary=Path("istioctl"), node_command=node_command
    )


def test_on_a_real_node_the_gateway_fault_is_an_iptables_rule_replaced_not_stacked(tmp_path: Path) -> None:
    old = (
        "-A FORWARD -p tcp -m tcp --dport 15443 -m statistic --mode nth --every 5 --packet 0 -m comment "
        '--comment "meshfed-fault-gateway-drops-packets" -j REJECT --reject-with tcp-reset\n'
    )
    command, log = _fake_node(tmp_path, "-P FORWARD ACCEPT\n" + old)
    cluster = _cluster(tmp_path, "cluster-b", command)
    cluster.drop_gateway_connections(10)
    calls = log.read_text().splitlines()
    assert calls[0] == "iptables -w -S FORWARD"
    assert calls[1].startswith("iptables -w -D FORWARD -p tcp -m tcp --dport 15443 -m statistic --mode nth --every 5")
    assert calls[2] == (
        "iptables -w -I FORWARD -p tcp --dport 15443 -m statistic --mode nth --every 10 --packet 0 -m comment "
        "--comment meshfed-fault-gateway-drops-packets -j REJECT --reject-with tcp-reset"
    )
    assert len(calls) == 3


def test_without_access_to_the_node_the_gateway_fault_says_so(tmp_path: Path) -> None:
    cluster = _cluster(tmp_path, "east", [])
    with pytest.raises(BackendError, match=r"^east: meshfed has no access to this cluster's node network"):
        cluster.drop_gateway_connections(10)


@pytest.mark.slow
def test_a_gateway_that_is_down_is_not_a_tls_failure(provision: Provision) -> None:
    # Envoy 1.39+ tells the caller only "connection failure" for both: the evidence tells them apart.
    mesh, _ = provision()
    mesh["cluster-b"].scale(manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM, 0, timeout=10)
    shown, problem = observe(mesh, Expect("cluster-a", "cluster-b", TLS_FAILURES), 5)
    assert shown == "cluster-a->cluster-b: east-west gateway down"
    assert problem is not None and "cluster-b's east-west gateway has no ready pod" in problem
    # meshfed diagnose names it too, on the cluster whose gateway is down and nowhere else.
    from meshfed.diagnose import diagnose

    named = {(c.check, c.cluster) for c in diagnose(mesh) if c.status == "error"}
    assert ("eastwest-gateway-not-ready", "cluster-b") in named
    assert ("eastwest-gateway-not-ready", "cluster-a") not in named


def test_a_second_root_is_named_a_tls_failure_from_the_proxies_certificates(provision: Provision) -> None:
    first = create_mesh_pki(["cluster-a"], key_type="ecdsa").cluster_cas["cluster-a"]
    second = create_mesh_pki(["cluster-b"], key_type="ecdsa").cluster_cas["cluster-b"]
    mesh, _ = provision(cacerts={"cluster-a": first.secret_data(), "cluster-b": second.secret_data()})
    shown, problem = observe(mesh, Expect("cluster-a", "cluster-b", TLS_FAILURES), 5)
    assert problem is None
    assert shown == f"cluster-a->cluster-b: {Symptom.TLS_FAILURE_INFERRED.value}"


def test_a_server_named_in_another_trust_domain_is_a_tls_failure(
    provision: Provision, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Istiod names the servers of cluster-b in a trust domain their certificates do not carry, as a restarted
    # istiod does when it builds a remote's endpoints before it has read that remote's mesh config: cluster-a's
    # client refuses them, and Envoy 1.40 tells it only "remote connection failure". The chains verify (one root):
    # only the identities the client expects of the service tell it apart from a gateway that is down.
    from meshfed.backends.embedded import istiod

    mesh, _ = provision()
    monkeypatch.setattr(istiod, "read_mesh_config", lambda *_: {"trustDomain": "stale.example"})
    mesh["cluster-a"].apply(manifests.namespace("meshfed-push"))  # an event: istiod pushes
    client = mesh["cluster-a"].pod_of(manifests.TEST_NAMESPACE, manifests.CLIENT).name
    fqdn = f"{manifests.only_in('cluster-b')}.{manifests.TEST_NAMESPACE}.svc.cluster.local"
    expected = f"spiffe://stale.example/ns/{manifests.TEST_NAMESPACE}/sa/{manifests.ECHO}"
    shown, problem = observe(mesh, Expect("cluster-a", "cluster-b", TLS_FAILURES), 5)
    assert problem is None, problem
    assert shown == f"cluster-a->cluster-b: {Symptom.TLS_FAILURE_INFERRED.value}"
    assert mesh["cluster-a"].server_identities(client, manifests.TEST_NAMESPACE, fqdn) == {expected}
    # Without that evidence the same calls are a bare connection failure, not a TLS failure.
    monkeypatch.setattr(type(mesh["cluster-a"]), "server_identities", lambda *_: frozenset())
    _, problem = observe(mesh, Expect("cluster-a", "cluster-b", TLS_FAILURES), 5)
    assert problem is not None and "connection failure" in problem


def test_a_flaky_gateway_fails_the_steady_window_not_the_convergence(provision: Provision) -> None:
    mesh, _ = provision()
    fault("gateway-drops-packets").inject(mesh)
    _, problem = observe(mesh, Expect("cluster-a", "cluster-b", frozenset({Symptom.OK})), 50)
    assert problem is not None and "calls of the steady window were not good" in problem, problem
    assert "connection reset" in problem
    # The other direction does not cross cluster-b's gateway.
    assert observe(mesh, Expect("cluster-b", "cluster-a", frozenset({Symptom.OK})), 50)[1] is None
