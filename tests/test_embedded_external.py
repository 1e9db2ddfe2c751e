"""The embedded mesh with an external control plane (Istio's "Install Istio with an External Control Plane", IP-address
variant) behaves as Istio does: istiod runs in the external cluster, reads the config cluster, leads the remotes that
name it, injects and certifies every data-plane cluster's pods through its ingress gateway."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import timedelta

import pytest

from meshfed import manifests
from meshfed.backends.base import BackendError, Cluster
from meshfed.backends.embedded.mesh import EmbeddedMesh
from meshfed.calls import CallResult, Symptom
from meshfed.manifests import CONTROL_PLANE_CLUSTERS, ISTIO_SYSTEM, TEST_NAMESPACE, only_in, service_url
from meshfed.pki import MeshPKI, bundle_from_secret, load_certs

CLIENT_ID = "spiffe://cluster.local/ns/meshfed/sa/client"
Provision = Callable[..., tuple[EmbeddedMesh, MeshPKI]]


@pytest.fixture
def provision(provision: Provision) -> Provision:
    """An external-control-plane mesh (the shared fixture's, torn down after the test): cacerts only in the
    external cluster."""
    return lambda clusters=2, cacerts=None: provision("external-control-plane", clusters, cacerts)


def calls(cluster: Cluster, url: str, count: int = 3, app: str = "client") -> list[CallResult]:
    pod = cluster.pod_of(TEST_NAMESPACE, app)
    return cluster.call(pod.name, TEST_NAMESPACE, url, count, timeout=5)


def external(mesh: EmbeddedMesh) -> Cluster:
    assert mesh.external is not None
    return mesh.external


def until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def restart_external_istiod(mesh: EmbeddedMesh) -> None:
    external(mesh).rollout_restart("istiod", ISTIO_SYSTEM, timeout=10)


def new_template(cluster: Cluster, deployment: str, namespace: str = TEST_NAMESPACE) -> None:
    """A rollout started (a new pod wanted), not waited for."""
    patch = {"spec": {"template": {"metadata": {"annotations": {"meshfed.dev/rollout": str(time.monotonic())}}}}}
    cluster.patch("Deployment", deployment, namespace, patch)


def creation_failure(cluster: Cluster, deployment: str) -> str:
    """The ReplicaFailure message of a Deployment whose pods the API server refused ("" when none)."""
    status = (cluster.get("Deployment", deployment, TEST_NAMESPACE) or {}).get("status") or {}
    return next((c["message"] for c in status.get("conditions") or [] if c["type"] == "ReplicaFailure"), "")


@pytest.mark.parametrize("clusters", [2, 3])
def test_calls_in_every_direction_carry_the_caller_identity(provision: Provision, clusters: int) -> None:
    mesh, _ = provision(clusters)
    assert set(mesh.clusters) == set(mesh.spec.names), "the external cluster is not a data-plane cluster"
    assert mesh["external"] is mesh.external
    for pair in mesh.spec.pairs():
        results = calls(mesh[pair.source], service_url(only_in(pair.destination)))
        assert [r.symptom for r in results] == [Symptom.OK] * 3, [r.described for r in results]
        assert {r.cluster for r in results} == {pair.destination}
        assert {(r.reply or {}).get("caller") for r in results} == {CLIENT_ID}


def test_every_proxy_is_connected_to_the_external_istiod_and_certified_by_its_cacerts(provision: Provision) -> None:
    mesh, pki = provision()
    ext = external(mesh)
    assert ext.istiods() == {"istiod": 1}, "the contract's istio-system is the control plane's namespace"
    connected = {(p.cluster, p.namespace, p.pod) for p in ext.connected_proxies()}
    intermediate = pki.cluster_cas["external"].ca_cert
    for name, cluster in mesh.clusters.items():
        assert cluster.istiods() == {}, f"{name} runs no istiod"
        with pytest.raises(BackendError, match="no running istiod"):
            cluster.remote_clusters()
        proxies = [p for ns in (TEST_NAMESPACE, ISTIO_SYSTEM) for p in cluster.pods(ns) if p.has_sidecar]
        assert {p.namespace for p in proxies} == {TEST_NAMESPACE, manifests.EXTERNAL_ISTIOD}
        assert len(proxies) == 4  # client, echo, echo-<cluster>, the east-west gateway
        for pod in proxies:
            assert (name, pod.namespace, pod.name) in connected
            assert cluster.proxy_certs(pod.name, pod.namespace).chain[1] == intermediate
    # The helper istiod beside the ingress gateway (istio-system) is not the mesh's: it serves the gateway only.
    assert {s.name: s.status for s in ext.remote_clusters()} == {"cluster-a": "synced", "cluster-b": "synced"}


def test_proxies_reach_the_external_istiod_only_through_its_ingress_gateway(provision: Provision) -> None:
    mesh, _ = provision()
    ext_runtime = mesh.runtime.clusters["external"]
    ingress = ext_runtime.store.get("Service", manifests.INGRESS_GATEWAY, ISTIO_SYSTEM) or {}
    address = ingress["status"]["loadBalancer"]["ingress"][0]["ip"]
    [istiod] = [p for p in ext_runtime.pods.values() if p.istiod is not None and p.namespace == "external-istiod"]
    for name in mesh.spec.names:
        runtime = mesh.runtime.clusters[name]
        pod = runtime.pods[(TEST_NAMESPACE, mesh[name].pod_of(TEST_NAMESPACE, "client").name)]
        assert pod.agent is not None
        assert (pod.agent.injection.discovery_address, pod.agent.injection.discovery_port) == (address, 15012)
        assert pod.agent.injection.cluster_id == name  # from the injection path /inject/cluster/<c>/net/<n>
        assert not mesh.runtime.fabric.reachable(mesh.spec.cluster(name).network, istiod.ip)
    # Without the guide's routes the ingress gateway passes nothing to istiod: no injection, no certificate.
    ext = external(mesh)
    ext.delete("VirtualService", "external-istiod-vs", manifests.EXTERNAL_ISTIOD)
    b = mesh["cluster-b"]
    new_template(b, "client")
    assert not b.wait_ready("client", TEST_NAMESPACE, timeout=1)
    assert 'failed calling webhook "namespace.sidecar-injector.istio.io"' in creation_failure(b, "client")
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a")))), "the old pod keeps serving"
    ext.apply(manifests.external_istiod_routes()[1])
    assert b.wait_ready("client", TEST_NAMESPACE, timeout=5), "the ReplicaSet tries again"
    assert until(lambda: creation_failure(b, "client") == "")


def test_the_external_istiod_certificate_names_its_discovery_address(provision: Provision) -> None:
    """istiod's serving certificate names the host of its mesh config's discoveryAddress (``getDNSNames``); the
    proxies verify it against the address they dial, as pilot-agent does. Named after another address, it is
    refused by every proxy that reconnects ("certificate is valid for A, not B" on host), and the diagnosis
    names the mismatch."""
    import yaml

    from meshfed.diagnose import diagnose

    mesh, _ = provision()
    ext = external(mesh)
    config = ext.get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    mesh_config = yaml.safe_load(config["data"]["mesh"])
    right = mesh_config["defaultConfig"]["discoveryAddress"]
    mesh_config["defaultConfig"]["discoveryAddress"] = "10.0.0.1:15012"
    ext.patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    restart_external_istiod(mesh)
    b = mesh["cluster-b"]
    assert until(lambda: not any(p.pod for p in ext.connected_proxies()), timeout=5)
    [finding] = [c for c in diagnose(mesh) if c.check == "discovery-address-wrong"]
    assert finding.cluster == "external" and f"reach istiod at {right.rpartition(':')[0]}" in finding.evidence
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a")))), "calls go on, on the last configuration"
    mesh_config["defaultConfig"]["discoveryAddress"] = right
    ext.patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    restart_external_istiod(mesh)
    assert until(lambda: len(ext.connected_proxies()) == 8, timeout=10)
    assert not [c for c in diagnose(mesh) if c.check == "discovery-address-wrong"]


def test_mesh_configuration_is_read_from_the_config_cluster_only(provision: Provision) -> None:
    mesh, _ = provision()
    a, b = mesh["cluster-a"], mesh["cluster-b"]
    a.apply(manifests.service_account("stranger"))
    a.apply(manifests.idle_client("stranger", "cluster-a", image="python:3"))
    assert a.wait_ready("stranger", TEST_NAMESPACE, timeout=5)
    target = only_in("cluster-b")
    policy = manifests.authorization_policy("only-client", target, ["cluster.local/ns/meshfed/sa/client"])
    b.apply(policy)  # in the remote: no istiod reads it
    assert all(r.ok for r in calls(a, service_url(target), app="stranger"))
    a.apply(policy)  # in the config cluster: the external istiod applies it to cluster-b's workload too
    assert until(lambda: calls(a, service_url(target), count=1, app="stranger")[0].status == 403)
    assert all(r.ok for r in calls(a, service_url(target)))


def test_without_the_remote_secret_in_the_external_cluster_the_remote_is_unseen(provision: Provision) -> None:
    mesh, _ = provision()
    ext, a, b = external(mesh), mesh["cluster-a"], mesh["cluster-b"]
    # The secret lives in the external cluster (LOCAL_CLUSTER_SECRET_WATCHER), not in the config cluster.
    assert a.get("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM) is None
    secret = ext.get("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM)
    assert secret is not None
    ext.delete("Secret", "istio-remote-secret-cluster-b", ISTIO_SYSTEM)
    assert [s.name for s in ext.remote_clusters()] == ["cluster-a"]
    [result] = calls(a, service_url(only_in("cluster-b")), count=1)
    assert (result.status, result.symptom) == (503, Symptom.NO_HEALTHY_UPSTREAM)
    # A proxy of the remote cannot get a certificate: istiod cannot authenticate a pod of a cluster it does not know.
    new_template(b, "echo")
    assert not b.wait_ready("echo", TEST_NAMESPACE, timeout=1)
    waiting = next(p for p in mesh.runtime.clusters["cluster-b"].pods.values() if p.owner == "echo" and not p.ready)
    assert "cluster 'cluster-b' is not known" in waiting.message
    ext.apply(secret)
    assert b.wait_ready("echo", TEST_NAMESPACE, timeout=5)
    assert until(lambda: calls(a, service_url(only_in("cluster-b")), count=1)[0].ok)


def test_a_remote_whose_namespace_does_not_name_the_config_cluster_is_not_led(provision: Provision) -> None:
    """``checkShouldLead`` (multicluster.go): EXTERNAL_ISTIOD leads a remote only when its system namespace's
    controlPlaneClusters annotation names istiod's cluster ID (the config cluster's); only then does it write
    istio-ca-root-cert there and patch the caBundle of its injection webhook."""
    mesh, _ = provision()
    b = mesh["cluster-b"]
    namespace = b.get("Namespace", ISTIO_SYSTEM) or {}
    assert namespace["metadata"]["name"] == manifests.EXTERNAL_ISTIOD
    assert namespace["metadata"]["annotations"][CONTROL_PLANE_CLUSTERS] == "cluster-a"
    b.patch("Namespace", ISTIO_SYSTEM, None, {"metadata": {"annotations": {CONTROL_PLANE_CLUSTERS: "external"}}})
    ext = external(mesh)
    ext.scale("istiod", ISTIO_SYSTEM, 0)
    [webhook] = b.list("MutatingWebhookConfiguration")
    assert webhook["metadata"]["name"] == "istio-sidecar-injector-external-istiod"
    webhook["webhooks"][0]["clientConfig"].pop("caBundle")  # as a remote never led has it
    b.apply(webhook)
    ext.scale("istiod", ISTIO_SYSTEM, 1)  # istiod decides whom it leads as it adds a cluster
    b.apply(manifests.namespace("late", {"istio-injection": "enabled"}))
    time.sleep(0.5)
    assert b.get("ConfigMap", "istio-ca-root-cert", "late") is None
    assert "caBundle" not in (b.list("MutatingWebhookConfiguration")[0]["webhooks"][0]["clientConfig"])
    new_template(b, "client")
    assert not b.wait_ready("client", TEST_NAMESPACE, timeout=1)
    assert "x509: certificate signed by unknown authority" in creation_failure(b, "client")
    # The config cluster is istiod's own: led whatever its namespace says.
    assert mesh["cluster-a"].list("MutatingWebhookConfiguration")[0]["webhooks"][0]["clientConfig"]["caBundle"]
    b.patch("Namespace", ISTIO_SYSTEM, None, {"metadata": {"annotations": {CONTROL_PLANE_CLUSTERS: "cluster-a"}}})
    restart_external_istiod(mesh)
    assert until(lambda: b.get("ConfigMap", "istio-ca-root-cert", "late") is not None)
    assert b.wait_ready("client", TEST_NAMESPACE, timeout=5)


def test_without_istio_kubeconfig_the_external_istiod_reads_its_own_cluster(provision: Provision) -> None:
    """The istio-kubeconfig volume is optional and client-go skips a KUBECONFIG file that does not exist
    (pkg/kube/util.go ConfigLoadingRules): istiod falls back to the cluster it runs in, under the config
    cluster's ID, and so sees none of the config cluster's pods, Services or configuration."""
    mesh, _ = provision()
    ext, a, b = external(mesh), mesh["cluster-a"], mesh["cluster-b"]
    saved = ext.get("Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    assert saved is not None and set(bundle_from_secret(saved)) == {"config"}
    ext.delete("Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    restart_external_istiod(mesh)
    assert [p.ready for p in ext.pods(ISTIO_SYSTEM, {"app": "istiod"})] == [True]
    assert until(lambda: calls(b, service_url(only_in("cluster-a")), count=1)[0].symptom is Symptom.NO_HEALTHY_UPSTREAM)
    new_template(a, "client")
    assert not a.wait_ready("client", TEST_NAMESPACE, timeout=1)
    waiting = next(p for p in mesh.runtime.clusters["cluster-a"].pods.values() if p.owner == "client" and not p.ready)
    assert "failed to authenticate: no pod" in waiting.message
    ext.apply(manifests.secret("istio-kubeconfig", ISTIO_SYSTEM, bundle_from_secret(saved)))
    restart_external_istiod(mesh)
    assert a.wait_ready("client", TEST_NAMESPACE, timeout=5)
    assert until(lambda: calls(b, service_url(only_in("cluster-a")), count=1)[0].ok)


def test_an_istio_kubeconfig_that_cannot_be_reached_keeps_the_external_istiod_from_getting_ready(
    provision: Provision,
) -> None:
    mesh, _ = provision()
    ext = external(mesh)
    loopback = manifests.kubeconfig("cluster-a", "https://127.0.0.1:6443")
    ext.apply(manifests.secret("istio-kubeconfig", ISTIO_SYSTEM, {"config": loopback.encode()}))
    new_template(ext, "istiod", ISTIO_SYSTEM)
    assert not ext.wait_ready("istiod", ISTIO_SYSTEM, timeout=1)
    pending = [p for p in ext.pods(ISTIO_SYSTEM, {"app": "istiod"}) if not p.ready]
    pod = ext.get("Pod", pending[0].name, ISTIO_SYSTEM) or {}
    assert "https://127.0.0.1:6443 cannot be reached" in pod["status"]["conditions"][0]["message"]
    assert all(r.ok for r in calls(mesh["cluster-a"], service_url(only_in("cluster-b")))), "the old istiod serves"


def test_with_the_external_istiod_down_proxies_keep_their_config_but_nothing_new_is_injected_or_certified(
    provision: Provision,
) -> None:
    mesh, _ = provision()
    ext, b = external(mesh), mesh["cluster-b"]
    pod = b.pod_of(TEST_NAMESPACE, "client").name
    first = b.proxy_certs(pod, TEST_NAMESPACE).chain[0]
    ext.scale("istiod", ISTIO_SYSTEM, 0)
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a"))))
    assert all(r.ok for r in calls(mesh["cluster-a"], service_url(only_in("cluster-b"))))
    new_template(b, "client")
    assert not b.wait_ready("client", TEST_NAMESPACE, timeout=1)
    assert [p.name for p in b.pods(TEST_NAMESPACE, {"app": "client"})] == [pod], "no new pod is even created"
    assert "failed calling webhook" in creation_failure(b, "client")
    mesh.clock.advance(timedelta(hours=13))  # past half the certificate's lifetime: renewal fails
    assert b.proxy_certs(pod, TEST_NAMESPACE).chain[0] == first
    ext.scale("istiod", ISTIO_SYSTEM, 1)
    assert b.wait_ready("client", TEST_NAMESPACE, timeout=5)
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a"))))


def test_the_external_istiod_install_is_interpreted_and_anything_else_refused(provision: Provision) -> None:
    mesh, _ = provision()
    ext = external(mesh)
    deployment = ext.get("Deployment", "istiod", ISTIO_SYSTEM) or {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CLUSTER_ID"] == "cluster-a" and env["EXTERNAL_ISTIOD"] == "true"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/istio/config", "/var/lib/istio/inject"}
    root = (ext.get("Secret", "cacerts", ISTIO_SYSTEM) or {})["data"]
    held = load_certs(
        (mesh["cluster-b"].get("ConfigMap", "istio-ca-root-cert", TEST_NAMESPACE) or {})["data"][
            "root-cert.pem"
        ].encode(),
        "root",
    )
    assert held == load_certs(bundle_from_secret({"data": root})["root-cert.pem"], "cacerts")
    operator = manifests.external_istiod(mesh.spec.clusters[0], mesh.spec, "127.0.0.9")
    operator["spec"]["components"]["pilot"]["k8s"]["resources"] = {"requests": {"cpu": "1"}}
    with pytest.raises(BackendError, match=r"does not interpret spec.components.pilot.k8s.resources"):
        ext.apply(operator)
    operator = manifests.external_istiod(mesh.spec.clusters[0], mesh.spec, "127.0.0.9")
    operator["spec"]["components"]["pilot"]["k8s"]["overlays"][0]["patches"][0]["path"] = "spec.replicas"
    with pytest.raises(BackendError, match=r"does not interpret the overlay patch spec\.replicas"):
        ext.apply(operator)
    operator = manifests.external_istiod(mesh.spec.clusters[0], mesh.spec, "127.0.0.9")
    operator["spec"]["values"]["global"]["caAddress"] = "127.0.0.8:15012"
    with pytest.raises(BackendError, match=r"caAddress must be meshConfig\.defaultConfig\.discoveryAddress"):
        ext.apply(operator)


def gateway_terminating_tls(mesh: EmbeddedMesh, names: list[str], *, ca: bool) -> None:
    """The guide's hostname variant on the ingress gateway: a certificate for ``names`` from the external istiod's
    CA, and the DestinationRule trusting the mesh's root (``ca``) or, as the guide writes it, the system roots."""
    from meshfed.misconfig import GATEWAY_CA, _gateway_secrets

    ext = external(mesh)
    for secret in _gateway_secrets(mesh, names):
        ext.istio_system_itself().apply(secret)
    ext.delete("VirtualService", "external-istiod-vs", ISTIO_SYSTEM)
    for obj in manifests.external_istiod_tls_routes():
        if obj["kind"] == "DestinationRule" and ca:
            for port in obj["spec"]["trafficPolicy"]["portLevelSettings"]:
                port["tls"]["credentialName"] = GATEWAY_CA
        ext.apply(obj)
    restart_external_istiod(mesh)


def test_a_gateway_terminating_tls_serves_the_names_the_data_plane_dials(provision: Provision) -> None:
    """The hostname variant: the ingress gateway terminates TLS with a certificate for what the data-plane
    clusters dial (the discovery address, the webhooks' istiod.<ns>.svc) and opens TLS to istiod trusting the
    mesh's root: every proxy connects and a new pod is injected. With the guide's DestinationRule as written
    (tls SIMPLE, no CA) the gateway verifies istiod against the system roots and no proxy gets through (host)."""
    from meshfed.diagnose import diagnose

    mesh, _ = provision()
    ext, b = external(mesh), mesh["cluster-b"]
    config = ext.get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    address = str(config["data"]["mesh"]).split("discoveryAddress: ")[1].split(":")[0]
    names = [address, f"istiod.{manifests.EXTERNAL_ISTIOD}.svc"]
    gateway_terminating_tls(mesh, names, ca=True)
    assert until(lambda: len(ext.connected_proxies()) == 8, timeout=10), "every proxy through the gateway"
    new_template(b, "client")
    assert until(lambda: b.wait_ready("client", TEST_NAMESPACE, timeout=1), timeout=10), "a new pod is injected"
    checks = {c.check for c in diagnose(mesh)}
    assert not checks & {"gateway-certificate-wrong-name", "gateway-credential-missing"}

    gateway_terminating_tls(mesh, names, ca=False)  # the guide's external-istiod-dr: istiod checked by system roots
    assert until(lambda: not ext.connected_proxies(), timeout=10)


def test_a_gateway_certificate_for_another_name_is_refused_and_diagnosed(provision: Provision) -> None:
    from meshfed.diagnose import diagnose

    mesh, _ = provision()
    ext, b = external(mesh), mesh["cluster-b"]
    gateway_terminating_tls(mesh, ["external-istiod.mesh.invalid"], ca=True)
    assert until(lambda: not ext.connected_proxies(), timeout=10), "no proxy accepts the gateway's certificate"
    new_template(b, "client")
    refused = "x509: certificate is valid for external-istiod.mesh.invalid, not istiod.external-istiod.svc"
    assert until(lambda: refused in creation_failure(b, "client"), timeout=10), creation_failure(b, "client")
    [finding] = [c for c in diagnose(mesh) if c.check == "gateway-certificate-wrong-name"]
    assert "valid for external-istiod.mesh.invalid" in finding.evidence
    assert f"istiod.{manifests.EXTERNAL_ISTIOD}.svc" in finding.evidence
    assert all(r.ok for r in calls(b, service_url(only_in("cluster-a")))), "calls go on, on the last configuration"

    ext.istio_system_itself().delete("Secret", manifests.EXTERNAL_ISTIOD_CREDENTIAL, ISTIO_SYSTEM)
    assert [c.check for c in diagnose(mesh) if c.check.startswith("gateway-")] == ["gateway-credential-missing"]


def test_the_external_istiod_reading_the_config_cluster_as_the_reader_never_gets_ready(provision: Provision) -> None:
    """A config cluster installed without global.configCluster has no istiod account; istio-kubeconfig made for
    istioctl's default, the reader account, lets the external istiod list too little there: it never gets ready
    (host: "ingresses.networking.k8s.io is forbidden"), and the diagnosis names the account first."""
    from meshfed.diagnose import diagnose

    mesh, _ = provision()
    ext, a = external(mesh), mesh["cluster-a"]
    secret = ext.get("Secret", "istio-kubeconfig", ISTIO_SYSTEM) or {}
    kubeconfig = bundle_from_secret(secret)["config"]
    assert manifests.token_account(manifests.kubeconfig_token(kubeconfig)) == (manifests.EXTERNAL_ISTIOD, "istiod")
    reader = a.service_account_token("istio-reader-service-account", ISTIO_SYSTEM)
    patched = manifests.with_token(kubeconfig, reader).encode()
    ext.patch("Secret", "istio-kubeconfig", ISTIO_SYSTEM, {"data": {"config": base64.b64encode(patched).decode()}})
    for pod in ext.pods(ISTIO_SYSTEM, {"app": "istiod"}):
        ext.delete("Pod", pod.name, ISTIO_SYSTEM)
    assert until(lambda: bool(ext.pods(ISTIO_SYSTEM, {"app": "istiod"})), timeout=5)
    assert not ext.wait_ready("istiod", ISTIO_SYSTEM, timeout=2), "the reader cannot list what istiod watches"
    first = next(c for c in diagnose(mesh) if c.status == "error")
    assert first.check == "config-secret-wrong-account" and "istio-reader-service-account" in first.evidence
    assert "its istiod account exists" in first.evidence
    a.delete("ServiceAccount", "istiod", ISTIO_SYSTEM)  # as the remote profile without configCluster leaves it
    [finding] = [c for c in diagnose(mesh) if c.check == "config-secret-wrong-account"]
    assert "installed without global.configCluster" in finding.evidence


def test_a_service_account_token_says_whose_it_is() -> None:
    token = manifests.unsigned_token("istiod", "external-istiod")
    assert manifests.token_account(token) == ("external-istiod", "istiod")
    assert manifests.token_account("") is None and manifests.token_account("not.a-jwt.") is None
    config = manifests.kubeconfig("cluster-a", "https://10.0.0.1:6443", "old")
    assert manifests.kubeconfig_token(manifests.with_token(config, token)) == token
    assert manifests.kubeconfig_server(manifests.with_token(config, token)) == "https://10.0.0.1:6443"
