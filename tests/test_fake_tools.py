"""The fake kind, docker, istioctl and kubectl (tests/fakes) record their calls and answer as the real tools do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.manifests import eastwest_gateway
from tests.kube_standin import KubeApiStandIn

FAKES = Path(__file__).resolve().parent / "fakes" / "bin"


@dataclass
class Fakes:
    tmp: Path
    env: dict[str, str]

    @property
    def log(self) -> Path:
        return Path(self.env["MESHFED_FAKE_LOG"])

    def run(self, *argv: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, env={**self.env, **env}, timeout=30, check=False
        )

    def ok(self, *argv: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        result = self.run(*argv, stdin=stdin, **env)
        assert result.returncode == 0, f"{argv}: {result.stderr}"
        return result

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        entries = [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []
        return [e for e in entries if tool in (None, e["tool"])]


@pytest.fixture
def fakes(tmp_path: Path) -> Fakes:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MESHFED_FAKE_") and k != "KUBECONFIG"},
        "PATH": f"{FAKES}{os.pathsep}{os.environ.get('PATH', '')}",
        "MESHFED_FAKE_PYTHON": sys.executable,
        "MESHFED_FAKE_LOG": str(tmp_path / "calls.jsonl"),
        "MESHFED_FAKE_STATE": str(tmp_path / "state"),
        "MESHFED_FAKE_APISERVERS": json.dumps({"a": "http://127.0.0.1:1111", "b": "http://127.0.0.1:2222"}),
    }
    return Fakes(tmp_path, env)


@pytest.fixture
def cluster(fakes: Fakes) -> Iterator[KubeApiStandIn]:
    """Cluster ``a`` behind a stand-in API server, its kubeconfig (context ``kind-a``) in $KUBECONFIG."""
    with KubeApiStandIn("a", lb_pool=["172.18.255.200"], injection=True) as server:
        kubeconfig = fakes.tmp / "kubeconfig"
        kubeconfig.write_text(server.kubeconfig("kind-a"))
        fakes.env["KUBECONFIG"] = str(kubeconfig)
        fakes.env["MESHFED_FAKE_APISERVERS"] = json.dumps({"a": server.url})
        yield server


def test_the_wrappers_run_the_fakes(fakes: Fakes) -> None:
    assert fakes.ok("kind", "version").stdout == "kind v0.31.0 go1.25.5 linux/amd64\n"
    assert fakes.ok("istioctl", "version", "--remote=false").stdout == "client version: 1.30.3\n"
    assert fakes.ok("istioctl", "version", "--remote=false", MESHFED_FAKE_ISTIO_VERSION="1.29.0").stdout.startswith(
        "client version: 1.29.0"
    )
    version = json.loads(fakes.ok("kubectl", "version", "--client", "-o", "json").stdout)
    assert version["clientVersion"]["minor"] == "34" and version["kustomizeVersion"].startswith("v5")
    assert [c["tool"] for c in fakes.calls()] == ["kind", "istioctl", "istioctl", "kubectl"]
    assert fakes.calls("kubectl")[0]["argv"] == ["version", "--client", "-o", "json"]


def test_kind_creates_lists_and_deletes_clusters(fakes: Fakes) -> None:
    empty = fakes.ok("kind", "get", "clusters")
    assert (empty.stdout, empty.stderr) == ("", "No kind clusters found.\n")

    config = fakes.tmp / "kind-a.yaml"
    config.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n")
    kubeconfig = fakes.tmp / "kube" / "a.yaml"
    created = fakes.ok(
        "kind",
        "create",
        "cluster",
        "--name=a",
        "--config",
        str(config),
        "--kubeconfig",
        str(kubeconfig),
        "--wait",
        "60s",
    )
    assert created.stderr.startswith('Creating cluster "a" ...\n')
    assert " ✓ Ensuring node image (kindest/node:v1.35.0) 🖼\n" in created.stderr
    assert " ✓ Waiting ≤ 1m0s for control-plane = Ready ⏳\n" in created.stderr
    assert f"kubectl cluster-info --context kind-a --kubeconfig {kubeconfig}" in created.stderr
    written = yaml.safe_load(kubeconfig.read_text())
    assert written["current-context"] == "kind-a"
    assert written["clusters"][0] == {
        "cluster": {"certificate-authority-data": written["clusters"][0]["cluster"]["certificate-authority-data"],
                    "server": "http://127.0.0.1:1111"},
        "name": "kind-a",
    }  # fmt: skip
    assert fakes.calls("kind")[-1]["config"] == config.read_text()

    # without --kubeconfig nor $KUBECONFIG the kubeconfig goes to the state folder, never to ~/.kube
    fakes.ok("kind", "create", "cluster", "-n", "b")
    merged = yaml.safe_load((fakes.tmp / "state" / "kubeconfig").read_text())
    assert [c["name"] for c in merged["contexts"]] == ["kind-b"]

    again = fakes.run("kind", "create", "cluster", "--name", "a")
    assert again.returncode == 1
    assert again.stderr.endswith(
        'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "a"\n'
    )
    assert fakes.ok("kind", "get", "clusters").stdout == "a\nb\n"

    internal = yaml.safe_load(fakes.ok("kind", "get", "kubeconfig", "--name", "a", "--internal").stdout)
    assert internal["clusters"][0]["cluster"]["server"] == "https://a-control-plane:6443"
    external = yaml.safe_load(fakes.ok("kind", "get", "kubeconfig", "--name", "b").stdout)
    assert external["clusters"][0]["cluster"]["server"] == "http://127.0.0.1:2222"

    ip = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    assert fakes.ok("docker", "inspect", "-f", ip, "a-control-plane").stdout == "172.18.0.2\n"
    assert fakes.ok("docker", "inspect", "--format", ip, "b-control-plane").stdout == "172.18.0.3\n"
    missing = fakes.run("docker", "inspect", "-f", ip, "c-control-plane")
    assert (missing.returncode, missing.stderr) == (1, "Error: No such object: c-control-plane\n")

    deleted = fakes.ok("kind", "delete", "cluster", "--name", "a", "--kubeconfig", str(kubeconfig))
    assert deleted.stderr == 'Deleting cluster "a" ...\nDeleted nodes: ["a-control-plane"]\n'
    assert yaml.safe_load(kubeconfig.read_text())["contexts"] == []
    assert fakes.ok("kind", "delete", "cluster", "--name", "gone").stderr == 'Deleting cluster "gone" ...\n'
    assert fakes.ok("kind", "get", "clusters").stdout == "b\n"
    assert [c["argv"][:2] for c in fakes.calls("kind")][-3:] == [["delete", "cluster"]] * 2 + [["get", "clusters"]]


def test_an_injected_failure_answers_like_the_real_tool(fakes: Fakes) -> None:
    failed = fakes.run("kind", "create", "cluster", "--name", "a", MESHFED_FAKE_FAIL="--name a")
    assert failed.returncode == 1
    assert " ✗ Starting control-plane 🕹️\n" in failed.stderr
    assert failed.stderr.splitlines()[-1].startswith(
        "ERROR: failed to create cluster: failed to init node with kubeadm"
    )
    assert fakes.ok("kind", "get", "clusters").stdout == ""
    assert fakes.calls("kind")[0]["exitCode"] == 1


def test_unknown_commands_and_flags(fakes: Fakes) -> None:
    expected = {
        "kind": 'ERROR: unknown command "frob" for "kind"\n',
        "istioctl": 'Error: unknown command "frob" for "istioctl"\nRun \'istioctl --help\' for usage.\n',
        "kubectl": 'error: unknown command "frob" for "kubectl"\n',
    }
    for tool, text in expected.items():
        result = fakes.run(tool, "frob")
        assert (result.returncode, result.stderr) == (1, text)
    docker = fakes.run("docker", "frob")
    assert docker.returncode == 1 and docker.stderr.startswith("docker: unknown command: docker frob")
    flag = fakes.run("kubectl", "get", "pods", "--frob")
    assert flag.returncode == 1 and flag.stderr.startswith("error: unknown flag: --frob")


def test_docker(fakes: Fakes) -> None:
    info = json.loads(fakes.ok("docker", "info", "--format", "{{json .}}").stdout)
    assert info["MemTotal"] == 16 * 1024**3 and info["CgroupVersion"] == "2" and info["NCPU"] > 0
    assert "name=seccomp,profile=builtin" in info["SecurityOptions"]
    small = fakes.ok("docker", "info", "--format", "{{.MemTotal}}", MESHFED_FAKE_DOCKER_MEM="4294967296")
    assert small.stdout == "4294967296\n"
    assert fakes.ok("docker", "version", "--format", "{{.Server.Version}}").stdout.strip().count(".") == 2

    absent = fakes.run("docker", "network", "inspect", "kind")
    assert (absent.returncode, absent.stdout, absent.stderr) == (1, "[]\n", "Error: No such network: kind\n")
    fakes.ok("kind", "create", "cluster", "--name", "a")
    network = json.loads(fakes.ok("docker", "network", "inspect", "kind").stdout)
    assert network[0]["Driver"] == "bridge" and network[0]["EnableIPv6"] is True
    assert [c["Name"] for c in network[0]["Containers"].values()] == ["a-control-plane"]
    ipam = json.loads(fakes.ok("docker", "network", "inspect", "-f", "{{json .IPAM.Config}}", "kind").stdout)
    assert ipam == [{"Subnet": "fc00:f853:ccd:e793::/64"}, {"Subnet": "172.18.0.0/16", "Gateway": "172.18.0.1"}]
    names = fakes.ok("docker", "ps", "--filter", "label=io.x-k8s.kind.cluster=a", "--format", "{{.Names}}")
    assert names.stdout == "a-control-plane\n"

    down = fakes.run("docker", "info", MESHFED_FAKE_DOCKER_DOWN="1")
    assert (down.returncode, down.stdout) == (1, "")
    assert down.stderr == (
        "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n"
    )


def test_calls_in_parallel_are_all_recorded(fakes: Fakes) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: fakes.run("kind", "get", "clusters", f"--verbosity={i}"), range(16)))
    assert all(r.returncode == 0 for r in results)
    assert sorted(c["argv"][-1] for c in fakes.calls()) == sorted(f"--verbosity={i}" for i in range(16))


CONTROL_PLANE = """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
metadata:
  name: control-plane
  namespace: istio-system
spec:
  revision: r1
  meshConfig:
    trustDomain: cluster.local
  values:
    global:
      meshID: mesh1
      multiCluster:
        clusterName: a
      network: network1
"""


def test_istioctl_install_creates_the_control_plane_and_gateway(fakes: Fakes, cluster: KubeApiStandIn) -> None:
    iop = fakes.tmp / "iop.yaml"
    iop.write_text(CONTROL_PLANE)
    installed = fakes.ok("istioctl", "install", "-y", "-f", str(iop), "--context", "kind-a")
    assert installed.stderr.splitlines()[0] == "✔ Istio core installed ⛵️"
    assert installed.stderr.splitlines()[-2:] == ["✔ Istiod installed 🧠", "✔ Installation complete"]
    istiod = cluster.object("/apis/apps/v1/namespaces/istio-system/deployments/istiod-r1")
    assert istiod is not None
    assert istiod["metadata"]["labels"]["istio.io/rev"] == "r1" and istiod["metadata"]["labels"]["app"] == "istiod"
    assert istiod["spec"]["template"]["spec"]["containers"][0]["image"] == "docker.io/istio/pilot:1.30.3"
    assert cluster.object("/api/v1/namespaces/istio-system/configmaps/istio-r1") is not None
    patches = [r for r in cluster.requests if r[0] == "PATCH"]
    assert patches and all("fieldManager=istioctl" in path and "force=true" in path for _, path, _ in patches)

    gateway = fakes.tmp / "eastwest.json"
    gateway.write_text(json.dumps(eastwest_gateway("network1")))
    out = fakes.ok("istioctl", "install", "--skip-confirmation", f"--filename={gateway}", "--context=kind-a")
    assert out.stderr == "✔ Ingress gateways installed 🛬\n✔ Installation complete\n"
    service = cluster.object("/api/v1/namespaces/istio-system/services/istio-eastwestgateway")
    assert service is not None and service["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in service["spec"]["ports"]] == [15021, 15443, 15012, 15017]
    deployment = cluster.object("/apis/apps/v1/namespaces/istio-system/deployments/istio-eastwestgateway")
    assert deployment is not None
    assert deployment["metadata"]["labels"]["topology.istio.io/network"] == "network1"

    assert "control plane version: 1.30.3" in fakes.ok("istioctl", "version", "--context", "kind-a").stdout
    meshed = json.loads(fakes.ok("istioctl", "version", "-o", "json", "--context", "kind-a").stdout)
    assert meshed["meshVersion"][0]["Revision"] == "r1"

    removed = fakes.ok("istioctl", "uninstall", "--revision", "r1", "-y", "--context", "kind-a")
    assert "  Removed apps/v1, Kind=Deployment/istiod-r1.istio-system." in removed.stdout
    assert removed.stderr.endswith("✔ Uninstall complete\n")
    assert cluster.object("/apis/apps/v1/namespaces/istio-system/deployments/istiod-r1") is None
    assert cluster.object("/apis/apps/v1/namespaces/istio-system/deployments/istio-eastwestgateway") is not None
    unknown = fakes.run("istioctl", "uninstall", "--revision", "r1", "-y", "--context", "kind-a")
    assert (unknown.returncode, unknown.stderr) == (1, "Error: could not find target revision\n")


def test_remote_secret_and_remote_clusters(fakes: Fakes, cluster: KubeApiStandIn) -> None:
    text = fakes.ok(
        "istioctl", "create-remote-secret", "--context=kind-a", "--name", "b", "--server", "https://b:6443"
    ).stdout
    assert text.startswith("# This file is autogenerated, do not edit.\napiVersion: v1\nkind: Secret\n")
    (secret,) = [d for d in yaml.safe_load_all(text) if d]
    assert secret["metadata"] == {
        "annotations": {"networking.istio.io/cluster": "b"},
        "labels": {"istio/multiCluster": "true"},
        "name": "istio-remote-secret-b",
        "namespace": "istio-system",
    }
    kubeconfig = yaml.safe_load(secret["stringData"]["b"])
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://b:6443"
    assert kubeconfig["users"][0]["user"]["token"].count(".") == 2
    assert kubeconfig["current-context"] == "b"

    iop = fakes.tmp / "iop.yaml"
    iop.write_text(CONTROL_PLANE.replace("  revision: r1\n", ""))
    fakes.ok("istioctl", "install", "-y", "-f", str(iop))  # the current context of $KUBECONFIG
    applied = fakes.ok("kubectl", "--context", "kind-a", "apply", "-f", "-", stdin=text)
    assert applied.stdout == "secret/istio-remote-secret-b created\n"
    assert fakes.calls("kubectl")[-1]["stdin"] == text
    table = fakes.ok("istioctl", "remote-clusters", "--context", "kind-a").stdout.splitlines()
    assert table[0].split() == ["NAME", "SECRET", "STATUS", "ISTIOD", "REVISION"]
    rows = [line.split() for line in table[1:]]
    assert [r[0] for r in rows] == ["a", "b"]
    assert rows[0][1] == "synced" and rows[0][2].startswith("istiod-")
    assert rows[1][1:3] == ["istio-system/istio-remote-secret-b", "synced"]


CLIENT = """\
apiVersion: v1
kind: Namespace
metadata:
  name: meshfed
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: client
  namespace: meshfed
spec:
  replicas: 1
  selector:
    matchLabels: {app: client}
  template:
    metadata:
      labels: {app: client}
    spec:
      serviceAccountName: client
      containers:
      - name: client
        image: python:3.12.12-slim-bookworm
"""


def test_kubectl_apply_get_and_exec(fakes: Fakes, cluster: KubeApiStandIn) -> None:
    manifest = fakes.tmp / "client.yaml"
    manifest.write_text(CLIENT)
    applied = fakes.ok("kubectl", "apply", "--server-side", "-f", str(manifest), "--context", "kind-a")
    assert applied.stdout == "namespace/meshfed serverside-applied\ndeployment.apps/client serverside-applied\n"
    assert cluster.object("/apis/apps/v1/namespaces/meshfed/deployments/client") is not None
    fakes.ok("kubectl", "rollout", "status", "deployment/client", "-n", "meshfed", "--timeout=10s")
    pod = fakes.ok(
        "kubectl", "--context", "kind-a", "-n", "meshfed", "get", "pods", "-l", "app=client",
        "-o", "jsonpath={.items[0].metadata.name}",
    ).stdout  # fmt: skip
    assert pod.startswith("client-")

    call = [
        "kubectl", "--context", "kind-a", "exec", pod, "-n", "meshfed", "-c", "client", "--",
        "python", "/meshfed/echo.py", "call", "http://echo.meshfed:8080/", "--count", "3", "--header", "X-Test:1",
    ]  # fmt: skip
    lines = [json.loads(line) for line in fakes.ok(*call).stdout.splitlines()]
    assert len(lines) == 3
    assert set(lines[0]) == {"status", "reply", "body", "error", "latencyMs"}
    assert lines[0]["status"] == 200 and lines[0]["reply"]["service"] == "echo"
    assert lines[0]["reply"]["cluster"] == "a"
    assert lines[0]["reply"]["caller"] == "spiffe://cluster.local/ns/meshfed/sa/client"
    assert lines[0]["reply"]["headers"]["x-test"] == "1"
    failing = [json.loads(line) for line in fakes.ok(*call, MESHFED_FAKE_CALL_STATUS="503").stdout.splitlines()]
    assert failing[0]["status"] == 503 and failing[0]["reply"] is None
    assert failing[0]["body"].startswith("upstream connect error")
    assert fakes.calls("kubectl")[-1]["argv"] == call[1:]

    missing = fakes.run("kubectl", "exec", "-n", "meshfed", "nope", "--", "python", "/meshfed/echo.py", "call", "x")
    assert (missing.returncode, missing.stderr) == (1, 'Error from server (NotFound): pods "nope" not found\n')


def test_proxy_secret_dump(fakes: Fakes, cluster: KubeApiStandIn) -> None:
    fakes.ok("kubectl", "apply", "-f", "-", stdin=CLIENT)
    pod = fakes.ok("kubectl", "get", "pods", "-n", "meshfed", "-o", "name").stdout.strip().split("/")[1]
    dump = fakes.tmp / "dump.json"
    dump.write_text(json.dumps({"dynamicActiveSecrets": [{"name": "default"}]}))
    printed = fakes.ok(
        "istioctl", "proxy-config", "secret", f"{pod}.meshfed", "-o", "json", MESHFED_FAKE_PROXY_SECRET=str(dump)
    )
    assert json.loads(printed.stdout) == {"dynamicActiveSecrets": [{"name": "default"}]}
    assert json.loads(fakes.ok("istioctl", "pc", "secret", f"{pod}.meshfed", "-o", "json").stdout) == {}
