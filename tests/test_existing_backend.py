"""The existing backend against stand-in API servers (the user's contexts) and the fake istioctl/kubectl:
preflight sentences, its own namespace only, the revision the mesh injects with, and a clean teardown."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.backends.base import BackendError
from meshfed.backends.existing import ExistingBackend
from meshfed.manifests import TEST_NAMESPACE, image_version
from meshfed.topology import MeshSpec, Topology
from tests.kube_standin import KubeApiStandIn

FAKES = Path(__file__).resolve().parent / "fakes" / "bin"
CONTEXTS = {"east": "gke_acme_east", "west": "gke_acme_west"}


def _send(server: KubeApiStandIn, path: str, obj: dict[str, Any]) -> None:
    code, answer = server.handle("POST", path, "application/json", json.dumps(obj).encode())
    assert code == 201, answer


def _istiod(
    server: KubeApiStandIn,
    namespace: str = "istio-system",
    revision: str = "",
    version: str = "1.30.3",
    cluster_id: str = "",
) -> None:
    if server.object(f"/api/v1/namespaces/{namespace}") is None:
        _send(server, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    labels = {"app": "istiod", "istio.io/rev": revision or "default"}
    name = f"istiod-{revision}" if revision else "istiod"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "discovery",
                            "image": f"docker.io/istio/pilot:{version}",
                            "env": [{"name": "CLUSTER_ID", "value": cluster_id}] if cluster_id else [],
                        }
                    ]
                },
            },
        },
    }
    _send(server, f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)


@pytest.fixture
def servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, KubeApiStandIn]]:
    started = {name: KubeApiStandIn(name, injection=True).start() for name in CONTEXTS}
    merged: dict[str, Any] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []}
    for name, server in started.items():
        config = yaml.safe_load(server.kubeconfig(CONTEXTS[name]))
        for key in ("clusters", "contexts", "users"):
            merged[key] += config[key]
    merged["current-context"] = CONTEXTS["east"]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(merged))
    for key in [k for k in os.environ if k.startswith("MESHFED_FAKE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MESHFED_FAKE_PYTHON", sys.executable)
    monkeypatch.setenv("MESHFED_FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("MESHFED_FAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MESHFED_CACHE", str(tmp_path / "cache"))
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


def _spec(topology: Topology = Topology.MULTI_PRIMARY) -> MeshSpec:
    spec = MeshSpec.default(topology, 2)
    clusters = tuple(replace(c, name=n) for c, n in zip(spec.clusters, CONTEXTS, strict=True))
    return replace(spec, clusters=clusters)


def _writes(server: KubeApiStandIn) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _ in server.requests if m in ("POST", "PUT", "PATCH", "DELETE")]


def test_it_deploys_only_its_own_namespace_and_removes_it(servers: dict[str, KubeApiStandIn]) -> None:
    for server in servers.values():
        _istiod(server)
        server.requests.clear()
    progress: list[str] = []
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {}, progress.append)
    assert mesh.istio_version == "1.30.3"
    assert any("east: context gke_acme_east, Kubernetes v1.34.0, istiod: default 1.30.3" in p for p in progress)
    for server in servers.values():
        writes = _writes(server)
        assert writes and all(f"/namespaces/{TEST_NAMESPACE}" in path for _, path in writes), writes
        namespace = server.object(f"/api/v1/namespaces/{TEST_NAMESPACE}")
        assert namespace is not None
        assert namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    pods = mesh["west"].pods(TEST_NAMESPACE)
    assert pods and all(p.has_sidecar for p in pods)
    before = {name: server.objects("Deployment", "istio-system") for name, server in servers.items()}
    mesh.teardown()
    for name, server in servers.items():
        assert server.object(f"/api/v1/namespaces/{TEST_NAMESPACE}") is None
        assert server.objects("Deployment", "istio-system") == before[name]
    with pytest.raises(BackendError, match="does not install Istio on clusters it did not create"):
        mesh["east"].apply(
            {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "metadata": {"name": "x"}}
        )


def test_a_revisioned_mesh_gets_a_revision_label(servers: dict[str, KubeApiStandIn]) -> None:
    for server in servers.values():
        _istiod(server, revision="1-30")
    ExistingBackend(CONTEXTS).provision(_spec(), {})
    labels = servers["east"].object(f"/api/v1/namespaces/{TEST_NAMESPACE}")["metadata"]["labels"]  # type: ignore[index]
    assert labels["istio.io/rev"] == "1-30" and "istio-injection" not in labels


def test_a_managed_control_plane_namespace_is_used(servers: dict[str, KubeApiStandIn]) -> None:
    for server in servers.values():
        _istiod(server, namespace="aks-istio-system")
    with pytest.raises(BackendError, match=r"east: no namespace istio-system, so no Istio: .* --istio-namespace"):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    mesh = ExistingBackend(CONTEXTS, control_plane_namespace="aks-istio-system").provision(_spec(), {})
    # In the contract, istio-system means the control plane's namespace, as a namespace and as a Namespace.
    assert mesh["east"].get("Deployment", "istiod", "istio-system") is not None
    assert mesh["east"].get("Namespace", "istio-system")["metadata"]["name"] == "aks-istio-system"  # type: ignore[index]


def test_a_remote_cluster_under_multi_primary_is_one_sentence(servers: dict[str, KubeApiStandIn]) -> None:
    _istiod(servers["east"])
    _send(
        servers["west"],
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
    )
    with pytest.raises(BackendError, match=r"^west run no istiod in istio-system, so the mesh looks primary-remote"):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    mesh = ExistingBackend(CONTEXTS).provision(_spec(Topology.PRIMARY_REMOTE), {})
    assert set(mesh.clusters) == {"east", "west"}


def test_a_primary_must_be_named_by_its_istiods_cluster_id(servers: dict[str, KubeApiStandIn]) -> None:
    _istiod(servers["east"], cluster_id="east")
    _istiod(servers["west"], cluster_id="cluster2")
    with pytest.raises(
        BackendError,
        match=r"^the mesh calls the cluster of context gke_acme_west 'cluster2', not 'west': "
        r"name it as Istio does, --context cluster2=gke_acme_west$",
    ):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    assert servers["west"].object(f"/api/v1/namespaces/{TEST_NAMESPACE}") is None  # refused before any write


@pytest.mark.parametrize("source", ["injection webhook", "injector ConfigMap"])
def test_a_remote_must_be_named_as_its_injector_names_it(servers: dict[str, KubeApiStandIn], source: str) -> None:
    """A remote runs no istiod: its name is in its injection webhook's path (the remote profile's
    ``/inject/cluster/<name>/net/<network>``) or, where kept, the injector ConfigMap's
    ``global.multiCluster.clusterName``: what the primary's remote secret and the remote's proxies call it."""
    _istiod(servers["east"], cluster_id="east")
    _send(
        servers["west"],
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
    )
    if source == "injection webhook":
        webhook = {
            "name": "rev.namespace.sidecar-injector.istio.io",
            "clientConfig": {"url": "https://172.18.0.10:15017/inject/cluster/remote-1/net/network2"},
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
        }
        configuration = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "istio-sidecar-injector", "labels": {"istio.io/rev": "default"}},
            "webhooks": [webhook],
        }
        _send(servers["west"], "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", configuration)
    else:
        values = {"global": {"multiCluster": {"clusterName": "remote-1"}, "network": "network2"}, "revision": ""}
        injector = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system"},
            "data": {"values": json.dumps(values), "config": "policy: enabled"},
        }
        _send(servers["west"], "/api/v1/namespaces/istio-system/configmaps", injector)
    with pytest.raises(
        BackendError, match=r"context gke_acme_west 'remote-1', not 'west'.*--context remote-1=gke_acme_west"
    ):
        ExistingBackend(CONTEXTS).provision(_spec(Topology.PRIMARY_REMOTE), {})
    spec = _spec(Topology.PRIMARY_REMOTE)
    spec = replace(spec, clusters=(spec.clusters[0], replace(spec.clusters[1], name="remote-1")))
    mesh = ExistingBackend({"east": CONTEXTS["east"], "remote-1": CONTEXTS["west"]}).provision(spec, {})
    assert list(mesh.clusters) == ["east", "remote-1"]
    mesh.teardown()


def test_an_unknown_context_names_the_fix(servers: dict[str, KubeApiStandIn]) -> None:
    with pytest.raises(BackendError, match=r"east: cannot use context 'nope' .*kubectl config get-contexts"):
        ExistingBackend({"east": "nope", "west": CONTEXTS["west"]}).provision(_spec(), {})


def test_an_unreachable_api_server_names_the_fix(servers: dict[str, KubeApiStandIn]) -> None:
    servers["west"].stop()
    _istiod(servers["east"])
    with pytest.raises(BackendError, match=r"west: the API server at http://127.0.0.1:\d+ does not answer .*: check"):
        ExistingBackend(CONTEXTS).provision(_spec(), {})


def test_a_namespace_meshfed_did_not_create_is_left_alone(servers: dict[str, KubeApiStandIn]) -> None:
    for server in servers.values():
        _istiod(server)
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TEST_NAMESPACE}}
    _send(servers["west"], "/api/v1/namespaces", ns)
    with pytest.raises(BackendError, match=r"west: namespace meshfed already exists and meshfed did not create it"):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    assert servers["west"].object(f"/api/v1/namespaces/{TEST_NAMESPACE}") is not None


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("docker.io/istio/pilot:1.30.3", "1.30.3"),
        ("gcr.io/gke-release/asm/pilot:1.30.3-asm.2@sha256:" + "0" * 64, "1.30.3-asm.2"),
        ("localhost:5000/pilot", "unknown"),
    ],
)
def test_the_version_comes_from_istiods_image(image: str, version: str) -> None:
    assert image_version(image) == version


def test_doctor_reads_an_existing_mesh_without_changing_it(
    servers: dict[str, KubeApiStandIn], capsys: pytest.CaptureFixture[str]
) -> None:
    from meshfed.cli import main

    for server in servers.values():
        _istiod(server)
        server.requests.clear()
    contexts = [arg for name, context in CONTEXTS.items() for arg in ("--context", f"{name}={context}")]
    assert main(["doctor", "--backend", "existing", *contexts, "-o", "json"]) == 1
    checks = {(c["check"], c["cluster"]) for c in json.loads(capsys.readouterr().out)["checks"]}
    # The stand-ins run istiod and nothing else: no network label, no gateway, no remote secrets.
    assert {("network-label-missing", "east"), ("remote-secret-missing", "west")} <= checks
    assert ("cacerts-not-used", "east, west") in checks  # a managed CA is not an error
    for server in servers.values():
        assert not _writes(server)

    assert main(["doctor", "--backend", "existing", "--context", "east=nope", "--context", "west=nope"]) == 2
    assert "east: cannot use context 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("istiod", "check", "status"),
    [("1.29.2", "data-plane-ahead", "error"), ("1.32.0", "data-plane-too-old", "warning"), ("1.31.1", None, None)],
)
def test_the_diagnosis_holds_proxies_to_istios_skew_policy(
    servers: dict[str, KubeApiStandIn],
    monkeypatch: pytest.MonkeyPatch,
    istiod: str,
    check: str | None,
    status: str | None,
) -> None:
    """The stand-ins' injector gives 1.30.3 proxies: ahead of a 1.29 istiod, two minors behind a 1.32 one,
    and within policy one minor behind a 1.31 one."""
    from meshfed.diagnose import check_version_skew

    monkeypatch.setenv("MESHFED_FAKE_ISTIO_VERSION", istiod)
    for server in servers.values():
        _istiod(server, version=istiod)
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        found = check_version_skew(mesh)
    finally:
        mesh.teardown()
    if check is None:
        assert found == []
        return
    assert {(c.check, c.status, c.cluster) for c in found} == {(check, status, "east"), (check, status, "west")}
    client = next(c for c in found if c.cluster == "east" and "/client-" in c.evidence)
    assert f"runs proxy 1.30.3 against istiod {istiod} (revision default)" in client.evidence


def test_the_diagnosis_names_a_proxy_that_istioctl_proxy_status_does_not_list(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshfed.diagnose import check_proxy_connections

    for server in servers.values():
        _istiod(server)
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        mesh.convergence_deadline = 0.5
        assert check_proxy_connections(mesh) == []
        echo = mesh["west"].pod_of(TEST_NAMESPACE, "echo").name
        monkeypatch.setenv("MESHFED_FAKE_PROXY_STATUS_MISSING", f"{echo}.")
        found = check_proxy_connections(mesh)
        monkeypatch.setenv("MESHFED_FAKE_FAIL", "proxy-status")
        unknown = check_proxy_connections(mesh)
    finally:
        mesh.teardown()
    # When istioctl cannot tell, the proxies are not called disconnected: a warning says it is unknown.
    assert {(c.check, c.status) for c in unknown} == {("proxy-status-unreadable", "warning")}
    assert "context deadline exceeded" in unknown[0].evidence and not unknown[0].evidence.startswith("east")
    assert [(c.check, c.status, c.cluster) for c in found] == [("proxy-disconnected", "error", "west")]
    assert found[0].evidence.startswith(f"{TEST_NAMESPACE}/{echo} is ready but connected to no istiod")
    calls = [json.loads(line) for line in Path(os.environ["MESHFED_FAKE_LOG"]).read_text().splitlines()]
    assert any(c["tool"] == "istioctl" and "proxy-status" in c["argv"] for c in calls)


def test_a_revision_tag_is_judged_by_the_revision_it_stands_for(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshfed.diagnose import check_version_skew

    monkeypatch.setenv("MESHFED_FAKE_ISTIO_VERSION", "1.29.2")
    for server in servers.values():
        _istiod(server, version="1.29.2")
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        echo = mesh["east"].pod_of(TEST_NAMESPACE, "echo").name
        tagged = {"metadata": {"annotations": {"istio.io/rev": "prod-stable"}}}
        mesh["east"].patch("Pod", echo, TEST_NAMESPACE, tagged)
        assert not any(echo in c.evidence for c in check_version_skew(mesh)), "an unknown tag is not judged"
        tag = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {
                "name": "istio-revision-tag-prod-stable",
                "labels": {"istio.io/tag": "prod-stable", "istio.io/rev": "default"},
            },
            "webhooks": [],
        }
        _send(servers["east"], "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", tag)
        found = [c for c in check_version_skew(mesh) if echo in c.evidence]
    finally:
        mesh.teardown()
    assert [c.check for c in found] == ["data-plane-ahead"]
    assert "against istiod 1.29.2 (revision prod-stable)" in found[0].evidence


@pytest.mark.parametrize("source", ["namespace label", "install values", "east-west gateway", "none"])
def test_a_clusters_network_is_read_as_istiod_reads_it(servers: dict[str, KubeApiStandIn], source: str) -> None:
    """istio-system's label; else ``values.global.network`` (the injector labels every pod with it, and istiod
    reads a pod's label first); else the east-west gateway Service's label. meshfed's default only when the
    mesh names no network at all."""
    for server in servers.values():
        _istiod(server)
    west = servers["west"]
    if source == "namespace label":
        code, answer = west.handle(
            "PATCH",
            "/api/v1/namespaces/istio-system",
            "application/merge-patch+json",
            json.dumps({"metadata": {"labels": {"topology.istio.io/network": "net-west"}}}).encode(),
        )
        assert code == 200, answer
    elif source == "install values":
        values = {"global": {"network": "net-west"}, "revision": ""}
        injector = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio-sidecar-injector", "namespace": "istio-system"},
            "data": {"values": json.dumps(values), "config": "policy: enabled"},
        }
        _send(west, "/api/v1/namespaces/istio-system/configmaps", injector)
    elif source == "east-west gateway":
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "istio-eastwestgateway",
                "namespace": "istio-system",
                "labels": {"istio": "eastwestgateway", "topology.istio.io/network": "net-west"},
            },
            "spec": {"ports": [{"name": "tls", "port": 15443}], "selector": {"istio": "eastwestgateway"}},
        }
        _send(west, "/api/v1/namespaces/istio-system/services", service)
    mesh = ExistingBackend(CONTEXTS).connect(_spec())
    expected = "net-west" if source != "none" else _spec().clusters[1].network
    assert mesh.spec.cluster("west").network == expected
