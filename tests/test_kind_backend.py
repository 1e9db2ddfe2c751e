"""The kind backend, run against fake kind/docker/istioctl/kubectl (tests/fakes) and stand-in API servers.

What is checked is what a user's machine would see: the order and arguments of every tool call, the
objects sent to each API server, teardown after a failure, and reuse with --keep-clusters.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshfed.backends import tools
from meshfed.backends.base import BackendError
from meshfed.backends.kind import KindBackend, address_slices, ipv4_subnet, metallb_pool, pool_addresses
from meshfed.backends.kube import KubeApi, KubeCluster
from meshfed.backends.preflight import HostPaths
from meshfed.diagnose import diagnose
from meshfed.manifests import TEST_NAMESPACE
from meshfed.pki import create_mesh_pki
from meshfed.topology import MeshSpec, Topology
from tests.kube_standin import KubeApiStandIn

FAKES = Path(__file__).resolve().parent / "fakes" / "bin"
K8S_VERSION = "1.35"  # kind v0.31.0's node image
BUILTIN_GROUPS = ("v1", "apps/v1")

# A small stand-in for MetalLB's manifest: its namespace and the controller Deployment the backend waits for.
METALLB_MANIFEST = """\
apiVersion: v1
kind: Namespace
metadata:
  name: metallb-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: controller
  namespace: metallb-system
spec:
  selector:
    matchLabels: {app: metallb, component: controller}
  template:
    metadata:
      labels: {app: metallb, component: controller}
    spec:
      containers:
      - name: controller
        image: quay.io/metallb/controller:v0.15.3
"""


@dataclass
class World:
    tmp: Path
    servers: dict[str, KubeApiStandIn]
    sent: list[dict[str, Any]]
    addressed: dict[str, float]  # when each cluster's east-west gateway address was first seen

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        log = self.tmp / "calls.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return sorted((e for e in entries if tool in (None, e["tool"])), key=lambda e: e["time"])

    def reset_calls(self) -> None:
        (self.tmp / "calls.jsonl").unlink(missing_ok=True)

    def backend(self, **kwargs: Any) -> KindBackend:
        return KindBackend("1.30.3", host=HostPaths(self.tmp / "meminfo", self.tmp / "inotify"), **kwargs)


def _write_host(tmp: Path, instances: int = 512) -> None:
    (tmp / "meminfo").write_text("MemTotal: 33554432 kB\nMemAvailable: 25165824 kB\n")
    (tmp / "inotify").mkdir(exist_ok=True)
    (tmp / "inotify" / "max_user_watches").write_text("524288\n")
    (tmp / "inotify" / "max_user_instances").write_text(f"{instances}\n")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    servers = {
        name: KubeApiStandIn(name, lb_pool=[f"172.18.255.{10 + i}"], injection=True, lb_requires_pool_object=True)
        for i, name in enumerate(("meshfed-cluster-a", "meshfed-cluster-b"))
    }
    for server in servers.values():
        server.start()
    for key in [k for k in os.environ if k.startswith("MESHFED_FAKE_") or k == "KUBECONFIG"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PATH", f"{FAKES}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MESHFED_FAKE_PYTHON", sys.executable)
    monkeypatch.setenv("MESHFED_FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("MESHFED_FAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("MESHFED_FAKE_APISERVERS", json.dumps({n: s.url for n, s in servers.items()}))
    monkeypatch.setenv("MESHFED_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    manifest = tools.metallb_release().cache_path()
    manifest.parent.mkdir(parents=True)
    manifest.write_text(METALLB_MANIFEST)
    _write_host(tmp_path)
    sent: list[dict[str, Any]] = []
    original = KubeApi.request

    def recording(self: KubeApi, method: str, path: str, **kwargs: Any) -> Any:
        if kwargs.get("content_type") == "application/apply-patch+yaml":
            sent.append(kwargs["body"])
        return original(self, method, path, **kwargs)

    monkeypatch.setattr(KubeApi, "request", recording)
    addressed: dict[str, float] = {}
    wait_address = KindBackend._gateway_address

    def recording_address(self: KindBackend, cluster: Any, timeout: float = 300) -> str:
        address = wait_address(self, cluster, timeout)
        addressed.setdefault(cluster.name, time.time())
        return address

    monkeypatch.setattr(KindBackend, "_gateway_address", recording_address)
    try:
        yield World(tmp_path, servers, sent, addressed)
    finally:
        for server in servers.values():
            server.stop()


def _spec(topology: Topology = Topology.MULTI_PRIMARY) -> MeshSpec:
    return MeshSpec.default(topology, 2)


def _cacerts(spec: MeshSpec) -> dict[str, dict[str, bytes]]:
    pki = create_mesh_pki(spec.names, key_type="ecdsa")
    return {name: ca.secret_data() for name, ca in pki.cluster_cas.items()}


def _sub(argv: list[str]) -> list[str]:
    """The command after the global ``--kubeconfig F --context C`` flags meshfed puts first."""
    while argv and argv[0] in ("--kubeconfig", "--context"):
        argv = argv[2:]
    return argv


def _index(requests: list[tuple[str, str, str]], method: str, fragment: str) -> int:
    for i, (verb, path, _type) in enumerate(requests):
        if verb == method and fragment in path:
            return i
    raise AssertionError(f"no {method} {fragment} in {[r[:2] for r in requests]}")


@pytest.mark.parametrize("topology", list(Topology))
def test_provision_runs_the_tools_in_the_plans_order(world: World, topology: Topology) -> None:
    spec = _spec(topology)
    progress: list[str] = []
    mesh = world.backend().provision(spec, _cacerts(spec), progress.append)

    kind = [c["argv"] for c in world.calls("kind")]
    creates = [c for c in world.calls("kind") if c["argv"][:2] == ["create", "cluster"]]
    assert {a for c in creates for a in c["argv"] if a.startswith("--name")} == {
        "--name=meshfed-cluster-a",
        "--name=meshfed-cluster-b",
    }
    assert all(f"--image={tools.NODE_IMAGE}" in c["argv"] for c in creates), kind
    configs = {yaml.safe_load(c["config"])["nodes"][0]["labels"]["topology.kubernetes.io/region"]: c for c in creates}
    subnets = [yaml.safe_load(c["config"])["networking"] for c in creates]
    assert set(configs) == {"region-a", "region-b"}
    assert len({s["podSubnet"] for s in subnets}) == 2 and len({s["serviceSubnet"] for s in subnets}) == 2

    # cacerts reaches each primary's API server before `istioctl install` creates istiod there.
    for cluster in spec.primaries:
        requests = world.servers[f"meshfed-{cluster.name}"].requests
        assert _index(requests, "PATCH", "/secrets/cacerts") < _index(requests, "PATCH", "/deployments/istiod")
    istioctl = world.calls("istioctl")
    installs = [c for c in istioctl if _sub(c["argv"])[0] == "install"]
    assert all("-y" in c["argv"] and "--context" in c["argv"] for c in installs)
    # istioctl's own readiness wait (5 min by default) ends before meshfed's limit, not after it.
    assert all("--readiness-timeout=840s" in c["argv"] for c in installs)
    # Remote secrets are made after every east-west gateway has an address, with the container's address.
    secrets = [c for c in istioctl if _sub(c["argv"])[0] == "create-remote-secret"]
    assert secrets and all(c["argv"][c["argv"].index("--server") + 1].startswith("https://172.18.0.") for c in secrets)
    first_secret = min(c["time"] for c in secrets)
    if topology is Topology.MULTI_PRIMARY:
        assert set(world.addressed) == {"cluster-a", "cluster-b"}
        assert max(world.addressed.values()) < first_secret
    else:  # Istio's primary-remote guide: the remote is attached before its own gateway is installed
        assert world.addressed["cluster-a"] < first_secret
    for server in world.servers.values():
        services = server.objects("Service", "istio-system")
        gateway = next(s for s in services if s["metadata"]["name"] == "istio-eastwestgateway")
        assert gateway["status"]["loadBalancer"]["ingress"][0]["ip"].startswith("172.18.255.")
        assert server.objects("IPAddressPool", "metallb-system")
    destination = world.servers["meshfed-cluster-b" if topology is Topology.MULTI_PRIMARY else "meshfed-cluster-a"]
    assert any(
        s["metadata"]["name"].startswith("istio-remote-secret-") for s in destination.objects("Secret", "istio-system")
    )
    network = world.servers["meshfed-cluster-b"].object("/api/v1/namespaces/istio-system")
    assert network is not None and network["metadata"]["labels"]["topology.istio.io/network"] == "network-b"

    # The mesh answers through the contract: pods with sidecars, calls by exec, and teardown.
    pods = mesh["cluster-a"].pods(TEST_NAMESPACE)
    assert pods and all(p.ready and p.has_sidecar and p.revision == "default" for p in pods)
    client = mesh["cluster-a"].pod_of(TEST_NAMESPACE, "client")
    results = mesh["cluster-a"].call(client.name, TEST_NAMESPACE, "http://echo.meshfed:8080/", 3)
    assert [r.ok for r in results] == [True, True, True]
    exec_call = world.calls("kubectl")[-1]["argv"]
    assert _sub(exec_call)[:2] == ["exec", client.name] and exec_call[exec_call.index("--") + 3] == "call"
    assert any("done in" in line for line in progress) and any(
        "cluster-b: remote" in line or "remote secret" in line for line in progress
    )

    world.reset_calls()
    mesh.teardown()
    deleted = [c["argv"] for c in world.calls("kind") if c["argv"][:2] == ["delete", "cluster"]]
    assert sorted(deleted) == [["delete", "cluster", "--name", f"meshfed-cluster-{x}"] for x in "ab"]
    assert not (world.tmp / ".pytest-kind").exists()


def test_every_builtin_object_sent_validates_for_the_node_version(world: World) -> None:
    spec = _spec()
    world.backend().provision(spec, _cacerts(spec)).teardown()
    builtin = [obj for obj in world.sent if obj["apiVersion"] in BUILTIN_GROUPS]
    assert {obj["kind"] for obj in builtin} >= {"Namespace", "Secret", "Deployment", "Service", "ConfigMap"}
    for obj in builtin:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_failed_creation_tears_everything_down(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHFED_FAKE_FAIL", "create cluster --name=meshfed-cluster-b")
    spec = _spec()
    with pytest.raises(BackendError, match=r"`kind create cluster --name meshfed-cluster-b` failed"):
        world.backend().provision(spec, _cacerts(spec))
    deleted = {c["argv"][3] for c in world.calls("kind") if c["argv"][:2] == ["delete", "cluster"]}
    assert deleted == {"meshfed-cluster-a", "meshfed-cluster-b"}
    assert not [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install"]


def test_a_failed_install_tears_everything_down(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHFED_FAKE_FAIL", "install -y -f")
    spec = _spec()
    with pytest.raises(BackendError, match=r"cluster-a: `istioctl --kubeconfig .* install -y -f .*` failed \(exit 1\)"):
        world.backend().provision(spec, _cacerts(spec))
    deleted = {c["argv"][3] for c in world.calls("kind") if c["argv"][:2] == ["delete", "cluster"]}
    assert deleted == {"meshfed-cluster-a", "meshfed-cluster-b"}


def test_kept_clusters_are_reused_without_reinstalling(world: World) -> None:
    spec = _spec()
    cacerts = _cacerts(spec)
    first = world.backend(keep_clusters=True).provision(spec, cacerts)
    first.teardown()
    assert not [c for c in world.calls("kind") if c["argv"][0] == "delete"]

    world.reset_calls()
    progress: list[str] = []
    second = world.backend(keep_clusters=True).provision(spec, cacerts, progress.append)
    assert not [c for c in world.calls("kind") if c["argv"][0] == "create"]
    assert not [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install"]
    assert any("reusing the kept clusters" in line for line in progress)
    assert second["cluster-b"].pods(TEST_NAMESPACE)

    # Another root of trust is another mesh: istiod would not swap its root, so the clusters are recreated.
    world.reset_calls()
    progress.clear()
    world.backend(keep_clusters=True).provision(spec, _cacerts(spec), progress.append)
    assert any("hold another mesh, or an unfinished one: recreating them" in line for line in progress)
    kind = [c["argv"][:2] for c in world.calls("kind")]
    assert kind.count(["delete", "cluster"]) == 2 and kind.count(["create", "cluster"]) == 2
    assert kind.index(["delete", "cluster"]) < kind.index(["create", "cluster"])
    assert [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install"]


@pytest.mark.parametrize("topology", list(Topology))
def test_kept_clusters_whose_addresses_moved_get_new_remote_secrets(world: World, topology: Topology) -> None:
    """After a Docker restart the control-plane containers may come back on other addresses: the remote
    secrets that name the old ``https://<ip>:6443`` are made again; nothing else is reinstalled."""
    spec = _spec(topology)
    cacerts = _cacerts(spec)
    world.backend(keep_clusters=True).provision(spec, cacerts).teardown()
    world.reset_calls()
    world.backend(keep_clusters=True).provision(spec, cacerts).teardown()
    assert not [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "create-remote-secret"]

    state = world.tmp / "state" / "state.json"
    data = json.loads(state.read_text())
    moved = next(c for c in data["clusters"] if c["name"] == "meshfed-cluster-b")
    moved["nodes"][0]["ip"] = 77
    state.write_text(json.dumps(data))
    world.reset_calls()
    progress: list[str] = []
    world.backend(keep_clusters=True).provision(spec, cacerts, progress.append).teardown()
    made = [_sub(c["argv"]) for c in world.calls("istioctl") if _sub(c["argv"])[0] == "create-remote-secret"]
    assert made and all(argv[argv.index("--name") + 1] == "cluster-b" for argv in made)
    assert all(argv[argv.index("--server") + 1] == "https://172.18.0.77:6443" for argv in made)
    assert not [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install"]
    assert any("addresses changed since they were installed (API servers: cluster-b" in line for line in progress)
    secrets = world.servers["meshfed-cluster-a"].object(
        "/api/v1/namespaces/istio-system/secrets/istio-remote-secret-cluster-b"
    )
    assert secrets is not None
    kubeconfig = (
        secrets.get("stringData", {}).get("cluster-b") or base64.b64decode(secrets["data"]["cluster-b"]).decode()
    )
    assert "https://172.18.0.77:6443" in kubeconfig


def test_clusters_left_by_a_kept_run_are_not_touched_without_keep(world: World) -> None:
    spec = _spec()
    world.backend(keep_clusters=True).provision(spec, _cacerts(spec))
    world.reset_calls()
    with pytest.raises(BackendError, match=r"already exist .* run with --keep-clusters to reuse them"):
        world.backend().provision(spec, _cacerts(spec))
    assert not [c for c in world.calls("kind") if c["argv"][0] in ("create", "delete")]


def test_docker_down_is_one_sentence_and_nothing_is_created(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHFED_FAKE_DOCKER_DOWN", "1")
    spec = _spec()
    with pytest.raises(
        BackendError, match=r"^Docker is not reachable \(.*Is the docker daemon running\?.*\): start Docker"
    ):
        world.backend().provision(spec, _cacerts(spec))
    assert not world.calls("kind")


def test_low_inotify_limits_are_refused_before_creating(world: World) -> None:
    _write_host(world.tmp, instances=128)
    spec = _spec()
    with pytest.raises(
        BackendError, match=r"fs.inotify.max_user_instances is 128.*sudo sysctl fs.inotify.max_user_instances=512"
    ):
        world.backend().provision(spec, _cacerts(spec))
    assert not [c for c in world.calls("kind") if c["argv"][0] == "create"]


def test_a_cgroup_v1_host_is_refused_for_kubernetes_1_35_nodes(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHFED_FAKE_DOCKER_CGROUP", "1")
    spec = _spec()
    with pytest.raises(
        BackendError, match=r"^Docker runs on cgroup v1, and the kubelet of kindest/node:v1.35.0 .* --node-image"
    ):
        world.backend().provision(spec, _cacerts(spec))
    assert not world.calls("kind")
    # An older node image's kubelet still runs on cgroup v1: that one is let through.
    mesh = world.backend(node_image="kindest/node:v1.34.3").provision(spec, _cacerts(spec))
    mesh.teardown()
    assert [c for c in world.calls("kind") if c["argv"][:2] == ["create", "cluster"]]


def test_an_istio_release_that_does_not_support_the_node_kubernetes_is_refused(world: World) -> None:
    spec = _spec()
    backend = KindBackend("1.28.3", host=HostPaths(world.tmp / "meminfo", world.tmp / "inotify"))
    with pytest.raises(
        BackendError,
        match=r"^Istio 1.28.3 supports Kubernetes 1.30 to 1.34, and the node image kindest/node:v1.35.0 is "
        r"Kubernetes 1.35 .*: choose Istio 1.30 or 1.31, or .* --node-image kindest/node:v1.34.x$",
    ):
        backend.provision(spec, _cacerts(spec))
    assert not world.calls("kind") and not world.calls("docker")
    # The canary's release is held to the same matrix.
    with pytest.raises(BackendError, match=r"^Istio 1.28.3 supports"):
        world.backend(upgrade_to="1.28.3").provision(spec, _cacerts(spec))


def test_a_tool_that_hangs_is_one_sentence(world: World) -> None:
    def hanging(command: list[str]) -> subprocess.CompletedProcess[str]:
        if command[1:] == ["get", "clusters"]:
            raise subprocess.TimeoutExpired(command, 900)
        return subprocess.run(command, capture_output=True, text=True, check=False)

    spec = _spec()
    with pytest.raises(BackendError, match=r"^listing kind clusters did not finish within 900 s .*`docker ps`"):
        world.backend(run=hanging).provision(spec, _cacerts(spec))


def test_a_mirror_and_local_images_need_no_pull(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """Air-gapped: --istio-hub/--istio-tag reach every istioctl install; the images the local Docker holds
    are loaded into the new nodes before anything is installed; the others are named."""
    local = ["registry.corp:5000/istio/pilot:1.30.3-corp", "registry.corp:5000/istio/proxyv2:1.30.3-corp"]
    monkeypatch.setenv("MESHFED_FAKE_DOCKER_IMAGES", ",".join([*local, "quay.io/metallb/controller:v0.15.3"]))
    spec = _spec()
    progress: list[str] = []
    backend = world.backend(istio_hub="registry.corp:5000/istio", istio_tag="1.30.3-corp")
    mesh = backend.provision(spec, _cacerts(spec), progress.append)
    loads = [c for c in world.calls("kind") if c["argv"][:2] == ["load", "docker-image"]]
    assert sorted(c["argv"][-1] for c in loads) == ["meshfed-cluster-a", "meshfed-cluster-b"]
    assert all(c["argv"][2:-2] == [*local, "quay.io/metallb/controller:v0.15.3"] for c in loads)
    first_install = min(c["time"] for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install")
    assert max(c["time"] for c in loads) < first_install
    assert any(line.startswith("not in the local Docker, so the nodes pull them: python:3.12") for line in progress)
    istiod = mesh["cluster-a"].get("Deployment", "istiod", "istio-system")
    assert istiod is not None
    assert istiod["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.corp:5000/istio/pilot:1.30.3-corp"
    mesh.teardown()


def test_metallb_slices_do_not_overlap_and_take_ipv4_whatever_the_order() -> None:
    inspect = json.dumps([{"IPAM": {"Config": [{"Subnet": "fc00:f853:ccd:e793::/64"}, {"Subnet": "172.18.0.0/16"}]}}])
    subnet = ipv4_subnet(inspect)
    assert str(subnet) == "172.18.0.0/16"
    slices = address_slices(subnet, 26)
    flat = [a for s in slices for a in s]
    assert len(flat) == len(set(flat)) == 26 * 32
    assert slices[0][0] == "172.18.3.233"  # host 1000 onwards, clear of the containers' low addresses
    with pytest.raises(BackendError, match="too small"):
        address_slices(ipv4_subnet(json.dumps([{"IPAM": {"Config": [{"Subnet": "172.18.0.0/29"}]}}])), 3)


def test_another_kind_clusters_overlapping_metallb_pool_is_warned_about(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = KubeApiStandIn("other", injection=False)
    other.start()
    try:
        urls = {name: server.url for name, server in world.servers.items()} | {"other": other.url}
        monkeypatch.setenv("MESHFED_FAKE_APISERVERS", json.dumps(urls))
        subprocess.run(["kind", "create", "cluster", "--name", "other"], check=True, capture_output=True)
        kubeconfig = world.tmp / "other-kubeconfig"
        kubeconfig.write_text(
            subprocess.run(
                ["kind", "get", "kubeconfig", "--name", "other"], check=True, capture_output=True, text=True
            ).stdout
        )
        cluster = KubeCluster(
            "other", kubeconfig, "kind-other", kubectl=Path("kubectl"), istioctl_binary=Path("istioctl")
        )
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "metallb-system"}})
        [pool, _advertisement] = metallb_pool(["172.18.3.240/32"])
        pool["spec"]["addresses"] = ["172.18.3.240-172.18.3.250", "172.18.200.0/24"]
        cluster.apply(pool)
        spec = _spec()
        progress: list[str] = []
        world.backend().provision(spec, _cacerts(spec), progress.append).teardown()
    finally:
        other.stop()
    warnings = [line for line in progress if line.startswith("warning:")]
    assert warnings == [
        "warning: the kind cluster other has a MetalLB pool (172.18.3.240-172.18.3.250, 172.18.200.0/24) on the same "
        "docker network holding 11 of meshfed's load balancer addresses (172.18.3.240-172.18.3.250): two clusters "
        "may answer for one address; delete that cluster or give its pool other addresses"
    ]
    assert not list(world.tmp.glob("cache/kind/.kubeconfig-*"))  # the other cluster's kubeconfig is not kept


def test_pool_addresses_reads_metallbs_forms() -> None:
    assert len(pool_addresses(["10.0.0.0/30", "10.0.1.1-10.0.1.3", "fc00::/120", "nonsense"])) == 7


def test_host_evidence_is_read_with_testinfra(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()
    mesh = world.backend().provision(spec, _cacerts(spec))
    evidence = mesh["cluster-a"].host_evidence()
    found = {(e.check, e.ok) for e in evidence}
    assert found == {
        ("kubelet-not-running", True),
        ("pilot-agent-not-running", True),
        ("eastwest-not-listening", True),
        ("sidecar-not-intercepting", True),
    }, [e.text for e in evidence]
    docker_exec = [c["argv"] for c in world.calls("docker") if c["argv"][0] == "exec"]
    assert ["exec", "meshfed-cluster-a-control-plane", "/bin/sh", "-c", "systemctl is-active kubelet"] in docker_exec

    monkeypatch.setenv("MESHFED_FAKE_NO_15443", "1")
    monkeypatch.setenv("MESHFED_FAKE_KUBELET", "inactive")
    problems = {(c.check, c.cluster) for c in diagnose(mesh) if c.status == "error"}
    assert {("eastwest-not-listening", "cluster-b"), ("kubelet-not-running", "cluster-a")} <= problems
    mesh.teardown()


def test_a_node_whose_kubelet_is_down_stops_provisioning(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHFED_FAKE_KUBELET", "failed")
    spec = _spec()
    with pytest.raises(
        BackendError, match=r"meshfed-cluster-a-control-plane: kubelet is failed: the node did not come up"
    ):
        world.backend().provision(spec, _cacerts(spec))
    assert not [c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install"]
    assert {c["argv"][3] for c in world.calls("kind") if c["argv"][:2] == ["delete", "cluster"]} == {
        "meshfed-cluster-a",
        "meshfed-cluster-b",
    }
