"""The stand-in API server answers the official kubernetes client as a kind cluster would."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.kube_standin import KubeApiStandIn

NS = "meshfed"
RESTART = "kubectl.kubernetes.io/restartedAt"


@pytest.fixture
def standin() -> Iterator[KubeApiStandIn]:
    with KubeApiStandIn("east", lb_pool=["172.18.255.200", "172.18.255.201"], injection=True) as server:
        yield server


@pytest.fixture
def api(standin: KubeApiStandIn) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config_dict(yaml.safe_load(standin.kubeconfig()))
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": NS}})
    yield api_client
    api_client.close()


def apply(api: client.ApiClient, path: str, manifest: str) -> tuple[int, dict[str, Any]]:
    """Server-side apply of a YAML manifest, as ``kubectl apply --server-side`` sends it."""
    url = f"{api.configuration.host}{path}?fieldManager=meshfed&force=true"
    response = api.call_api("PATCH", url, header_params={"Content-Type": "application/apply-patch+yaml"}, body=manifest)
    response.read()
    assert response.status in (200, 201), response.data
    return response.status, json.loads(response.data)


def deployment(name: str, replicas: int = 2) -> dict[str, Any]:
    labels = {"app": name}
    template = {
        "metadata": {"labels": labels},
        "spec": {"serviceAccountName": name, "containers": [{"name": name, "image": "busybox"}]},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "template": template},
    }


def pods_of(core: client.CoreV1Api, app: str) -> list[client.V1Pod]:
    return list(core.list_namespaced_pod(NS, label_selector=f"app={app}").items)


def test_version_kubeconfig_and_what_kind_creates(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    assert yaml.safe_load(standin.kubeconfig())["current-context"] == "kind-east"
    assert yaml.safe_load(standin.kubeconfig("east"))["contexts"][0]["name"] == "east"
    assert client.VersionApi(api).get_code().git_version == "v1.34.0"
    core = client.CoreV1Api(api)
    names = {ns.metadata.name: ns.status.phase for ns in core.list_namespace().items}
    assert names == {"default": "Active", "kube-system": "Active", "kube-public": "Active", NS: "Active"}
    (node,) = core.list_node().items
    assert node.metadata.name == "east-control-plane"
    assert (node.status.addresses[0].type, node.status.addresses[0].address) == ("InternalIP", "172.18.0.2")


def test_create_get_list_with_selectors(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, tier in (("a", "front"), ("b", "back"), ("c", None)):
        labels = {"app": name} | ({"tier": tier} if tier else {})
        created = core.create_namespaced_config_map(
            NS, {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
        )
        assert created.metadata.uid and created.metadata.namespace == NS and created.metadata.resource_version
    assert core.read_namespaced_config_map("b", NS).data == {"k": "b"}

    def names(**selectors: str) -> list[str]:
        return sorted(cm.metadata.name for cm in core.list_namespaced_config_map(NS, **selectors).items)

    assert names() == ["a", "b", "c"]
    assert names(label_selector="tier=front") == ["a"]
    assert names(label_selector="tier!=front") == ["b", "c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(label_selector="tier,app!=a") == ["b"]
    assert names(label_selector="tier in (front,back),!missing") == ["a", "b"]
    assert names(field_selector="metadata.name=c") == ["c"]
    listed = core.list_config_map_for_all_namespaces(label_selector="app=a")
    assert [cm.metadata.name for cm in listed.items] == ["a"] and listed.kind == "ConfigMapList"
    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "AlreadyExists"


def test_missing_objects_are_404_statuses(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret("cacerts", "istio-system")
    assert missing.value.status == 404
    status = json.loads(missing.value.body)
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "cacerts" not found',
        "reason": "NotFound",
        "details": {"name": "cacerts", "group": "", "kind": "secrets"},
        "code": 404,
    }
    with pytest.raises(ApiException) as no_namespace:
        core.create_namespaced_secret("istio-system", {"metadata": {"name": "cacerts"}})
    assert no_namespace.value.status == 404
    assert json.loads(no_namespace.value.body)["message"] == 'namespaces "istio-system" not found'
    with pytest.raises(ApiException) as gone:
        client.AppsV1Api(api).delete_namespaced_deployment("nothing", NS)
    assert gone.value.status == 404 and json.loads(gone.value.body)["message"] == 'deployments.apps "nothing" not found'


def test_apply_patches_and_delete(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    path = f"/api/v1/namespaces/{NS}/secrets/cacerts"
    manifest = "kind: Secret\napiVersion: v1\nmetadata: {name: cacerts, labels: {a: '1'}}\ndata: {ca-cert.pem: Zm9v}\n"
    code, created = apply(api, path, manifest)
    assert code == 201 and created["metadata"]["generation"] == 1 and created["metadata"]["namespace"] == NS
    again = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "labels": {"b": "2"}}}
    code, updated = apply(api, path, json.dumps(again))
    assert code == 200 and updated["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert updated["data"] == {"ca-cert.pem": "Zm9v"}
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])

    patched = core.patch_namespaced_secret(
        "cacerts", NS, {"metadata": {"labels": {"a": None}}}, _content_type="application/merge-patch+json"
    )
    assert patched.metadata.labels == {"b": "2"}
    ops = [{"op": "add", "path": "/metadata/labels/c", "value": "3"}, {"op": "remove", "path": "/metadata/labels/b"}]
    assert core.patch_namespaced_secret("cacerts", NS, ops).metadata.labels == {"c": "3"}
    stored = standin.object(path)
    assert stored is not None and stored["metadata"]["labels"] == {"c": "3"}
    assert [obj["metadata"]["name"] for obj in standin.objects("Secret", NS)] == ["cacerts"]

    assert core.delete_namespaced_secret("cacerts", NS)["status"] == "Success"
    assert standin.object(path) is None
    with pytest.raises(ApiException) as missing:
        core.patch_namespaced_secret("cacerts", NS, {"data": {}})
    assert missing.value.status == 404
    with pytest.raises(ApiException) as kindless:
        core.patch_namespaced_secret("x", NS, {"metadata": {}}, _content_type="application/apply-patch+yaml")
    assert kindless.value.status == 400
    patches = [(path, ctype) for method, path, ctype in standin.requests if method == "PATCH"]
    assert [ctype for _, ctype in patches] == [
        "application/apply-patch+yaml",
        "application/apply-patch+yaml",
        "application/merge-patch+json",
        "application/json-patch+json",  # the client's default, kept for a list body
        "application/strategic-merge-patch+json",  # ... and swapped for this one for a dict body
        "application/apply-patch+yaml",  # _content_type chooses; the body goes as JSON
    ]
    assert patches[0][0] == f"{path}?fieldManager=meshfed&force=true"


def test_custom_objects_and_namespace_deletion(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    custom = client.CustomObjectsApi(api)
    gateway = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "cross-network-gateway"},
        "spec": {"selector": {"istio": "eastwestgateway"}},
    }
    custom.create_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways", gateway)
    listed = custom.list_namespaced_custom_object("networking.istio.io", "v1", NS, "gateways")
    assert listed["kind"] == "GatewayList" and listed["apiVersion"] == "networking.istio.io/v1"
    patch = {"spec": {"servers": [{"port": {"number": 15443}}]}}
    patched = custom.patch_namespaced_custom_object(
        "networking.istio.io", "v1", NS, "gateways", "cross-network-gateway", patch
    )
    assert patched["metadata"]["generation"] == 2 and patched["spec"]["selector"] == {"istio": "eastwestgateway"}

    client.CoreV1Api(api).delete_namespace(NS)
    assert standin.objects("Gateway") == [] and standin.object(f"/api/v1/namespaces/{NS}") is None


def test_deployment_pods_restart_and_scale(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    created = apps.patch_namespaced_deployment(
        "server",
        NS,
        deployment("server"),
        field_manager="meshfed",
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    assert created.metadata.generation == 1 and created.spec.replicas == 2
    pods = pods_of(core, "server")
    assert len(pods) == 2 and len({p.status.pod_ip for p in pods}) == 2
    template_hash = pods[0].metadata.labels["pod-template-hash"]
    for pod in pods:
        assert pod.metadata.name.startswith(f"server-{template_hash}-") and len(pod.metadata.name.split("-")[-1]) == 5
        assert pod.spec.service_account_name == "server" and pod.status.phase == "Running"
        assert [(c.type, c.status) for c in pod.status.conditions if c.type == "Ready"] == [("Ready", "True")]
    status = apps.read_namespaced_deployment_status("server", NS).status
    assert status.observed_generation == 1
    assert (status.replicas, status.updated_replicas, status.ready_replicas, status.available_replicas) == (2, 2, 2, 2)

    restart = {"spec": {"template": {"metadata": {"annotations": {RESTART: "2026-01-01T00:00:00Z"}}}}}
    assert apps.patch_namespaced_deployment("server", NS, restart).metadata.generation == 2
    restarted = pods_of(core, "server")
    assert len(restarted) == 2 and not {p.metadata.name for p in pods} & {p.metadata.name for p in restarted}
    assert {p.metadata.labels["pod-template-hash"] for p in restarted} != {template_hash}
    assert all(p.metadata.annotations[RESTART] == "2026-01-01T00:00:00Z" for p in restarted)

    assert apps.patch_namespaced_deployment_scale("server", NS, {"spec": {"replicas": 3}}).spec.replicas == 3
    assert apps.read_namespaced_deployment_scale("server", NS).status.replicas == 3
    assert len(pods_of(core, "server")) == 3
    apps.replace_namespaced_deployment_scale("server", NS, {"metadata": {"name": "server"}, "spec": {"replicas": 0}})
    assert pods_of(core, "server") == []
    status = apps.read_namespaced_deployment("server", NS).status
    assert status.ready_replicas is None and status.replicas is None and status.observed_generation == 4

    apps.delete_namespaced_deployment("server", NS)
    assert standin.objects("ReplicaSet") == [] and standin.objects("Pod") == []


def test_sidecar_injection(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    apps.create_namespaced_deployment(NS, deployment("plain", replicas=1))
    assert [c.name for c in pods_of(core, "plain")[0].spec.containers] == ["plain"]
    core.patch_namespace(NS, {"metadata": {"labels": {"istio-injection": "enabled"}}})
    apps.create_namespaced_deployment(NS, deployment("client", replicas=1))
    (pod,) = pods_of(core, "client")
    assert [c.name for c in pod.spec.containers] == ["client", "istio-proxy"]
    assert [c.name for c in pod.spec.init_containers] == ["istio-init"]
    assert pod.spec.containers[1].image.startswith("docker.io/istio/proxyv2:")
    labels = pod.metadata.labels
    assert labels["security.istio.io/tlsMode"] == "istio" and labels["service.istio.io/canonical-name"] == "client"
    assert pod.metadata.annotations["istio.io/rev"] == "default" and "istio.io/rev" not in labels
    assert json.loads(pod.metadata.annotations["sidecar.istio.io/status"])["revision"] == "default"
    assert [s.name for s in pod.status.container_statuses] == ["client", "istio-proxy"]

    core.create_namespace({"metadata": {"name": "canary", "labels": {"istio.io/rev": "1-30"}}})
    opt_out = {
        "metadata": {"name": "opt-out", "labels": {"sidecar.istio.io/inject": "false"}},
        "spec": {"containers": [{"name": "a", "image": "x"}]},
    }
    assert [c.name for c in core.create_namespaced_pod("canary", opt_out).spec.containers] == ["a"]
    pod = core.create_namespaced_pod(
        "canary",
        {"metadata": {"name": "p", "labels": {"app": "p"}}, "spec": {"containers": [{"name": "a", "image": "x"}]}},
    )
    assert pod.metadata.annotations["istio.io/rev"] == "1-30"
    deleted = core.delete_namespaced_pod("p", "canary")
    assert deleted.metadata.name == "p"


def test_load_balancer_addresses(standin: KubeApiStandIn, api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)

    def service(name: str, kind: str = "LoadBalancer") -> dict[str, Any]:
        return {"metadata": {"name": name}, "spec": {"type": kind, "ports": [{"port": 15443}]}}

    assert core.create_namespaced_service(NS, service("internal", "ClusterIP")).spec.cluster_ip.startswith("10.96.")
    created = core.create_namespaced_service(NS, service("eastwest"))
    assert created.status.load_balancer.ingress is None  # the controller runs after the write, as MetalLB's does
    ips = [core.read_namespaced_service(name, NS).status.load_balancer for name in ("internal", "eastwest")]
    assert ips[0].ingress is None and [(i.ip, i.ip_mode) for i in ips[1].ingress] == [("172.18.255.200", "VIP")]
    core.create_namespaced_service(NS, service("second"))
    core.create_namespaced_service(NS, service("third"))
    assert core.read_namespaced_service("second", NS).status.load_balancer.ingress[0].ip == "172.18.255.201"
    assert core.read_namespaced_service("third", NS).status.load_balancer.ingress is None  # the pool is exhausted
    core.delete_namespaced_service("eastwest", NS)
    core.patch_namespaced_service("third", NS, {"metadata": {"labels": {"retry": "1"}}})
    assert core.read_namespaced_service("third", NS).status.load_balancer.ingress[0].ip == "172.18.255.200"


def test_load_balancer_waits_for_a_pool_object() -> None:
    with KubeApiStandIn("west", lb_pool=["172.18.254.200"], lb_requires_pool_object=True) as standin:
        api = config.new_client_from_config_dict(yaml.safe_load(standin.kubeconfig()))
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        service = {"metadata": {"name": "eastwest"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 15443}]}}
        core.create_namespaced_service("default", service)
        assert core.read_namespaced_service("eastwest", "default").status.load_balancer.ingress is None
        core.create_namespace({"metadata": {"name": "metallb-system"}})
        pool = {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "kind"},
            "spec": {"addresses": ["172.18.254.200/32"]},
        }
        custom.create_namespaced_custom_object("metallb.io", "v1beta1", "metallb-system", "ipaddresspools", pool)
        (ingress,) = core.read_namespaced_service("eastwest", "default").status.load_balancer.ingress
        assert ingress.ip == "172.18.254.200"
        api.close()


def test_no_pool_leaves_load_balancers_pending_and_fail_next_answers_once() -> None:
    with KubeApiStandIn("solo") as standin:
        api = config.new_client_from_config_dict(yaml.safe_load(standin.kubeconfig()))
        core = client.CoreV1Api(api)
        core.create_namespaced_service(
            "default", {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
        )
        assert core.read_namespaced_service("lb", "default").status.load_balancer.ingress is None
        standin.fail_next["/api/v1/namespaces/default/services"] = (503, "ServiceUnavailable", "try later")
        with pytest.raises(ApiException) as unavailable:
            core.read_namespaced_service("lb", "default")
        assert unavailable.value.status == 503 and json.loads(unavailable.value.body)["message"] == "try later"
        assert core.read_namespaced_service("lb", "default").metadata.name == "lb"
        api.close()


def test_a_rollout_waits_for_a_pod_that_exited_but_is_not_yet_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen on real Kubernetes: a pod whose program exits cleanly on SIGTERM shows phase Succeeded, still
    deleting, for seconds after its Deployment reports the rollout complete; it is not gone yet."""
    from meshfed.backends.kube import KubeCluster

    deployment = {
        "metadata": {"name": "echo", "generation": 2},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "echo"}}},
        "status": {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
    }

    def pod(name: str, phase: str, deleting: bool) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": name, "namespace": NS, "labels": {"app": "echo"}}
        if deleting:
            metadata["deletionTimestamp"] = "2026-11-30T13:38:23Z"
        status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}
        return {"metadata": metadata, "spec": {"containers": [{"name": "echo"}]}, "status": status}

    pods = [pod("echo-new", "Running", False), pod("echo-old", "Succeeded", True)]
    cluster = object.__new__(KubeCluster)
    cluster.poll = 0.01
    monkeypatch.setattr(cluster, "get", lambda kind, name, namespace=None: deployment)
    monkeypatch.setattr(cluster, "list", lambda kind, namespace=None, labels=None: list(pods))
    assert not cluster.wait_ready("echo", NS, timeout=0.1)
    pods.pop()  # deleted at last
    assert cluster.wait_ready("echo", NS, timeout=0.1)
    pods.append(pod("echo-evicted", "Failed", False))  # an evicted pod stays, and is no replica
    assert cluster.wait_ready("echo", NS, timeout=0.1)
