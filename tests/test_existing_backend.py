"""The existing backend against stand-in API servers (the user's contexts) and the fake istioctl/kubectl:
preflight sentences, its own namespace only, the revision the mesh injects with, and a clean teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.backends.base import BackendError, Forbidden
from meshfed.backends.existing import ControlPlane, ExistingBackend, Injection, choose_injection
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
    version: str = "1.30.3",  # or a whole image reference
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
                            "image": version if "/" in version else f"docker.io/istio/pilot:{version}",
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


def test_a_remote_injected_as_another_of_the_clusters_names_the_injection_path(
    servers: dict[str, KubeApiStandIn],
) -> None:
    """The config cluster's injectionPath reused for a remote: the remote's webhook names the config cluster, so
    the mesh calls both contexts by one name; that is the misconfiguration, not a naming choice."""
    _istiod(servers["east"], cluster_id="east")
    _send(
        servers["west"],
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system"}},
    )
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-sidecar-injector", "labels": {"istio.io/rev": "default"}},
        "webhooks": [
            {
                "name": "rev.namespace.sidecar-injector.istio.io",
                "clientConfig": {"url": "https://172.18.0.10:15017/inject/cluster/east/net/network1"},
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
            }
        ],
    }
    _send(servers["west"], "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", configuration)
    with pytest.raises(
        BackendError,
        match=r"context gke_acme_west 'east', the name of another of its clusters: its injection webhook names the "
        r"wrong cluster.*injectionPath=/inject/cluster/west/net/<its network>$",
    ):
        ExistingBackend(CONTEXTS).provision(_spec(Topology.PRIMARY_REMOTE), {})


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


def _plane(revisions: dict[str, str], tags: dict[str, str] | None = None) -> ControlPlane:
    return ControlPlane(revisions, namespace_exists=True, tags=tags or {})


def test_the_revision_to_inject_with_is_chosen_as_istioctl_reads_the_mesh() -> None:
    plain = {"east": _plane({"default": "1.30.3"}), "west": _plane({"default": "1.30.3"})}
    assert choose_injection(plain) == Injection("", "default")
    only = {"east": _plane({"1-30": "1.30.3"})}
    assert choose_injection(only) == Injection("1-30", "1-30")
    # In the middle of a canary upgrade: the default tag still points at the old revision.
    canary = {"east": _plane({"1-29": "1.29.2", "1-30": "1.30.3"}, {"default": "1-29", "prod": "1-30"})}
    assert choose_injection(canary) == Injection("", "1-29")
    assert choose_injection(canary, "prod") == Injection("prod", "1-30")
    assert choose_injection(canary, "1-30") == Injection("1-30", "1-30")
    assert choose_injection(canary, "default") == Injection("", "1-29")
    assert Injection("prod", "1-30").describe() == "revision 1-30 (tag prod), injected by istio.io/rev=prod"
    with pytest.raises(BackendError, match=r"^--revision 1-31: the mesh has no revision or tag of that name "):
        choose_injection(canary, "1-31")
    untagged = {"east": _plane({"1-29": "1.29.2", "1-30": "1.30.3"})}
    with pytest.raises(BackendError, match=r"several revisions \(1-29, 1-30\) and none is the default: .*--revision R"):
        choose_injection(untagged)


def _tag(server: KubeApiStandIn, tag: str, revision: str) -> None:
    webhook = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": f"istio-revision-tag-{tag}", "labels": {"istio.io/tag": tag, "istio.io/rev": revision}},
        "webhooks": [],
    }
    _send(server, "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", webhook)


def _mesh_config(server: KubeApiStandIn, name: str, trust_domain: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "istio-system"},
        "data": {"mesh": yaml.safe_dump({"trustDomain": trust_domain})},
    }
    _send(server, "/api/v1/namespaces/istio-system/configmaps", config)


def test_a_canary_mesh_is_certified_by_the_mesh_config_of_the_revision_in_use(
    servers: dict[str, KubeApiStandIn],
) -> None:
    """Two revisions and the default tag on the old one: the workloads join the old revision and live by its
    mesh config (``istio-1-29``), not the ConfigMap ``istio`` a revisioned install does not have."""
    from meshfed.diagnose import trust_domain

    for server in servers.values():
        _istiod(server, revision="1-29", version="1.29.2")
        _istiod(server, revision="1-30")
        _tag(server, "default", "1-29")
        _mesh_config(server, "istio-1-29", "corp.example")
        _mesh_config(server, "istio-1-30", "next.example")
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        labels = servers["east"].object(f"/api/v1/namespaces/{TEST_NAMESPACE}")["metadata"]["labels"]  # type: ignore[index]
        assert labels["istio-injection"] == "enabled"
        assert {mesh[name].revision for name in CONTEXTS} == {"1-29"}
        assert trust_domain(mesh["west"]) == "corp.example"
        assert mesh.environment["control plane"] == (
            "namespace istio-system, revision 1-29 (tag default), injected by istio-injection=enabled"
        )
        assert mesh.environment["east: trust domain"] == "corp.example (from the mesh config)"
        assert mesh.environment["east: root of trust"].startswith("no cacerts Secret: a managed or istiod's own CA")
    finally:
        mesh.teardown()


def _proxy_secret_dump(path: Path, spiffe_id: str) -> Path:
    """What ``istioctl proxy-config secret -o json`` prints for a proxy holding a workload certificate."""
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.certfactory import make, name, workload

    root = make(name("root"))
    leaf = workload(root, spiffe_id)

    def inline(cert: Any) -> dict[str, str]:
        return {"inlineBytes": base64.b64encode(cert.public_bytes(Encoding.PEM)).decode()}

    secrets = [
        {"name": "default", "secret": {"tlsCertificate": {"certificateChain": inline(leaf.cert)}}},
        {"name": "ROOTCA", "secret": {"validationContext": {"trustedCa": inline(root.cert)}}},
    ]
    path.write_text(json.dumps({"dynamicActiveSecrets": secrets}))
    return path


def test_a_secret_the_user_may_not_read_is_a_managed_ca_not_an_error(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from meshfed.diagnose import cacerts_forbidden, cacerts_roots, check_trust, trust_domain

    dump = _proxy_secret_dump(tmp_path / "secret.json", f"spiffe://mesh.acme.example/ns/{TEST_NAMESPACE}/sa/client")
    monkeypatch.setenv("MESHFED_FAKE_PROXY_SECRET", str(dump))
    for server in servers.values():
        _istiod(server)
        server.forbidden |= {
            "/api/v1/namespaces/istio-system/secrets/cacerts",
            "/api/v1/namespaces/istio-system/configmaps/istio",
        }
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        assert cacerts_roots(mesh) == {"east": None, "west": None}
        assert cacerts_forbidden(mesh) == ["east", "west"]
        trust = check_trust(mesh)
        assert (trust[0].check, trust[0].status) == ("cacerts-not-used", "warning")
        assert trust[0].evidence.startswith("the cacerts Secret is not readable by this user (403) in east, west: ")
        assert mesh.environment["west: root of trust"].startswith("cacerts Secret not readable by this user (403)")
        # No mesh config to read: the trust domain is what the proxies' certificates say.
        assert mesh.environment["west: trust domain"] == (
            "no mesh config here (a remote's is its primary's) or none readable: read from the proxies' certificates"
        )
        assert mesh["west"].wait_ready("client", TEST_NAMESPACE)
        assert trust_domain(mesh["west"]) == "mesh.acme.example"
    finally:
        mesh.teardown()
    with pytest.raises(
        Forbidden, match=r"east: GET /api/v1/namespaces/istio-system/secrets/cacerts was refused \(403\)"
    ):
        mesh["east"].get("Secret", "cacerts", "istio-system")


def test_doctor_as_a_user_who_may_read_no_secret_judges_remote_secrets_from_istiod(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No Secret readable at all: the remote secrets are judged from what each istiod loaded, and a check
    the user may not run is a warning saying so, never the end of meshfed doctor."""
    from meshfed.backends.base import RemoteClusterStatus
    from meshfed.diagnose import check_remote_secrets, diagnose

    for server in servers.values():
        _istiod(server)
        server.forbidden |= {
            "/api/v1/namespaces/istio-system/secrets",
            "/api/v1/namespaces/istio-system/secrets/cacerts",
        }
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        loaded = {"east": [RemoteClusterStatus("west", "istio-system/istio-remote-secret-west", "synced")], "west": []}
        for name, statuses in loaded.items():
            monkeypatch.setattr(mesh[name], "remote_clusters", lambda statuses=statuses: statuses)
        found = [(c.check, c.status, c.cluster) for c in check_remote_secrets(mesh)]
        assert found == [("remote-secret-missing", "error", "west")]
        assert "among the clusters istiod loaded" in check_remote_secrets(mesh)[0].evidence
        timed_out = [RemoteClusterStatus("east", "istio-system/istio-remote-secret-east", "timeout")]
        monkeypatch.setattr(mesh["west"], "remote_clusters", lambda: timed_out)
        found = [(c.check, c.status, c.cluster) for c in check_remote_secrets(mesh)]
        assert found == [("remote-secret-unreachable", "error", "west")]

        def refused() -> list[RemoteClusterStatus]:
            raise BackendError("east: istioctl remote-clusters: Error: unable to find any Istiod instances")

        monkeypatch.setattr(mesh["east"], "remote_clusters", refused)
        unknown = [c for c in check_remote_secrets(mesh) if c.cluster == "east"]
        assert [(c.check, c.status) for c in unknown] == [("remote-secrets-unreadable", "warning")]

        def forbidden(mesh: object) -> list[object]:
            raise Forbidden("west: GET /api/v1/nodes was refused (403): nodes is forbidden")

        monkeypatch.setattr("meshfed.diagnose.CHECKS", (forbidden, check_remote_secrets))
        checks = {(c.check, c.cluster): c for c in diagnose(mesh)}
        assert checks[("forbidden-not-permitted", "west")].status == "warning"
        assert "GET /api/v1/nodes was refused (403)" in checks[("forbidden-not-permitted", "west")].evidence
    finally:
        mesh.teardown()


def test_a_developers_build_needs_its_istioctl_named_or_on_path(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for server in servers.values():
        _istiod(server, version="1.31-dev")
    # The istioctl on PATH is a 1.30.3: it does not say which istioctl fits a 1.31 build.
    with pytest.raises(
        BackendError, match=r"^cannot tell the Istio release from istiod's image \(1.31-dev\): .*--istioctl PATH"
    ):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    not_istioctl = tmp_path / "istioctl"
    not_istioctl.write_text("#!/bin/sh\nexit 0\n")
    not_istioctl.chmod(0o755)
    with pytest.raises(BackendError, match=rf"^--istioctl {not_istioctl} is not an istioctl "):
        ExistingBackend(CONTEXTS, istioctl=not_istioctl).provision(_spec(), {})
    with pytest.raises(BackendError, match=rf"^--kubectl {not_istioctl} is not a kubectl "):
        ExistingBackend(CONTEXTS, kubectl=not_istioctl).provision(_spec(), {})
    monkeypatch.setenv("MESHFED_FAKE_ISTIO_VERSION", "1.31-dev")
    given = ExistingBackend(CONTEXTS, istioctl=FAKES / "istioctl").provision(_spec(), {})
    given.teardown()
    assert given["east"].istioctl == FAKES / "istioctl"
    assert given.environment["istioctl"] == f"{FAKES / 'istioctl'} (1.31-dev)"
    # An istioctl on PATH of the same release line serves when none is named.
    found = ExistingBackend(CONTEXTS).provision(_spec(), {})
    found.teardown()
    assert found["west"].istioctl == FAKES / "istioctl"


def test_a_namespace_of_meshfeds_name_it_did_not_create_is_never_touched(servers: dict[str, KubeApiStandIn]) -> None:
    from meshfed import manifests

    for server in servers.values():
        _istiod(server)
    theirs = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "meshfed-outside"}}
    _send(servers["west"], "/api/v1/namespaces", theirs)
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    try:
        with pytest.raises(BackendError, match=r"^west: namespace meshfed-outside already exists and meshfed did not"):
            mesh["west"].apply(manifests.namespace("meshfed-outside", manifests.MANAGED_BY))
        with pytest.raises(BackendError, match=r"^west: namespace meshfed-outside already exists"):
            mesh["west"].delete("Namespace", "meshfed-outside")
        mesh["east"].apply(manifests.namespace("meshfed-outside", manifests.MANAGED_BY))  # its own: fine
        assert mesh["east"].delete("Namespace", "meshfed-outside")
    finally:
        mesh.teardown()
    kept = servers["west"].object("/api/v1/namespaces/meshfed-outside")
    assert kept is not None and "app.kubernetes.io/managed-by" not in kept["metadata"]["labels"]


def test_a_mesh_that_does_not_inject_fails_every_case_with_the_cause_first(
    servers: dict[str, KubeApiStandIn], tmp_path: Path
) -> None:
    """A namespace label the mesh's webhooks do not answer to: the workloads run without sidecars, so no case
    has evidence of the mesh; each fails at once, "not injected" and the pods first, never a pass."""
    from tests.test_conformance_run import run_suite

    for server in servers.values():
        _istiod(server)
        server.injection = False
    contexts = [arg for name, context in CONTEXTS.items() for arg in ("--context", f"{name}={context}")]
    result = run_suite(tmp_path, "--backend", "existing", *contexts, "--profile", "core")
    assert result.returncode == 1, result.stdout[-3000:]
    report = yaml.safe_load((tmp_path / "conformance-report.yaml").read_text())
    (cause,) = report["brokenFromStart"]
    assert cause.startswith("not injected: east/client-") and "west/echo-" in cause
    assert {case["outcome"] for case in report["cases"]} == {"failed"} and len(report["cases"]) == 11
    assert all(
        case["message"].startswith("the mesh is broken from the start: not injected: ") for case in report["cases"]
    )
    for server in servers.values():
        assert server.object(f"/api/v1/namespaces/{TEST_NAMESPACE}") is None  # removed at the end


def test_two_kubeconfigs_naming_their_users_alike_are_refused(
    servers: dict[str, KubeApiStandIn], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``KUBECONFIG=a:b`` where both files call their user ``admin``: kubectl keeps a's, so b's context would
    reach b's API server with a's credentials. Refused before anything is read, the fix named."""
    files = []
    for name, server in servers.items():
        _istiod(server)
        config = yaml.safe_load(server.kubeconfig(CONTEXTS[name]))
        for user in config["users"]:
            user["name"] = "admin"
            user["user"] = {"token": f"token-of-{name}"}
        for context in config["contexts"]:
            context["context"]["user"] = "admin"
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        files.append(str(path))
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(files))
    with pytest.raises(
        BackendError,
        match=r"^the user 'admin' of context gke_acme_east is defined differently in .*"
        r"east.kubeconfig and .*west.kubeconfig: .*give each cluster's user its own name$",
    ):
        ExistingBackend(CONTEXTS).provision(_spec(), {})
    for server in servers.values():
        assert server.object(f"/api/v1/namespaces/{TEST_NAMESPACE}") is None


def test_a_user_who_may_not_list_deployments_is_told_what_to_grant(servers: dict[str, KubeApiStandIn]) -> None:
    for server in servers.values():
        _istiod(server)
    servers["west"].forbidden.add("/apis/apps/v1/namespaces/istio-system/deployments")
    with pytest.raises(
        BackendError,
        match=r"^west: the user of context gke_acme_west may not read what meshfed needs to see the mesh .*: grant it "
        r"get and list on namespaces, deployments, configmaps and mutatingwebhookconfigurations$",
    ):
        ExistingBackend(CONTEXTS).provision(_spec(), {})


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_run_stopped_by_a_signal_removes_what_it_created(
    servers: dict[str, KubeApiStandIn], tmp_path: Path, signum: int
) -> None:
    """A CI job cancelled (SIGTERM) or a user's Ctrl-C (SIGINT) while the cases run: meshfed's namespaces
    go, nothing else is touched."""
    from tests.test_conformance_run import ROOT

    for server in servers.values():
        _istiod(server)
    contexts = [arg for name, context in CONTEXTS.items() for arg in ("--context", f"{name}={context}")]
    command = [sys.executable, "-m", "pytest", "conformance/test_core.py", "-q", "-p", "no:cacheprovider"]
    command += ["--backend", "existing", *contexts, "--report-dir", str(tmp_path)]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        namespace = f"/api/v1/namespaces/{TEST_NAMESPACE}"
        while not all(server.object(namespace) for server in servers.values()):
            assert run.poll() is None and time.monotonic() < deadline, "the run ended before it deployed anything"
            time.sleep(0.05)
        time.sleep(1.0)  # into the cases
        run.send_signal(signum)
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0, output[-2000:]
    for server in servers.values():
        left = [
            ns["metadata"]["name"]
            for ns in server.objects("Namespace")
            if ns["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by")
        ]
        assert left == [], output[-2000:]
        assert server.objects("Deployment", "istio-system")  # istiod untouched


def test_doctor_shows_what_istioctl_analyze_says_in_its_own_words(
    servers: dict[str, KubeApiStandIn],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from meshfed.cli import main

    messages = [
        {
            "code": "IST0170",
            "documentationUrl": "https://istio.io/latest/docs/reference/config/analysis/ist0170/?ref=istioctl",
            "level": "Error",
            "message": "The Service istio-eastwestgateway has inconsistent ports across clusters",
            "origin": "Service istio-system/istio-eastwestgateway",
            "reference": "",
        }
    ]
    (tmp_path / "analyze.json").write_text(json.dumps(messages))
    monkeypatch.setenv("MESHFED_FAKE_ANALYZE", str(tmp_path / "analyze.json"))
    for server in servers.values():
        _istiod(server, revision="1-30")
        server.requests.clear()
    contexts = [arg for name, context in CONTEXTS.items() for arg in ("--context", f"{name}={context}")]
    main(["doctor", "--backend", "existing", *contexts, "-o", "json"])
    checks = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["check"].startswith("istioctl-")]
    assert [(c["check"], c["status"], c["cluster"]) for c in checks] == [
        ("istioctl-IST0170", "warning", "east"),
        ("istioctl-IST0170", "warning", "west"),
    ]
    assert checks[0]["evidence"] == (
        "Error [IST0170] (Service istio-system/istio-eastwestgateway) The Service istio-eastwestgateway has "
        "inconsistent ports across clusters"
    )
    calls = [json.loads(line) for line in Path(os.environ["MESHFED_FAKE_LOG"]).read_text().splitlines()]
    analyze = [c["argv"] for c in calls if c["tool"] == "istioctl" and "analyze" in c["argv"]]
    assert analyze and all("--revision" in argv and "1-30" in argv for argv in analyze)
    for server in servers.values():
        assert not _writes(server)  # read-only
    # A user who may not list Secrets: istioctl analyze (which reads the remote secrets) is refused, said so.
    servers["west"].forbidden.add("/api/v1/namespaces/istio-system/secrets")
    main(["doctor", "--backend", "existing", *contexts, "-o", "json"])
    checks = [c for c in json.loads(capsys.readouterr().out)["checks"] if c["check"].startswith("istioctl-")]
    assert [(c["check"], c["cluster"]) for c in checks] == [
        ("istioctl-IST0170", "east"),
        ("istioctl-analyze-not-permitted", "west"),
    ]
    assert checks[1]["evidence"].startswith("istioctl analyze needs more than this user may read: ")
    assert "/api/v1/namespaces/istio-system/secrets" in checks[1]["evidence"]


def test_an_image_pinned_by_digest_alone_is_versioned_by_what_istiod_reports(
    servers: dict[str, KubeApiStandIn], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHFED_FAKE_ISTIO_VERSION", "1.30.3")
    for server in servers.values():
        _istiod(server, version="registry.acme.example/istio/pilot@sha256:" + "0" * 64)
    mesh = ExistingBackend(CONTEXTS).provision(_spec(), {})
    mesh.teardown()
    assert mesh.istio_version == "1.30.3"
    calls = [json.loads(line) for line in Path(os.environ["MESHFED_FAKE_LOG"]).read_text().splitlines()]
    assert any(c["tool"] == "kubectl" and c["argv"][-3:] == ["pilot-discovery", "version", "-s"] for c in calls)
