"""The embedded mesh, driven only through the backend contract, behaves as Istio does."""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed import manifests
from meshfed.backends.base import BackendError, Cluster
from meshfed.calls import CallResult, Symptom
from meshfed.manifests import ISTIO_SYSTEM, TEST_NAMESPACE, only_in, service_url
from meshfed.misconfig import entry
from meshfed.pki import bundle_from_secret, create_mesh_pki, fingerprint
from meshfed.pki.certs import cert_pem, key_pem, write_private
from meshfed.pki.spiffe import SpiffeId
from tests.conftest import Provision

CLIENT_ID = "spiffe://cluster.local/ns/meshfed/sa/client"


def calls(
    cluster: Cluster, url: str, count: int = 3, app: str = "client", namespace: str = TEST_NAMESPACE
) -> list[CallResult]:
    pod = cluster.pod_of(namespace, app)
    return cluster.call(pod.name, namespace, url, count, timeout=5)


@pytest.mark.parametrize(
    ("topology", "clusters"), [("multi-primary", 2), ("multi-primary", 3), ("primary-remote", 2), ("primary-remote", 3)]
)
def test_calls_both_ways_carry_the_caller_identity(provision: Provision, topology: str, clusters: int) -> None:
    mesh, _ = provision(topology, clusters)
    for pair in mesh.spec.pairs():
        results = calls(mesh[pair.source], service_url(only_in(pair.destination)))
        assert [r.symptom for r in results] == [Symptom.OK] * 3, [r.described for r in results]
        assert {r.cluster for r in results} == {pair.destination}
        assert {(r.reply or {}).get("caller") for r in results} == {CLIENT_ID}


def access_log(mesh: Any, cluster: str, app: str = "client") -> list[str]:
    """The failed upstream calls of a pod's sidecar, as Envoy's access log shows them (with the transport
    failure reason, which Envoy 1.39+ keeps out of the 503 body)."""
    pod = mesh[cluster].pod_of(TEST_NAMESPACE, app).name
    runtime = mesh.runtime.clusters[cluster].pods[(TEST_NAMESPACE, pod)]
    return list(runtime.sidecar.access_log)


def test_service_everywhere_answers_from_every_cluster(provision: Provision) -> None:
    mesh, _ = provision("multi-primary", 3)
    for name in mesh.spec.names:
        answered = {r.cluster for r in calls(mesh[name], service_url("echo"), count=12)}
        assert answered == set(mesh.spec.names)


def test_second_root_ca_breaks_both_directions(provision: Provision) -> None:
    mesh, _ = provision()
    other = create_mesh_pki(["cluster-b"], key_type="ecdsa").cluster_cas["cluster-b"]
    b = mesh["cluster-b"]
    b.apply(manifests.cacerts(other.secret_data()))
    b.rollout_restart("istiod", ISTIO_SYSTEM)
    # Workloads keep the certificates they got from the old root until they restart.
    assert all(r.ok for r in calls(mesh["cluster-a"], service_url(only_in("cluster-b"))))
    for deployment in ("client", "echo", only_in("cluster-b")):
        b.rollout_restart(deployment, TEST_NAMESPACE)
    for source, destination in (("cluster-a", "cluster-b"), ("cluster-b", "cluster-a")):
        results = calls(mesh[source], service_url(only_in(destination)))
        # As Envoy 1.39+ answers the app: no TLS token in the body; its access log has the reason.
        assert [r.described for r in results] == ["connection failure"] * 3
        assert results[0].body.endswith("reset reason: remote connection failure")
        assert (
            "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end"
            in (access_log(mesh, source)[-1])
        )
    certs = b.proxy_certs(b.pod_of(TEST_NAMESPACE, "client").name, TEST_NAMESPACE)
    assert fingerprint(certs.trusted_roots[0]) == fingerprint(other.root_certs[0])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_s_client_reaches_an_echo_through_the_eastwest_gateway(provision: Provision, tmp_path: Path) -> None:
    mesh, pki = provision()
    gateway = mesh["cluster-b"].get("Service", manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM)
    assert gateway is not None
    address = gateway["status"]["loadBalancer"]["ingress"][0]["ip"]
    host = f"{only_in('cluster-b')}.{TEST_NAMESPACE}.svc.cluster.local"
    request = f"GET / HTTP/1.1\r\nHost: {host}:8080\r\nConnection: close\r\n\r\n"

    def s_client(*extra: str) -> str:
        command = [
            "openssl",
            "s_client",
            "-connect",
            f"{address}:15443",
            "-servername",
            f"outbound_.8080_._.{host}",
            "-quiet",
            *extra,
        ]
        result = subprocess.run(command, input=request, capture_output=True, text=True, timeout=20, check=False)
        return result.stdout

    identity = SpiffeId.for_workload("cluster.local", "tools", "openssl")
    workload = pki.cluster_cas["cluster-a"].issue_workload(identity, key_type="ecdsa")
    (tmp_path / "leaf.pem").write_bytes(cert_pem(workload.leaf))
    (tmp_path / "chain.pem").write_bytes(cert_pem(*workload.chain[1:]))
    write_private(tmp_path / "key.pem", key_pem(workload.key))
    (tmp_path / "root.pem").write_bytes(cert_pem(pki.root.cert))
    own = (
        "-cert",
        str(tmp_path / "leaf.pem"),
        "-cert_chain",
        str(tmp_path / "chain.pem"),
        "-key",
        str(tmp_path / "key.pem"),
    )
    answer = s_client(*own, "-CAfile", str(tmp_path / "root.pem"), "-verify_return_error")
    assert "HTTP/1.1 200" in answer and '"cluster": "cluster-b"' in answer and str(identity) in answer
    assert "HTTP/1.1" not in s_client("-CAfile", str(tmp_path / "root.pem"))
    stranger = create_mesh_pki(["x"], key_type="ecdsa").cluster_cas["x"].issue_workload(identity, key_type="ecdsa")
    (tmp_path / "stranger.pem").write_bytes(cert_pem(stranger.leaf))
    (tmp_path / "stranger-chain.pem").write_bytes(cert_pem(*stranger.chain[1:]))
    write_private(tmp_path / "stranger.key", key_pem(stranger.key))
    refused = s_client(
        "-cert",
        str(tmp_path / "stranger.pem"),
        "-cert_chain",
        str(tmp_path / "stranger-chain.pem"),
        "-key",
        str(tmp_path / "stranger.key"),
    )
    assert "HTTP/1.1" not in refused
    # Without a certificate from the shared root, the echo's sidecar ends the handshake: no answer.
    foreign = pki.cluster_cas["cluster-a"].issue_workload(
        SpiffeId.for_workload("other.domain", "tools", "x"), key_type="ecdsa"
    )
    (tmp_path / "foreign.pem").write_bytes(cert_pem(foreign.leaf))
    write_private(tmp_path / "foreign.key", key_pem(foreign.key))
    other_domain = s_client(
        "-cert",
        str(tmp_path / "foreign.pem"),
        "-cert_chain",
        str(tmp_path / "chain.pem"),
        "-key",
        str(tmp_path / "foreign.key"),
    )
    assert "HTTP/1.1" not in other_domain, "a SPIFFE ID of another trust domain is refused, even from the shared root"


def test_a_name_resolves_only_where_its_service_exists(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    a.delete("Service", only_in("cluster-b"), TEST_NAMESPACE)
    [result] = calls(a, service_url(only_in("cluster-b")), count=1)
    assert result.symptom is Symptom.NAME_RESOLUTION


def _outside_client(cluster: Cluster) -> None:
    for obj in manifests.client_outside_mesh(cluster.name, "outside", "python:3"):
        cluster.apply(obj)


def test_strict_mtls_refuses_a_caller_outside_the_mesh(provision: Provision) -> None:
    mesh, _ = provision()
    b = mesh["cluster-b"]
    _outside_client(b)
    url = service_url(only_in("cluster-b"))
    assert calls(b, url, count=1, namespace="outside")[0].ok, "PERMISSIVE (the default) takes plaintext"
    b.apply(manifests.peer_authentication("STRICT"))
    [refused] = calls(b, url, count=1, namespace="outside")
    assert refused.symptom is Symptom.CONNECTION_RESET, refused.described
    assert all(r.ok for r in calls(mesh["cluster-a"], url)), "mesh callers still pass"


def test_authorization_policy_allows_only_the_named_principal(provision: Provision) -> None:
    mesh, _ = provision()
    a, b = mesh["cluster-a"], mesh["cluster-b"]
    a.apply(manifests.service_account("stranger"))
    a.apply(manifests.idle_client("stranger", "cluster-a", image="python:3"))
    target = only_in("cluster-b")
    b.apply(manifests.authorization_policy("only-client", target, ["cluster.local/ns/meshfed/sa/client"]))
    assert all(r.ok for r in calls(a, service_url(target)))
    denied = calls(a, service_url(target), app="stranger")
    assert [r.described for r in denied] == ["RBAC denied"] * 3
    assert denied[0].status == 403 and denied[0].body == "RBAC: access denied"


def test_incomplete_cacerts_keep_istiod_from_starting(provision: Provision) -> None:
    pki = create_mesh_pki(["cluster-a", "cluster-b"], key_type="ecdsa")
    files = {name: ca.secret_data() for name, ca in pki.cluster_cas.items()}
    del files["cluster-a"]["ca-key.pem"]
    mesh, _ = provision(cacerts=files)
    [istiod] = mesh["cluster-a"].pods(ISTIO_SYSTEM, {"app": "istiod"})
    assert not istiod.ready
    pod = mesh["cluster-a"].get("Pod", istiod.name, ISTIO_SYSTEM)
    assert pod is not None
    assert "incomplete signing CA bundle detected" in pod["status"]["conditions"][0]["message"]
    assert not mesh["cluster-a"].pod_of(TEST_NAMESPACE, "client").ready


def test_without_cacerts_each_istiod_self_signs_and_the_clusters_do_not_trust_each_other(provision: Provision) -> None:
    mesh, _ = provision(cacerts={})
    secret = mesh["cluster-a"].get("Secret", "istio-ca-secret", ISTIO_SYSTEM)
    assert secret is not None
    a = mesh["cluster-a"]
    certs = a.proxy_certs(a.pod_of(TEST_NAMESPACE, "client").name, TEST_NAMESPACE)
    assert certs.trusted_roots[0].subject.rfc4514_string() == "O=cluster.local"
    [result] = calls(a, service_url(only_in("cluster-b")), count=1)
    assert result.symptom is Symptom.CONNECTION_FAILURE
    assert "CERTIFICATE_VERIFY_FAILED" in access_log(mesh, "cluster-a")[-1]


def test_cacerts_reload_takes_a_new_intermediate_but_not_a_new_root(provision: Provision) -> None:
    mesh, pki = provision()
    a = mesh["cluster-a"]
    from meshfed.pki import PluginCA
    from meshfed.pki.authority import new_intermediate

    fresh = PluginCA.from_parts(new_intermediate(pki.root, "cluster-a", key_type="ecdsa"), [pki.root.cert])
    a.apply(manifests.cacerts(fresh.secret_data()))
    a.rollout_restart("client", TEST_NAMESPACE)
    client = a.pod_of(TEST_NAMESPACE, "client").name
    assert a.proxy_certs(client, TEST_NAMESPACE).chain[1] == fresh.ca_cert
    other = create_mesh_pki(["cluster-a"], key_type="ecdsa").cluster_cas["cluster-a"]
    a.apply(manifests.cacerts(other.secret_data()))
    assert "Multi root is disabled, updating new ROOT-CA not supported" in a.istiod_log()  # type: ignore[attr-defined]
    a.rollout_restart("client", TEST_NAMESPACE)
    client = a.pod_of(TEST_NAMESPACE, "client").name
    assert a.proxy_certs(client, TEST_NAMESPACE).trusted_roots == (pki.root.cert,)


def test_missing_remote_secret_leaves_no_endpoints(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    assert [s.name for s in a.remote_clusters()] == ["cluster-a", "cluster-b"]
    a.delete("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM)
    assert [s.name for s in a.remote_clusters()] == ["cluster-a"]
    [result] = calls(a, service_url(only_in("cluster-b")), count=1)
    assert (result.status, result.symptom) == (503, Symptom.NO_HEALTHY_UPSTREAM)
    assert calls(mesh["cluster-b"], service_url(only_in("cluster-a")), count=1)[0].ok, "the other direction still works"


def test_loopback_remote_secret_keeps_the_old_cluster_until_istiod_restarts(provision: Provision) -> None:
    """Real Istio keeps the cluster a secret's previous kubeconfig reached until the new one syncs."""
    mesh, _ = provision()
    a = mesh["cluster-a"]
    reachable = bundle_from_secret(a.get("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM) or {})["cluster-b"]
    kubeconfig = manifests.kubeconfig("cluster-b", "https://127.0.0.1:6443")
    a.apply(manifests.remote_secret("cluster-b", kubeconfig))
    status = {s.name: (s.secret, s.status) for s in a.remote_clusters()}
    assert status == {
        "cluster-a": ("", "synced"),
        "cluster-b": ("istio-system/istio-remote-secret-cluster-b", "timeout"),
    }
    assert calls(a, service_url(only_in("cluster-b")), count=1)[0].ok, "the old cluster still serves"
    a.rollout_restart("istiod", ISTIO_SYSTEM)
    deadline = time.monotonic() + 10  # the old istiod pod drains for a moment, its proxies then reconnect
    while (symptom := calls(a, service_url(only_in("cluster-b")), count=1)[0].symptom) is Symptom.OK:
        assert time.monotonic() < deadline, "the restarted istiod still serves cluster-b"
        time.sleep(0.2)
    assert symptom is Symptom.NO_HEALTHY_UPSTREAM
    a.apply(manifests.remote_secret("cluster-b", reachable.decode()))
    assert calls(a, service_url(only_in("cluster-b")), count=1)[0].ok


def test_a_new_loopback_remote_secret_never_syncs(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    a.delete("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM)
    a.apply(manifests.remote_secret("cluster-b", manifests.kubeconfig("cluster-b", "https://127.0.0.1:6443")))
    assert {s.name: s.status for s in a.remote_clusters()}["cluster-b"] == "timeout"
    assert calls(a, service_url(only_in("cluster-b")), count=1)[0].symptom is Symptom.NO_HEALTHY_UPSTREAM


def test_another_trust_domain_is_refused_by_the_server_after_the_handshake(provision: Provision) -> None:
    """Secure naming takes each cluster's own trust domain, so the client accepts the server; the server
    takes client certificates only of its own trust domain and closes the connection (seen on host)."""
    mesh, _ = provision()
    b = mesh["cluster-b"]
    config = b.get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    mesh_config = yaml.safe_load(config["data"]["mesh"])
    mesh_config["trustDomain"] = "cluster-b.example"
    b.patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    b.rollout_restart("istiod", ISTIO_SYSTEM)
    for deployment in b.list("Deployment", TEST_NAMESPACE):
        b.rollout_restart(deployment["metadata"]["name"], TEST_NAMESPACE)
    termination = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    for source, destination in (("cluster-a", "cluster-b"), ("cluster-b", "cluster-a")):
        [result] = calls(mesh[source], service_url(only_in(destination)), count=1)
        assert (result.status, result.body, result.symptom) == (503, termination, Symptom.CONNECTION_RESET)
        assert access_log(mesh, source)[-1].startswith("503 UC ")


def test_without_cross_network_gateway_calls_into_the_cluster_are_reset(provision: Provision) -> None:
    mesh, _ = provision()
    mesh["cluster-b"].delete("Gateway", "cross-network-gateway", ISTIO_SYSTEM)
    [result] = calls(mesh["cluster-a"], service_url(only_in("cluster-b")), count=1)
    assert result.symptom is Symptom.CONNECTION_FAILURE, result.described
    assert "Connection reset by peer" in access_log(mesh, "cluster-a")[-1]


def test_an_endpoint_without_any_network_label_is_handed_out_by_its_pod_address(provision: Provision) -> None:
    """Injected pods carry values.global.network as their own label; istio-system's counts only without it."""
    mesh, _ = provision()
    b = mesh["cluster-b"]
    echo = b.pod_of(TEST_NAMESPACE, only_in("cluster-b"))
    assert echo.labels[manifests.NETWORK_LABEL] == "network-b"
    b.patch("Namespace", ISTIO_SYSTEM, None, {"metadata": {"labels": {manifests.NETWORK_LABEL: None}}})
    assert calls(mesh["cluster-a"], service_url(only_in("cluster-b")), count=1)[0].ok
    b.patch("Pod", echo.name, TEST_NAMESPACE, {"metadata": {"labels": {manifests.NETWORK_LABEL: None}}})
    [result] = calls(mesh["cluster-a"], service_url(only_in("cluster-b")), count=1)
    assert result.symptom is Symptom.TIMEOUT, result.described


def test_existing_proxies_survive_istiod_outage_and_new_pods_wait(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    a.scale("istiod", ISTIO_SYSTEM, 0)
    assert all(r.ok for r in calls(a, service_url(only_in("cluster-b"))))
    a.patch("Deployment", "client", TEST_NAMESPACE, {"spec": {"template": {"metadata": {"annotations": {"x": "1"}}}}})
    assert not a.wait_ready("client", TEST_NAMESPACE, timeout=0.5)
    serving = [p for p in a.pods(TEST_NAMESPACE, {"app": "client"}) if p.ready]
    assert len(serving) == 1, "the rollout waits and the old pod keeps serving"
    assert all(r.ok for r in a.call(serving[0].name, TEST_NAMESPACE, service_url(only_in("cluster-b")), 3))
    a.scale("istiod", ISTIO_SYSTEM, 1)
    assert a.wait_ready("client", TEST_NAMESPACE, timeout=5)
    assert all(r.ok for r in calls(a, service_url(only_in("cluster-b"))))


def test_certificates_renew_at_half_their_lifetime(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    pod = a.pod_of(TEST_NAMESPACE, "client").name
    first = a.proxy_certs(pod, TEST_NAMESPACE).chain[0]
    mesh.clock.advance(timedelta(hours=11))
    assert a.proxy_certs(pod, TEST_NAMESPACE).chain[0] == first
    mesh.clock.advance(timedelta(hours=2))
    assert a.proxy_certs(pod, TEST_NAMESPACE).chain[0] != first
    assert all(r.ok for r in calls(a, service_url(only_in("cluster-b")))), "renewed certificates still call"
    mesh.clock.advance(timedelta(hours=13))
    assert all(r.ok for r in calls(mesh["cluster-b"], service_url(only_in("cluster-a")))), (
        "and again after another renewal"
    )


def test_objects_it_cannot_interpret_are_refused(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    with pytest.raises(BackendError, match="cannot interpret kind 'Sidecar'"):
        a.apply(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "Sidecar",
                "metadata": {"name": "x", "namespace": "meshfed"},
            }
        )
    policy = manifests.authorization_policy("p", "echo", ["x"])
    policy["spec"]["rules"][0]["to"] = [{"operation": {"methods": ["GET"]}}]
    with pytest.raises(BackendError, match=r"does not interpret spec.rules\[0\].to"):
        a.apply(policy)


def test_a_deleted_pod_is_replaced(provision: Provision) -> None:
    mesh, _ = provision()
    a = mesh["cluster-a"]
    old = a.pod_of(TEST_NAMESPACE, "client").name
    a.delete("Pod", old, TEST_NAMESPACE)
    assert a.wait_ready("client", TEST_NAMESPACE, timeout=5)
    assert a.pod_of(TEST_NAMESPACE, "client").name != old


def test_remote_pods_are_not_created_while_the_primary_istiod_is_down(provision: Provision) -> None:
    """A remote's pods are injected by the primary's istiod (its webhook, through the east-west gateway, fails
    closed): with istiod down no new pod is created, the running ones keep calling, and the ReplicaSet's
    retries create it once istiod is back."""
    mesh, _ = provision("primary-remote")
    primary, remote = mesh["cluster-a"], mesh["cluster-b"]
    primary.scale("istiod", ISTIO_SYSTEM, 0)
    assert all(r.ok for r in calls(remote, service_url(only_in("cluster-a"))))
    before = {p.name for p in remote.pods(TEST_NAMESPACE, {"app": "client"})}
    patch = {"spec": {"template": {"metadata": {"annotations": {"meshfed.dev/rollout": "1"}}}}}
    remote.patch("Deployment", "client", TEST_NAMESPACE, patch)
    assert not remote.wait_ready("client", TEST_NAMESPACE, timeout=1)
    assert {p.name for p in remote.pods(TEST_NAMESPACE, {"app": "client"})} == before
    status = (remote.get("Deployment", "client", TEST_NAMESPACE) or {}).get("status") or {}
    failure = next(c["message"] for c in status.get("conditions") or [] if c["type"] == "ReplicaFailure")
    assert 'failed calling webhook "namespace.sidecar-injector.istio.io"' in failure
    assert all(r.ok for r in calls(remote, service_url(only_in("cluster-a"))))
    primary.scale("istiod", ISTIO_SYSTEM, 1)
    assert remote.wait_ready("client", TEST_NAMESPACE, timeout=10)


def test_workload_certificate_ttl_follows_istiod_environment() -> None:
    from meshfed.backends.embedded.xds import go_duration

    assert go_duration("24h") == timedelta(hours=24)
    assert go_duration("1h30m") == timedelta(minutes=90)
    with pytest.raises(ValueError, match="not a duration"):
        go_duration("10 days")


def test_a_server_that_does_not_trust_the_caller_closes_the_connection_after_the_handshake(
    provision: Provision,
) -> None:
    """cluster-a trusts cluster-b's root too (MeshConfig caCertificates), cluster-b trusts only its own.
    Under TLS 1.3 the client's handshake is done before the server checks its certificate, so the caller
    sees the connection closed ("connection termination", not retried), as real Istio showed for a
    server refusing a client of another trust domain."""
    import yaml

    mesh, _ = provision()
    other = create_mesh_pki(["cluster-b"], key_type="ecdsa").cluster_cas["cluster-b"]
    a, b = mesh["cluster-a"], mesh["cluster-b"]
    b.apply(manifests.cacerts(other.secret_data()))
    b.rollout_restart("istiod", ISTIO_SYSTEM)
    for deployment in ("client", "echo", only_in("cluster-b")):
        b.rollout_restart(deployment, TEST_NAMESPACE)
    config = a.get("ConfigMap", "istio", ISTIO_SYSTEM)
    assert config is not None
    mesh_config = yaml.safe_load(config["data"]["mesh"])
    mesh_config["caCertificates"] = [{"pem": cert_pem(other.root_certs[0]).decode()}]
    a.patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    a.rollout_restart("client", TEST_NAMESPACE)
    results = calls(a, service_url(only_in("cluster-b")), count=20)
    assert {r.symptom for r in results} == {Symptom.CONNECTION_RESET}
    assert all(r.body.endswith("reset reason: connection termination") for r in results)
    assert access_log(mesh, "cluster-a")[-1].startswith("503 UC ")


def test_a_proxy_that_lost_istiod_unnoticed_reconnects_as_pilot_agent_retries(provision: Provision) -> None:
    """An xDS stream can end without an event to reconnect on (it reached an istiod in the moment it
    stopped). pilot-agent retries: the gateway gets istiod's pushes again and routes to the new pods."""
    mesh, _ = provision()
    b = mesh["cluster-b"]
    gateway = next(p.agent for p in mesh.runtime.clusters["cluster-b"].pods.values() if p.gateway is not None)
    assert gateway is not None
    gateway.detach()  # the stream is gone; no istiod stopped, so nothing else makes it reconnect
    b.rollout_restart("echo", TEST_NAMESPACE, timeout=5)  # the echo pods get new addresses
    deadline = time.monotonic() + 5
    while gateway.disconnected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not gateway.disconnected, "the gateway did not reconnect to istiod"
    assert all(r.ok for r in calls(mesh["cluster-a"], service_url(only_in("cluster-b")))), (
        "the gateway routes to the new pods"
    )


# Bottom to top: a module of the embedded mesh may import only modules listed before it.
EMBEDDED_LAYERS = [
    "clock",
    "store",
    "fabric",
    "tls",
    "xds",
    "policy",
    "lb",
    "admission",
    "installer",
    "node",
    "agent",
    "injector",
    "sidecar",
    "gateway",
    "sources",
    "ca",
    "istiod",
    "cluster",
    "mesh",
]


def test_the_embedded_modules_import_downwards_only() -> None:
    """No circle and no upward import, not even for type checking: a reader finds where each Istio
    behaviour is decided by reading down from ``mesh``."""
    import ast

    folder = Path(__file__).resolve().parent.parent / "src" / "meshfed" / "backends" / "embedded"
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    assert modules == sorted(EMBEDDED_LAYERS), "a new embedded module needs its place in EMBEDDED_LAYERS"
    upward = []
    for module in EMBEDDED_LAYERS:
        tree = ast.parse((folder / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
                for name in names:
                    prefix = "meshfed.backends.embedded."
                    target = name[len(prefix) :].split(".")[0] if name.startswith(prefix) else None
                    if target in EMBEDDED_LAYERS and EMBEDDED_LAYERS.index(target) >= EMBEDDED_LAYERS.index(module):
                        upward.append(f"{module} imports {target}")
    assert not upward, upward


@pytest.mark.parametrize(("max_ejection_percent", "ejected"), [(None, 0), (10, 0), (50, 1), (100, 1)])
def test_outlier_ejection_stays_within_max_ejection_percent(max_ejection_percent: int | None, ejected: int) -> None:
    """Envoy 1.31 on, as real Istio showed: a host is ejected only if the ejected share, that host
    included, stays within maxEjectionPercent (default 10); of two hosts, none is ejected by default."""
    from meshfed.backends.embedded import xds
    from meshfed.backends.embedded.sidecar import Sidecar

    detection: dict[str, object] = {"consecutive5xxErrors": 1, "baseEjectionTime": "1m"}
    if max_ejection_percent is not None:
        detection["maxEjectionPercent"] = max_ejection_percent
    local = xds.Endpoint("10.10.0.5", 8080, "cluster-a", "network-a", "region-a", "zone-a1", "echo-1")
    remote = xds.Endpoint("10.250.0.100", 15443, "cluster-b", "network-b", "region-b", "zone-b1", "echo-2", True)
    view = xds.ServiceView(
        "echo.meshfed.svc.cluster.local", 8080, 8080, (local, remote), frozenset(), {"outlierDetection": detection}
    )
    sidecar = object.__new__(Sidecar)
    sidecar._outliers = {}
    for _ in range(3):
        sidecar.record(view, local, failed=True)
    assert len(sidecar._ejected(view)) == ejected


def test_a_remote_without_an_istiod_endpointslice_is_not_supported_by_wrong_remote_pilot_address(
    provision: Provision,
) -> None:
    # A remotePilotAddress that is a DNS name makes an ExternalName Service, with no slice to misdirect.
    mesh, _ = provision("primary-remote", 2)
    remote = mesh["cluster-b"]
    for item in remote.list("EndpointSlice", "istio-system", {"kubernetes.io/service-name": "istiod"}):
        remote.delete("EndpointSlice", item["metadata"]["name"], "istio-system")
    saved: dict[str, object] = {}
    with pytest.raises(pytest.skip.Exception, match="has no EndpointSlice to misdirect"):
        entry("wrong-remote-pilot-address").stages[0].act(mesh, saved)
    assert saved == {}


@pytest.mark.parametrize("topology", ["primary-remote", "external-control-plane"])
def test_a_remote_pod_injected_as_another_cluster_gets_no_certificate(provision: Provision, topology: str) -> None:
    """A remote's injection path names the cluster its proxies claim (``ISTIO_META_CLUSTER_ID``); istiod reviews
    their tokens in that cluster (``KubeJWTAuthenticator``), so a pod injected as another cluster gets no
    certificate and never gets ready, while the pods already running keep serving. The diagnosis names the
    webhook and the sidecar."""
    from meshfed.diagnose import diagnose, injection_path

    mesh, _ = provision(topology)
    b = mesh["cluster-b"]
    [config] = b.list("MutatingWebhookConfiguration")
    assert injection_path(config["webhooks"][0]) == {"cluster": "cluster-b", "net": "network-b"}
    assert {p.proxy_cluster for p in b.pods(TEST_NAMESPACE)} == {"cluster-b"}
    assert not [c for c in diagnose(mesh) if c.check == "injection-path-wrong"]
    config["webhooks"][0]["clientConfig"]["service"]["path"] = "/inject/cluster/cluster-a/net/network-a"
    b.apply(config)
    patch = {"spec": {"template": {"metadata": {"annotations": {"meshfed.dev/rollout": "1"}}}}}
    b.patch("Deployment", "client", TEST_NAMESPACE, patch)
    assert not b.wait_ready("client", TEST_NAMESPACE, timeout=2)
    pods = b.pods(TEST_NAMESPACE, {"app": "client"})
    assert sorted((p.proxy_cluster, p.ready, p.labels.get(manifests.NETWORK_LABEL)) for p in pods) == [
        ("cluster-a", False, "network-a"),
        ("cluster-b", True, "network-b"),
    ]
    [finding] = [c for c in diagnose(mesh) if c.check == "injection-path-wrong"]
    assert finding.cluster == "cluster-b" and finding.status == "error"
    assert "injects as /inject/cluster/cluster-a/net/network-a" in finding.evidence
    assert "says cluster-a" in finding.evidence
    assert finding.hint.endswith("injectionPath=/inject/cluster/cluster-b/net/network-b")
    url = service_url(only_in("cluster-a"))
    client = b.pod_of(TEST_NAMESPACE, "client")  # the pod that was running keeps calling
    assert client.proxy_cluster == "cluster-b"
    assert [r.symptom for r in b.call(client.name, TEST_NAMESPACE, url, 3, timeout=5)] == [Symptom.OK] * 3


def test_a_remote_without_mesh_config_is_named_in_the_default_trust_domain(provision: Provision) -> None:
    """istio/istio#58455 (Istio 1.29 on): istiod names a remote's workloads in the trust domain of the remote's own
    mesh config, and a remote without one gets the defaults, cluster.local, whatever istiod signs in (seen on host
    with an external control plane in ext.example). Callers then expect identities the remote's servers do not
    carry; the diagnosis names it on the remote, and a mesh config there naming the trust domain heals it."""
    from meshfed.diagnose import diagnose

    mesh, _ = provision("primary-remote")
    a, b = mesh["cluster-a"], mesh["cluster-b"]
    assert b.get("ConfigMap", "istio", ISTIO_SYSTEM) is None  # the remote profile writes none
    config = a.get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    mesh_config = yaml.safe_load(config["data"]["mesh"])
    mesh_config["trustDomain"] = "example.org"
    a.patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    a.rollout_restart("istiod", ISTIO_SYSTEM)
    for cluster in (a, b):
        for deployment in cluster.list("Deployment", TEST_NAMESPACE):
            cluster.rollout_restart(deployment["metadata"]["name"], TEST_NAMESPACE)
    assert not any(r.ok for r in calls(a, service_url(only_in("cluster-b"))))
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a"))))
    [finding] = [c for c in diagnose(mesh) if c.check == "trust-domain-mismatch"]
    assert finding.cluster == "cluster-b" and "example.org" in finding.evidence and "#58455" in finding.evidence
    b.apply(  # the mesh config pilot.configMap would write
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ISTIO_SYSTEM},
            "data": {"mesh": yaml.safe_dump({"trustDomain": "example.org"})},
        }
    )
    deadline = time.monotonic() + 5
    while not all(r.ok for r in calls(a, service_url(only_in("cluster-b")))):  # a push renames them
        assert time.monotonic() < deadline, "calls into the remote still fail with its mesh config in place"
        time.sleep(0.2)
    assert not [c for c in diagnose(mesh) if c.check == "trust-domain-mismatch"]
