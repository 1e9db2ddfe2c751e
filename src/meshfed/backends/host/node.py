"""One host cluster, brought up and torn down: its node namespace and every process of it.

``up`` runs, in order and each timed: the node's network; certificates and kubeconfigs; etcd,
kube-apiserver, kube-controller-manager (ready once it has published ``kube-root-ca.crt``) and
kube-scheduler; containerd with the images imported; the kubelet (ready once its Node is Ready) and
kube-proxy; CoreDNS. ``down`` stops everything the cluster's cgroup holds (containers and shims
included), unmounts what is mounted under its folder, deletes its namespace and its folder.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from meshfed.backends.base import BackendError, Progress
from meshfed.backends.host import addons, components, credentials, images, network
from meshfed.backends.host.binaries import Binaries
from meshfed.backends.host.supervisor import (
    CGROUP_ROOT,
    Check,
    Component,
    HttpProbe,
    Supervisor,
    ensure_cgroups,
    kill_group,
    unmount_under,
)
from meshfed.backends.kube import KubeApi
from meshfed.install import Applier, timed
from meshfed.topology import ClusterSpec

KEPT = "kept-mesh.json"  # the mesh a --keep-clusters run left in this cluster, written once it was complete


@dataclass
class HostNode:
    spec: ClusterSpec
    net: network.NodeNetwork
    files: components.ClusterFiles
    progress: Progress = lambda _: None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kubeconfig(self) -> Path:
        return self.files.kubeconfig("admin")

    def up(self, bins: Binaries, image_archive: Path) -> None:
        files, net = self.files, self.net
        with timed(f"{self.name}: node network {net.netns} ({net.address} on {net.shared.bridge})", self.progress):
            network.ensure_node(net)  # the shared bridge is there already
        files.root.mkdir(parents=True, exist_ok=True)
        (files.root / "node.json").write_text(json.dumps({"cluster": self.name, "index": net.index}) + "\n")
        credentials.make(files.root, self.name, net.address, components.api_service_address(net))
        (files.root / "containerd").mkdir(exist_ok=True)
        (files.root / "containerd" / "config.toml").write_text(components.containerd_config(files))
        (files.root / "cni").mkdir(exist_ok=True)
        (files.root / "cni" / "10-meshfed.conflist").write_text(components.cni_config(net))
        (files.root / "kubelet.yaml").write_text(components.kubelet_config(files, net))
        (files.root / "kube-proxy.yaml").write_text(components.kube_proxy_config(files, net))
        ensure_cgroups(net.netns)
        supervisor = Supervisor(net.netns, net.netns, self.progress)
        api = KubeApi(self.kubeconfig, None, self.name)
        containerd = _with_check(
            components.containerd(files, net), "containerd answers", files.containerd_socket.exists
        )
        with timed(f"{self.name}: containerd", self.progress):
            supervisor.start(containerd)
        # The images go in while the control plane starts: neither waits for the other.
        with ThreadPoolExecutor(max_workers=1) as background:
            imported = background.submit(images.import_into, files.containerd_socket, image_archive)
            started = time.monotonic()
            control_plane = [
                components.etcd(files, net, bins),
                components.kube_apiserver(files, net, bins),
                _with_check(
                    components.kube_controller_manager(files, net, bins),
                    "kube-root-ca.crt published",
                    lambda: (
                        api.request("GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt", missing_ok=True)
                        is not None
                    ),
                ),
                components.kube_scheduler(files, net, bins),
            ]
            for component in control_plane:
                with timed(f"{self.name}: {component.name}", self.progress):
                    supervisor.start(component)
            with timed(
                f"{self.name}: images imported into containerd (began {time.monotonic() - started:.0f} s ago)",
                self.progress,
            ):
                imported.result()
        node_ready = _with_check(
            components.kubelet(files, net, bins, self.spec.region, self.spec.zone),
            f"Node {self.name} Ready",
            lambda: _node_ready(api, self.name),
        )
        for component in (node_ready, components.kube_proxy(files, net, bins)):
            with timed(f"{self.name}: {component.name}", self.progress):
                supervisor.start(component)

    def down(self) -> None:
        remove(self.net, self.files.root)

    def mark_kept(self, marker: str) -> None:
        (self.files.root / KEPT).write_text(marker)

    def kept_marker(self) -> str:
        try:
            return (self.files.root / KEPT).read_text()
        except OSError:
            return ""

    def answers(self) -> bool:
        """Its API server is ready (a kept cluster after a reboot is not)."""
        probe = HttpProbe(f"https://{self.net.address}:6443/readyz", ca_file=str(self.files.pki / "ca.crt"))
        return probe.ok()


def remove(net: network.NodeNetwork, folder: Path) -> None:
    """Stop everything of a cluster (its cgroup: processes, containers, shims), unmount what is mounted in
    its folder, delete its namespace and its folder."""
    kill_group(net.netns)
    unmount_under(folder)
    network.remove_node(net)
    shutil.rmtree(folder, ignore_errors=True)


def clean_leftovers(clusters: Path, shared: network.SharedNetwork, progress: Progress) -> None:
    """Stop and remove what an earlier run of this host mesh left (after a crash or a kill): every cluster
    folder it wrote, every node namespace and cgroup of its prefix, found on the host and not from memory.
    The caller holds the mesh's lock: no live run's clusters are among them."""
    found: dict[str, int] = {}
    for record in clusters.glob("*/node.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            data = json.loads(record.read_text())
            found[str(data["cluster"])] = int(data["index"])
    for netns in shared.node_namespaces():
        found.setdefault(netns.removeprefix(shared.netns_prefix), -1)
    for group in CGROUP_ROOT.glob(f"*/{shared.netns_prefix}*"):
        found.setdefault(group.name.removeprefix(shared.netns_prefix), -1)
    if not found:
        return
    progress(f"removing what an earlier run of host mesh {shared.prefix} left: {', '.join(sorted(found))}")
    for name, index in sorted(found.items()):
        remove(network.NodeNetwork(name, index, shared), clusters / name)


def _with_check(component: Component, what: str, test: Callable[[], bool]) -> Component:
    return replace(component, probe=Check(what, test))


def _node_ready(api: KubeApi, name: str) -> bool:
    try:
        node = api.request("GET", f"/api/v1/nodes/{name}", missing_ok=True)
    except BackendError:
        return False
    conditions = ((node or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def install_addons(cluster: Applier, net: network.NodeNetwork) -> None:
    for obj in addons.coredns(images.COREDNS_IMAGE, net.dns_address):
        cluster.apply(obj)
