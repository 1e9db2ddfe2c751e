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

from meshfed import manifests
from meshfed.backends import tools
from meshfed.backends.base import BackendError
from meshfed.backends.kind import KindBackend, address_slices, ipv4_subnet, metallb_pool, pool_addresses
from meshfed.backends.kube import KubeApi, KubeCluster
from meshfed.backends.preflight import HostPaths
from meshfed.diagnose import diagnose
from meshfed.install import Step, StepKind, plan
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
        for i, name in enumerate(("meshfed-cluster-a", "meshfed-cluster-b", "meshfed-external"))
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

    def recording_address(self: KindBackend, cluster: Any, timeout: float = 300, *, control_plane: bool = False) -> str:
        # The stand-ins give a LoadBalancer Service its address as it is created: one not there within seconds
        # never comes (a step out of the plan's order), so the wait is cut short rather than hang for 5 minutes.
        address = wait_address(self, cluster, min(timeout, 5), control_plane=control_plane)
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
    pki = create_mesh_pki(spec.cacerts_clusters, key_type="ecdsa")  # as the CLI: the external cluster's alone
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


def _namespace(topology: Topology) -> str:
    """Where the plan's istio-system objects of a cluster go: with an external control plane, external-istiod."""
    return "external-istiod" if topology is Topology.EXTERNAL_CONTROL_PLANE else "istio-system"


@pytest.mark.parametrize("topology", list(Topology))
def test_provision_runs_the_tools_in_the_plans_order(world: World, topology: Topology) -> None:
    spec = _spec(topology)
    namespace = _namespace(topology)
    kind_names = {f"meshfed-{c.name}" for c in spec.all_clusters}
    progress: list[str] = []
    mesh = world.backend().provision(spec, _cacerts(spec), progress.append)

    kind = [c["argv"] for c in world.calls("kind")]
    creates = [c for c in world.calls("kind") if c["argv"][:2] == ["create", "cluster"]]
    assert {a for c in creates for a in c["argv"] if a.startswith("--name")} == {f"--name={n}" for n in kind_names}
    assert all(f"--image={tools.NODE_IMAGE}" in c["argv"] for c in creates), kind
    configs = {yaml.safe_load(c["config"])["nodes"][0]["labels"]["topology.kubernetes.io/region"]: c for c in creates}
    subnets = [yaml.safe_load(c["config"])["networking"] for c in creates]
    assert set(configs) == {c.region for c in spec.all_clusters}
    assert len({s["podSubnet"] for s in subnets}) == len({s["serviceSubnet"] for s in subnets}) == len(kind_names)

    # cacerts reaches each control plane's API server before `istioctl install` creates istiod there.
    for cluster in spec.control_planes:
        requests = world.servers[f"meshfed-{cluster.name}"].requests
        cacerts = _index(requests, "PATCH", f"/namespaces/{namespace}/secrets/cacerts")
        assert cacerts < _index(requests, "PATCH", f"/namespaces/{namespace}/deployments/istiod")
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
    elif topology is Topology.PRIMARY_REMOTE:  # Istio's primary-remote guide: the remote is attached before its gateway
        assert world.addressed["cluster-a"] < first_secret
    else:  # the guide: istio-kubeconfig (the first secret) once the external istiod's ingress has its address
        assert set(world.addressed) == {"external", "cluster-a", "cluster-b"}
        assert world.addressed["external"] < first_secret < world.addressed["cluster-a"]
    for cluster in spec.clusters:
        server = world.servers[f"meshfed-{cluster.name}"]
        services = server.objects("Service", namespace)
        gateway = next(s for s in services if s["metadata"]["name"] == "istio-eastwestgateway")
        assert gateway["status"]["loadBalancer"]["ingress"][0]["ip"].startswith("172.18.255.")
    for cluster in spec.all_clusters:
        assert world.servers[f"meshfed-{cluster.name}"].objects("IPAddressPool", "metallb-system")
    destination = {
        Topology.MULTI_PRIMARY: "meshfed-cluster-b",
        Topology.PRIMARY_REMOTE: "meshfed-cluster-a",
        Topology.EXTERNAL_CONTROL_PLANE: "meshfed-external",
    }[topology]
    assert any(
        s["metadata"]["name"].startswith("istio-remote-secret-")
        for s in world.servers[destination].objects("Secret", namespace)
    )
    network = world.servers["meshfed-cluster-b"].object(f"/api/v1/namespaces/{namespace}")
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
    assert sorted(deleted) == [["delete", "cluster", "--name", name] for name in sorted(kind_names)]
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
    # cluster-b's remote secret lives where its istiod runs: in cluster-a, or in the external cluster.
    holder = "meshfed-external" if topology is Topology.EXTERNAL_CONTROL_PLANE else "meshfed-cluster-a"
    secrets = world.servers[holder].object(
        f"/api/v1/namespaces/{_namespace(topology)}/secrets/istio-remote-secret-cluster-b"
    )
    assert secrets is not None
    kubeconfig = (
        secrets.get("stringData", {}).get("cluster-b") or base64.b64decode(secrets["data"]["cluster-b"]).decode()
    )
    assert "https://172.18.0.77:6443" in kubeconfig


def _context(call: dict[str, Any]) -> str:
    """The kind cluster a tool call was run against (``--context kind-NAME``)."""
    argv = call["argv"]
    return str(argv[argv.index("--context") + 1]).removeprefix("kind-")


def _secret_text(secret: dict[str, Any], key: str) -> str:
    """A Secret's value, as applied (``stringData``, what istioctl prints) or as stored (``data``)."""
    return str(secret.get("stringData", {}).get(key) or base64.b64decode(secret["data"][key]).decode())


def _gateway_names(operator: dict[str, Any]) -> list[str]:
    return [g["name"] for g in (operator["spec"].get("components") or {}).get("ingressGateways") or []]


def test_an_external_control_plane_is_installed_as_istios_guide_does(world: World) -> None:
    """The guide's order (IP-address variant): the external cluster's ingress gateway, then its address; the config
    cluster's remote profile (configCluster, pointed at that address), then istio-kubeconfig read from it; then the
    external istiod; each remote's remote secret in the external cluster's external-istiod; east-west gateways on
    the data-plane clusters only. The mesh's clusters are the data-plane ones, the external one beside them."""
    spec = _spec(Topology.EXTERNAL_CONTROL_PLANE)
    mesh = world.backend().provision(spec, _cacerts(spec))
    external = world.servers["meshfed-external"]
    istioctl = world.calls("istioctl")
    installs = [(c["time"], _context(c), c["operator"]) for c in istioctl if _sub(c["argv"])[0] == "install"]
    made = [c for c in istioctl if _sub(c["argv"])[0] == "create-remote-secret"]

    # The ingress gateway (istio-system, 15021/15012/15017) is installed before its address is read.
    ingress = external.object("/api/v1/namespaces/istio-system/services/istio-ingressgateway")
    assert ingress is not None and [p["port"] for p in ingress["spec"]["ports"]] == [15021, 15012, 15017]
    address = ingress["status"]["loadBalancer"]["ingress"][0]["ip"]
    [gateway_install] = [t for t, on, op in installs if _gateway_names(op) == ["istio-ingressgateway"]]
    assert _context(next(c for c in istioctl if c["time"] == gateway_install)) == "meshfed-external"
    assert gateway_install < world.addressed["external"]

    # The config cluster's remote profile, pointed at that address, comes before istio-kubeconfig is read from it.
    remote_profiles = {on: (t, op) for t, on, op in installs if op["spec"].get("profile") == "remote"}
    assert set(remote_profiles) == {"meshfed-cluster-a", "meshfed-cluster-b"}
    for on, (_, operator) in remote_profiles.items():
        values = operator["spec"]["values"]["global"]
        assert values["remotePilotAddress"] == address and values["istioNamespace"] == "external-istiod"
        assert values.get("configCluster", False) is (on == "meshfed-cluster-a")
        istiod = world.servers[on].object("/apis/discovery.k8s.io/v1/namespaces/external-istiod/endpointslices/istiod")
        assert istiod is not None and istiod["endpoints"] == [{"addresses": [address]}]
    [config] = [c for c in made if "--type=config" in c["argv"]]
    assert _context(config) == "meshfed-cluster-a"
    assert remote_profiles["meshfed-cluster-a"][0] < config["time"] < world.addressed["cluster-a"]

    # istio-kubeconfig (key config, cluster-a's API server) reaches the external cluster before its istiod.
    requests = external.requests
    kubeconfig = _index(requests, "PATCH", "/namespaces/external-istiod/secrets/istio-kubeconfig")
    assert kubeconfig < _index(requests, "PATCH", "/namespaces/external-istiod/deployments/istiod")
    secret = external.object("/api/v1/namespaces/external-istiod/secrets/istio-kubeconfig")
    assert secret is not None
    server = config["argv"][config["argv"].index("--server") + 1]
    assert yaml.safe_load(_secret_text(secret, "config"))["clusters"][0]["cluster"]["server"] == server
    istiod = external.object("/apis/apps/v1/namespaces/external-istiod/deployments/istiod")
    assert istiod is not None
    env = {e["name"]: e["value"] for e in istiod["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CLUSTER_ID"] == "cluster-a" and env["EXTERNAL_ISTIOD"] == "true"
    [external_istiod] = [op for _, on, op in installs if "pilot" in (op["spec"].get("components") or {})]
    assert external_istiod["spec"]["meshConfig"]["defaultConfig"]["discoveryAddress"] == f"{address}:15012"

    # cluster-b's remote secret, read from cluster-b, is applied in the external cluster's external-istiod only.
    [remote] = [c for c in made if "--type=config" not in c["argv"]]
    assert _context(remote) == "meshfed-cluster-b" and remote["argv"][remote["argv"].index("--name") + 1] == "cluster-b"
    assert remote_profiles["meshfed-cluster-b"][0] < remote["time"]
    held = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in external.objects("Secret")}
    assert ("external-istiod", "istio-remote-secret-cluster-b") in held
    for cluster in spec.clusters:
        secrets = world.servers[f"meshfed-{cluster.name}"].objects("Secret")
        assert not [
            s for s in secrets if s["metadata"]["name"].startswith(("istio-remote-secret-", "istio-kubeconfig"))
        ]

    # An east-west gateway (external-istiod) on every data-plane cluster, none on the external cluster.
    eastwest = sorted(on for _, on, op in installs if _gateway_names(op) == ["istio-eastwestgateway"])
    assert eastwest == ["meshfed-cluster-a", "meshfed-cluster-b"]
    for cluster in spec.clusters:
        assert world.servers[f"meshfed-{cluster.name}"].object(
            "/api/v1/namespaces/external-istiod/services/istio-eastwestgateway"
        )
    assert not [s for s in external.objects("Service") if s["metadata"]["name"] == "istio-eastwestgateway"]

    # The mesh: the data-plane clusters, the external one beside them; all in external-istiod.
    assert list(mesh.clusters) == ["cluster-a", "cluster-b"]
    assert mesh.external is not None and mesh.external.name == "external" and mesh["external"] is mesh.external
    assert {c.control_plane_namespace for c in [*mesh.clusters.values(), mesh.external]} == {"external-istiod"}
    mesh.teardown()


def test_the_config_secret_before_the_config_clusters_remote_profile_fails_as_istioctl_does(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the remote profile's configCluster there is no istiod ServiceAccount in the config cluster, and
    `create-remote-secret --type=config --create-service-account=false` fails (the notes' misconfiguration):
    the plan's order is what makes it work, and a plan out of order says istioctl's own words."""

    def out_of_order(spec: MeshSpec, cacerts: Any) -> list[Step]:
        steps = plan(spec, cacerts)
        profile = next(s for s in steps if s.kind is StepKind.INSTALL_REMOTE and s.cluster == "cluster-a")
        secret = next(s for s in steps if s.kind is StepKind.CONFIG_SECRET)
        steps.remove(secret)
        steps.insert(steps.index(profile), secret)
        return steps

    monkeypatch.setattr("meshfed.backends.kind.plan", out_of_order)
    spec = _spec(Topology.EXTERNAL_CONTROL_PLANE)
    with pytest.raises(
        BackendError,
        match=r"^cluster-a: `istioctl .* create-remote-secret --name cluster-a .*` failed \(exit 1\): .*"
        r"failed retrieving service account istiod\.external-istiod required for creating the remote secret .*"
        r"'--create-service-account=true'\): serviceaccounts \"istiod\" not found$",
    ):
        world.backend().provision(spec, _cacerts(spec))
    assert (
        world.servers["meshfed-external"].object("/api/v1/namespaces/external-istiod/secrets/istio-kubeconfig") is None
    )
    assert not [
        c for c in world.calls("istioctl") if _sub(c["argv"])[0] == "install" and _context(c) == "meshfed-cluster-a"
    ]
    deleted = {c["argv"][3] for c in world.calls("kind") if c["argv"][:2] == ["delete", "cluster"]}
    assert deleted == {"meshfed-cluster-a", "meshfed-cluster-b", "meshfed-external"}


def test_the_fake_istioctl_reads_a_config_cluster_as_its_istiod_account(world: World) -> None:
    """create-remote-secret --type=config as istioctl's remote_secret.go: the account must exist (with
    --create-service-account=true only istio-reader-service-account can be made, so istiod is still missing);
    once the remote profile's configCluster made it, istio-kubeconfig with key config, in --istioNamespace."""
    server = world.servers["meshfed-cluster-a"]
    kubeconfig = world.tmp / "kubeconfig-a"
    kubeconfig.write_text(server.kubeconfig("kind-a"))
    config = ["--type=config", "--service-account=istiod", "--istioNamespace", "external-istiod"]
    command = ["istioctl", "--kubeconfig", str(kubeconfig), "create-remote-secret", "--name", "cluster-a", *config]
    refused = subprocess.run([*command, "--create-service-account=false"], capture_output=True, text=True)
    reason = (
        "could not get access token to read resources from local kube-apiserver: failed retrieving service account "
        "istiod.external-istiod required for creating the remote secret (hint: try installing a minimal Istio profile "
        "on the cluster first, or run with '--create-service-account=true'): serviceaccounts \"istiod\" not found"
    )
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"error: {reason}\nError: {reason}\n")
    created = subprocess.run(command, capture_output=True, text=True)
    assert created.returncode == 1 and "failed retrieving service account istiod.external-istiod after creating it" in (
        created.stderr
    )
    assert server.object("/api/v1/namespaces/external-istiod/serviceaccounts/istio-reader-service-account")

    spec = _spec(Topology.EXTERNAL_CONTROL_PLANE)
    operator = manifests.istio_operator_remote(
        spec.clusters[0], spec, "172.18.255.12", namespace_="external-istiod", config_cluster=True
    )
    iop = world.tmp / "remote.yaml"
    iop.write_text(yaml.safe_dump(operator))
    subprocess.run(
        ["istioctl", "--kubeconfig", str(kubeconfig), "install", "-y", "-f", str(iop)], check=True, capture_output=True
    )
    printed = subprocess.run(
        [*command, "--create-service-account=false", "--server", "https://172.18.0.2:6443"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    [secret] = [d for d in yaml.safe_load_all(printed) if d]
    assert secret["metadata"]["name"] == "istio-kubeconfig" and secret["metadata"]["namespace"] == "external-istiod"
    assert secret["metadata"]["annotations"] == {"networking.istio.io/cluster": "cluster-a"}
    assert list(secret["stringData"]) == ["config"]
    read = yaml.safe_load(secret["stringData"]["config"])
    assert read["clusters"][0]["cluster"]["server"] == "https://172.18.0.2:6443"
    claims = json.loads(base64.urlsafe_b64decode(read["users"][0]["user"]["token"].split(".")[1] + "=="))
    assert claims["sub"] == "system:serviceaccount:external-istiod:istiod"


def test_a_kept_external_mesh_whose_config_cluster_moved_gets_a_new_istio_kubeconfig(world: World) -> None:
    spec = _spec(Topology.EXTERNAL_CONTROL_PLANE)
    cacerts = _cacerts(spec)
    world.backend(keep_clusters=True).provision(spec, cacerts).teardown()
    state = world.tmp / "state" / "state.json"
    data = json.loads(state.read_text())
    next(c for c in data["clusters"] if c["name"] == "meshfed-cluster-a")["nodes"][0]["ip"] = 78
    state.write_text(json.dumps(data))
    world.reset_calls()
    world.backend(keep_clusters=True).provision(spec, cacerts).teardown()
    secret = world.servers["meshfed-external"].object("/api/v1/namespaces/external-istiod/secrets/istio-kubeconfig")
    assert secret is not None
    assert (
        yaml.safe_load(_secret_text(secret, "config"))["clusters"][0]["cluster"]["server"] == "https://172.18.0.78:6443"
    )


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
