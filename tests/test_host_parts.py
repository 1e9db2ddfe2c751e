"""The host backend's parts that need no root: the Go wrapper modules and the choice of Istio commit, what each
node runs and reads, the install overlay, the images' archive, and the LoadBalancer controller."""

from __future__ import annotations

import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import yaml

from meshfed.backends.base import BackendError
from meshfed.backends.host import binaries, components, images, network
from meshfed.backends.host.backend import install_overlay
from meshfed.backends.host.loadbalancer import LoadBalancers


class FakeGo:
    """Answers ``go mod download -json`` as the Go module proxy does: served versions, or a 403 refusal."""

    def __init__(self, served: Mapping[str, Path]) -> None:
        self.served = served
        self.calls: list[list[str]] = []

    def __call__(
        self, command: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(command))
        if command[1:4] == ["mod", "download", "-json"]:
            wanted = command[4]
            if wanted in self.served:
                folder = self.served[wanted]
                info = {"Path": wanted.split("@")[0], "Version": wanted.split("@")[1], "Dir": str(folder)}
                info["GoMod"] = str(folder / "go.mod")
                return subprocess.CompletedProcess(command, 0, json.dumps(info), "")
            refusal = {"Error": f"{wanted}: reading https://proxy/...: 403 Forbidden"}
            return subprocess.CompletedProcess(command, 1, json.dumps(refusal), "")
        if command[1:] == ["version"]:
            return subprocess.CompletedProcess(command, 0, "go version go1.26.8 linux/amd64\n", "")
        return subprocess.CompletedProcess(command, 1, "", "unexpected")


def test_a_refused_release_commit_falls_back_to_master_and_says_so(tmp_path: Path) -> None:
    master = tmp_path / "istio-master"
    master.mkdir()
    (master / "VERSION").write_text("1.31\n")
    go = FakeGo({f"istio.io/istio@{binaries.ISTIO_MASTER}": master})
    source = binaries.Builder(tmp_path, run=go).istio_source("1.30.3")
    assert source.module_version == binaries.ISTIO_MASTER
    assert source.version == "1.31-dev"
    assert "does not serve Istio 1.30.3's release commit" in source.describe()
    assert source.commit in source.describe()
    asked = [call[4] for call in go.calls]
    assert asked == [
        f"istio.io/istio@{binaries.ISTIO_RELEASE_COMMITS['1.30.3']}",
        f"istio.io/istio@{binaries.ISTIO_MASTER}",
    ]


def test_a_served_release_commit_is_built_as_that_release(tmp_path: Path) -> None:
    release = binaries.ISTIO_RELEASE_COMMITS["1.30.3"]
    go = FakeGo({f"istio.io/istio@{release}": tmp_path})
    source = binaries.Builder(tmp_path, run=go).istio_source("1.30.3")
    assert (source.version, source.module_version, source.note) == ("1.30.3", release, "")


def test_nothing_served_is_one_sentence_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"serves neither Istio 1\.30\.3.*--bin-dir"):
        binaries.Builder(tmp_path, run=FakeGo({})).istio_source("1.30.3")


def test_a_commit_is_built_as_that_commit_of_its_minor(tmp_path: Path) -> None:
    commit = "v0.0.0-20260423205519-b01690e6db7d"
    (tmp_path / "VERSION").write_text("1.31\n")
    source = binaries.Builder(tmp_path, run=FakeGo({f"istio.io/istio@{commit}": tmp_path})).istio_source(commit)
    assert (source.version, source.module_version, source.commit) == ("1.31-dev", commit, "b01690e6db7d")
    with pytest.raises(BackendError, match=r"does not serve istio\.io/istio v0\.0\.0-20260101000000-0123456789ab"):
        binaries.Builder(tmp_path, run=FakeGo({})).istio_source("v0.0.0-20260101000000-0123456789ab")


def test_a_wrapper_module_starts_from_the_checksums_its_requirement_recorded(tmp_path: Path) -> None:
    """A dependency the checksum database here does not answer for is verified against Istio's go.sum."""
    istio = tmp_path / "istio"
    istio.mkdir()
    (istio / "go.sum").write_text("example.com/dep v1.0.0 h1:abc=\n")
    source = binaries.IstioSource("x", "v0.0.0-20260423205519-b01690e6db7d", "1.31-dev")
    go = FakeGo({f"istio.io/istio@{source.module_version}": istio})
    assert binaries.Builder(tmp_path, run=go)._required_sums(binaries.istio_module(source)) == (
        "example.com/dep v1.0.0 h1:abc=\n"
    )


def test_kubernetes_wrapper_pins_every_staging_module_to_its_published_version(tmp_path: Path) -> None:
    folder = tmp_path / "k8s"
    folder.mkdir()
    (folder / "go.mod").write_text(
        "module k8s.io/kubernetes\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n"
        "\tk8s.io/client-go => ./staging/src/k8s.io/client-go\n)\n"
    )
    go = FakeGo({f"k8s.io/kubernetes@{binaries.KUBERNETES_VERSION}": folder})
    staging = binaries.Builder(tmp_path, run=go).kubernetes_staging()
    module = binaries.kubernetes_module(staging)
    text = module.go_mod()
    assert "require k8s.io/kubernetes v1.34.4" in text
    assert "replace k8s.io/api => k8s.io/api v0.34.4" in text
    assert "replace k8s.io/client-go => k8s.io/client-go v0.34.4" in text
    assert "-X k8s.io/component-base/version.gitVersion=v1.34.4" in module.ldflags
    assert '_ "k8s.io/kubernetes/cmd/kube-apiserver"' in module.tools_go()
    assert binaries._output_name(module, "go.etcd.io/etcd/server/v3") == "server"


def test_istio_is_built_as_its_makefile_does() -> None:
    source = binaries.IstioSource("1.30.3", "v0.0.0-20260713165634-56df41f63e51", "1.30.3")
    module = binaries.istio_module(source)
    assert module.tags == ("vtprotobuf", "disable_pgv")
    assert "-X istio.io/istio/pkg/version.buildVersion=1.30.3" in module.ldflags
    assert set(module.binaries) == {"pilot-discovery", "pilot-agent", "istioctl"}


def test_no_go_is_one_sentence(tmp_path: Path) -> None:
    def missing(*_: object) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError("go")

    with pytest.raises(BackendError, match="Go is not installed"):
        binaries.Builder(tmp_path, run=missing).check_go()


def test_a_bin_dir_without_any_program_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="holds none of"):
        binaries.build_all("1.30.3", bin_dir=tmp_path, builder=binaries.Builder(tmp_path, run=FakeGo({})))


def test_each_cluster_gets_its_own_addresses() -> None:
    a, b = network.NodeNetwork("cluster-a", 0), network.NodeNetwork("cluster-b", 1)
    assert (a.address, b.address) == ("10.250.0.10", "10.250.0.11")
    assert (a.pod_cidr, b.pod_cidr) == ("10.10.0.0/16", "10.11.0.0/16")
    assert (a.dns_address, b.dns_address) == ("10.255.10.10", "10.255.11.10")
    assert not set(a.lb_addresses) & set(b.lb_addresses)
    assert all(address.startswith("10.250.0.") for address in a.lb_addresses + b.lb_addresses)
    assert len(a.host_veth) <= 15


def test_what_a_node_runs(tmp_path: Path) -> None:
    node = network.NodeNetwork("cluster-b", 1)
    files = components.ClusterFiles(tmp_path)
    bins = binaries.Binaries(paths={name: Path(f"/bin/{name}") for name in binaries.ALL_PROGRAMS})
    apiserver = components.kube_apiserver(files, node, bins)
    assert "--advertise-address=10.250.0.11" in apiserver.argv
    assert "--service-cluster-ip-range=10.255.11.0/24" in apiserver.argv
    assert components.api_service_address(node) == "10.255.11.1"
    kubelet = yaml.safe_load(components.kubelet_config(files, node))
    assert kubelet["cgroupRoot"] == "/meshfed-cluster-b"
    assert kubelet["failCgroupV1"] is False and kubelet["oomScoreAdj"] == 0
    assert kubelet["clusterDNS"] == ["10.255.11.10"]
    cni = json.loads(components.cni_config(node))
    assert cni["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.11.0.0/16"}]]
    config = components.containerd_config(files)
    assert "restrict_oom_score_adj = true" in config and str(files.containerd_socket) in config


def test_the_install_overlay_says_what_is_not_stock() -> None:
    overlay = install_overlay("1.31-dev", upstream_envoy=True)
    spec = overlay["spec"]
    assert (spec["hub"], spec["tag"]) == (images.HUB, "1.31-dev")
    assert spec["values"]["global"]["imagePullPolicy"] == "Never"
    assert spec["values"]["pilot"]["env"] == {
        "PILOT_ENABLE_METADATA_EXCHANGE": "false",
        "PILOT_ENABLE_ALPN_FILTER": "false",
    }
    assert spec["values"]["telemetry"] == {"enabled": False}
    assert "pilot" not in install_overlay("1.31-dev", upstream_envoy=False)["spec"]["values"]


def test_the_image_archive_stores_a_shared_layer_once(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "bin").mkdir(parents=True)
    (rootfs / "usr" / "bin" / "python3").write_text("#!/bin/sh\n")
    tool = tmp_path / "tool"
    tool.write_bytes(b"\x7fELF")
    base = images.Layer(folder=rootfs)
    wanted = [
        images.Image("meshfed.local/a:1", (base,), cmd=("python3",)),
        images.Image(
            "meshfed.local/b:1", (base, images.Layer({"usr/local/bin/tool": (tool, 0o755)})), ("/usr/local/bin/tool",)
        ),
    ]
    target = tmp_path / "images.tar"
    images.write_archive(target, wanted)
    with tarfile.open(target) as archive:
        manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        layer_files = [name for name in archive.getnames() if name.endswith("layer.tar")]
        with tarfile.open(fileobj=archive.extractfile(manifest[1]["Layers"][1])) as top:  # type: ignore[arg-type]
            assert top.getmember("usr/local/bin/tool").mode == 0o755
    assert [entry["RepoTags"] for entry in manifest] == [["meshfed.local/a:1"], ["meshfed.local/b:1"]]
    assert manifest[0]["Layers"][0] == manifest[1]["Layers"][0]
    assert len(layer_files) == 2


def test_a_canary_build_gets_its_own_istio_images_with_the_same_envoy(tmp_path: Path) -> None:
    def bins(name: str) -> binaries.Binaries:
        folder = tmp_path / name
        folder.mkdir()
        paths = {}
        for program in ("pilot-discovery", "pilot-agent", "envoy", "coredns"):
            (folder / program).write_bytes(name.encode())
            paths[program] = folder / program
        found = binaries.Binaries(paths=paths)
        found.bootstrap = folder / "envoy_bootstrap.json"
        return found

    first, canary = bins("first"), bins("canary")
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    wanted = images.images(first, rootfs, "1.31-dev-eed52ebb66ad", first.bootstrap, (canary, "1.31-dev-b01690e6db7d"))
    by_name = {image.name: image for image in wanted}
    canary_proxy = by_name[f"{images.HUB}/proxyv2:1.31-dev-b01690e6db7d"].layers[1].files
    assert canary_proxy["usr/local/bin/pilot-agent"][0] == canary["pilot-agent"]
    assert canary_proxy["usr/local/bin/envoy"][0] == first["envoy"]
    assert (
        by_name[f"{images.HUB}/pilot:1.31-dev-eed52ebb66ad"].layers[1].files["usr/local/bin/pilot-discovery"][0]
        == (first["pilot-discovery"])
    )


class FakeApi:
    def __init__(self, services: list[dict[str, object]]) -> None:
        self.services = services
        self.patches: list[tuple[str, object]] = []

    def request(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        if method == "GET":
            return {"items": self.services}
        self.patches.append((path, kwargs["body"]))
        return {}


def test_a_load_balancer_service_gets_an_address_of_its_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    added: list[tuple[str, str]] = []
    monkeypatch.setattr(network, "add_lb_address", lambda node, address: added.append((node.netns, address)))
    service = {
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
        "spec": {"type": "LoadBalancer"},
    }
    other = {"metadata": {"name": "istiod", "namespace": "istio-system"}, "spec": {"type": "ClusterIP"}}
    api = FakeApi([service, other])
    node = network.NodeNetwork("cluster-b", 1)
    balancers = LoadBalancers({"cluster-b": api}, {"cluster-b": node})  # type: ignore[dict-item]
    balancers.reconcile("cluster-b")
    assert added == [("meshfed-cluster-b", node.lb_addresses[0])]
    path, body = api.patches[0]
    assert path == "/api/v1/namespaces/istio-system/services/istio-eastwestgateway/status"
    assert body == {"status": {"loadBalancer": {"ingress": [{"ip": node.lb_addresses[0], "ipMode": "VIP"}]}}}
    service["status"] = body["status"]  # type: ignore[index]
    balancers.reconcile("cluster-b")
    assert len(api.patches) == 1 and len(added) == 1  # settled: nothing more to do


def test_an_address_given_by_an_earlier_run_stays(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "add_lb_address", lambda node, address: None)
    node = network.NodeNetwork("cluster-a", 0)
    given = {"loadBalancer": {"ingress": [{"ip": node.lb_addresses[3], "ipMode": "VIP"}]}}
    service = {
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
        "spec": {"type": "LoadBalancer"},
        "status": given,
    }
    api = FakeApi([service])
    balancers = LoadBalancers({"cluster-a": api}, {"cluster-a": node})  # type: ignore[dict-item]
    balancers.reconcile("cluster-a")
    assert balancers.assigned == {("cluster-a", "istio-system", "istio-eastwestgateway"): node.lb_addresses[3]}
    assert api.patches == []


def _program(folder: Path, name: str, says: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{says}'\n")
    path.chmod(0o755)


def test_a_bin_dir_needs_the_three_istio_programs_of_one_build(tmp_path: Path) -> None:
    _program(tmp_path, "pilot-discovery", "client version: 1.31-dev")
    _program(tmp_path, "pilot-agent", "client version: 1.30.3")
    with pytest.raises(BackendError, match="must hold pilot-discovery, pilot-agent and istioctl of one build"):
        binaries.build_all("1.30.3", bin_dir=tmp_path, builder=binaries.Builder(tmp_path, run=FakeGo({})))


def test_a_bin_dir_kubernetes_program_of_another_version_is_refused(tmp_path: Path) -> None:
    _program(tmp_path, "kube-apiserver", "Kubernetes v1.33.0")
    with pytest.raises(BackendError, match=r"kube-apiserver says 'Kubernetes v1.33.0', not Kubernetes v1.34.4"):
        binaries.build_all("1.30.3", bin_dir=tmp_path, builder=binaries.Builder(tmp_path, run=FakeGo({})))


def test_the_host_is_checked_before_anything_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshfed.backends.host import backend

    monkeypatch.setattr(backend.platform, "system", lambda: "Darwin")
    with pytest.raises(BackendError, match="runs on Linux, not Darwin: use --backend kind"):
        backend.preflight()
    monkeypatch.setattr(backend.platform, "system", lambda: "Linux")
    monkeypatch.setattr(backend.os, "geteuid", lambda: 1000)
    with pytest.raises(BackendError, match="needs root"):
        backend.preflight()
    monkeypatch.setattr(backend.os, "geteuid", lambda: 0)
    monkeypatch.setattr(backend.shutil, "which", lambda command: None if command in ("ctr", "runc") else "/x")
    with pytest.raises(
        BackendError, match=r"missing on this host: containerd, runc: `apt-get install containerd runc`"
    ):
        backend.preflight()


def test_a_shared_network_in_use_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    routes = "default via 192.0.2.1 dev eth0\n10.250.0.0/16 dev docker7 proto kernel scope link\n"
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": routes)
    with pytest.raises(BackendError, match=r"10\.250\.0\.0/24 .* is already routed on this host"):
        network.SharedNetwork().check_free()
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": "10.250.0.0/24 dev meshfed0 scope link\n")
    network.SharedNetwork().check_free()


def test_an_earlier_runs_clusters_are_found_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From its folders, its namespaces and its cgroups (v1 hierarchies and a hybrid host's unified tree)."""
    from meshfed.backends.host import node, supervisor

    cgroups = tmp_path / "cgroup"
    for hierarchy in ("pids", "memory", "unified"):
        (cgroups / hierarchy).mkdir(parents=True)
        (cgroups / hierarchy / "cgroup.procs").write_text("")
    (cgroups / "unified" / "meshfed-cluster-c").mkdir()
    monkeypatch.setattr(supervisor, "CGROUP_ROOT", cgroups)
    monkeypatch.setattr(node, "CGROUP_ROOT", cgroups)
    assert [d.parent.name for d in supervisor.cgroup_dirs("meshfed-x")] == ["memory", "pids", "unified"]
    clusters = tmp_path / "clusters"
    (clusters / "cluster-a").mkdir(parents=True)
    (clusters / "cluster-a" / "node.json").write_text('{"cluster": "cluster-a", "index": 0}')
    # Another host mesh's namespace and cgroup (prefix meshfedb) are not this mesh's leftovers.
    (cgroups / "pids" / "meshfedb-cluster-a").mkdir()
    namespaces = "meshfed-cluster-b (id: 3)\nmeshfedb-cluster-a (id: 4)\n"
    monkeypatch.setattr(network, "_ip", lambda args, what, ok_if="": namespaces)
    removed: list[tuple[str, int]] = []
    monkeypatch.setattr(node, "remove", lambda net, folder: removed.append((net.netns, net.index)))
    said: list[str] = []
    node.clean_leftovers(clusters, network.SharedNetwork(), said.append)
    assert removed == [("meshfed-cluster-a", 0), ("meshfed-cluster-b", -1), ("meshfed-cluster-c", -1)]
    assert said == ["removing what an earlier run of host mesh meshfed left: cluster-a, cluster-b, cluster-c"]


def test_each_component_gets_its_identity_and_keys_stay_private(tmp_path: Path) -> None:
    import base64
    import stat

    from cryptography import x509

    from meshfed.backends.host import credentials

    credentials.make(tmp_path, "cluster-b", "10.250.0.11", "10.255.11.1")
    keys = [*tmp_path.glob("kubeconfig-*"), *(tmp_path / "pki").glob("*.key")]
    assert len(keys) == 5 + 4
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in keys)
    config = yaml.safe_load((tmp_path / "kubeconfig-node").read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://10.250.0.11:6443"
    data = base64.b64decode(config["users"][0]["user"]["client-certificate-data"])
    assert x509.load_pem_x509_certificate(data).subject.rfc4514_string() == "O=system:nodes,CN=system:node:cluster-b"
    # Each cluster's user has its own name, so kubeconfigs merged with KUBECONFIG=a:b keep both.
    admin = yaml.safe_load((tmp_path / "kubeconfig-admin").read_text())
    assert [u["name"] for u in admin["users"]] == ["cluster-b-admin"]
    assert admin["contexts"] == [{"name": "cluster-b", "context": {"cluster": "cluster-b", "user": "cluster-b-admin"}}]
    serving = x509.load_pem_x509_certificate((tmp_path / "pki" / "apiserver.crt").read_bytes())
    names = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(a) for a in names.get_values_for_type(x509.IPAddress)} == {"10.250.0.11", "10.255.11.1", "127.0.0.1"}


def test_the_canary_revision_is_installed_by_its_own_istioctl_with_its_own_overlay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshfed.backends.kube import KubeCluster
    from meshfed.manifests import CANARY

    first, canary = tmp_path / "first.yaml", tmp_path / "canary.yaml"
    (tmp_path / "kubeconfig").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "a", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "a", "user": {"token": "t"}}],
                "contexts": [{"name": "a", "context": {"cluster": "a", "user": "a"}}],
                "current-context": "a",
            }
        )
    )
    cluster = KubeCluster(
        "cluster-a",
        tmp_path / "kubeconfig",
        None,
        kubectl=Path("kubectl"),
        istioctl_binary=Path("istioctl-1"),
        istioctl_by_revision={CANARY: Path("istioctl-2")},
        install_overlays=(first,),
        overlays_by_revision={CANARY: (canary,)},
    )
    runs: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cluster, "run", lambda binary, args, timeout=0: runs.append((str(binary), args)) or "")
    for revision in ("", CANARY):
        cluster.install({"kind": "IstioOperator", "spec": {"revision": revision}})
    files = [(binary, [a for a in args if not a.startswith("--readiness-timeout")][-2:]) for binary, args in runs]
    assert files == [
        ("istioctl-1", ["-f", str(first)]),
        ("istioctl-2", ["-f", str(canary)]),
    ]


def test_host_up_hands_out_one_kubeconfig_with_a_user_per_cluster(tmp_path: Path) -> None:
    """``meshfed host up``'s kubeconfig: every cluster's context, cluster and user, none shadowing another,
    readable only by its owner (it holds client keys); and the instructions name every context."""
    import stat

    from meshfed.backends.host import bare, credentials
    from meshfed.backends.host.node import HostNode
    from meshfed.topology import MeshSpec, Topology

    spec = MeshSpec.default(Topology.MULTI_PRIMARY, 2)
    nodes = {}
    for index, cluster in enumerate(spec.clusters):
        net = network.NodeNetwork(cluster.name, index)
        files = components.ClusterFiles(tmp_path / "clusters" / cluster.name)
        credentials.make(files.root, cluster.name, net.address, components.api_service_address(net))
        nodes[cluster.name] = HostNode(cluster, net, files)
    path = bare._merged_kubeconfig(nodes, tmp_path / "kubeconfig")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    merged = yaml.safe_load(path.read_text())
    assert [c["name"] for c in merged["contexts"]] == ["cluster-a", "cluster-b"]
    assert [u["name"] for u in merged["users"]] == ["cluster-a-admin", "cluster-b-admin"]
    servers = [c["cluster"]["server"] for c in merged["clusters"]]
    assert servers == ["https://10.250.0.10:6443", "https://10.250.0.11:6443"]
    state = bare.BareClusters(
        {"cluster-a": 0, "cluster-b": 1},
        str(path),
        "/cache/istioctl",
        "/cache/kubectl",
        images.HUB,
        "1.31-dev",
        images.WORKLOAD_IMAGE,
        "/cache/istio-overlay.yaml",
    )
    text = "\n".join(state.instructions())
    assert f"export KUBECONFIG={path}" in text
    assert (
        "--backend existing --context cluster-a=cluster-a --context cluster-b=cluster-b --istioctl /cache/istioctl"
        in text
    )
    assert f"install --context <name> -f <yours> -f /cache/istio-overlay.yaml (hub {images.HUB}, tag 1.31-dev," in text
