"""``meshfed host up`` / ``host down``: bare host clusters, without Istio, that outlive the command.

"kind without containers": the clusters of the host backend (real etcd, kube-apiserver, controller
manager, scheduler, kubelet, kube-proxy, containerd, CoreDNS), Istio's images already in every node
(``images.HUB``, tagged with the build's version) and the LoadBalancer controller, which runs as a
process in the first cluster's cgroup so that removing the clusters removes it too. One kubeconfig holds
a context, cluster and user of its own per cluster. What to install Istio with (istioctl, hub, tag) and
how to point meshfed at the result (``--backend existing``) is printed, and kept in ``up.json``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from meshfed.backends import tools
from meshfed.backends.base import BackendError, Progress
from meshfed.backends.host import images, loadbalancer, network
from meshfed.backends.host.backend import HostBackend, install_overlay, kept_state, preflight, start_nodes
from meshfed.backends.host.instance import DEFAULT_PREFIX, HOST_UP, Hold, HostInstance
from meshfed.backends.host.node import HostNode, clean_leftovers, remove
from meshfed.backends.host.supervisor import Check, Component, Supervisor
from meshfed.install import timed
from meshfed.pki.certs import write_private
from meshfed.topology import MeshSpec, Topology

UP_MARKER = "meshfed host up"  # in each node's kept-mesh.json: a mesh run does not take these clusters over


@dataclass(frozen=True)
class BareClusters:
    """What ``host up`` made, and what a user (or a harness) needs to install Istio on it and certify it."""

    clusters: dict[str, int]  # name -> node index
    kubeconfig: str
    istioctl: str
    kubectl: str
    hub: str
    tag: str
    workload_image: str
    overlay: str  # the IstioOperator every install on these clusters adds: local images, upstream Envoy's settings
    prefix: str = DEFAULT_PREFIX  # the host mesh (--host-prefix)

    def instructions(self) -> list[str]:
        contexts = " ".join(f"--context {name}={name}" for name in self.clusters)
        return [
            f"export KUBECONFIG={self.kubeconfig}",
            f"contexts: {', '.join(self.clusters)} (one context, cluster and user each)",
            f"install Istio with: {self.istioctl} install --context <name> -f <yours> -f {self.overlay} (hub {self.hub}, "
            f"tag {self.tag}, never pulled: the images are in every node; and what Istio needs with upstream Envoy)",
            f"then certify it: pytest conformance/ --backend existing {contexts} --istioctl {self.istioctl} "
            f"--workload-image {self.workload_image}",
            f"remove the clusters: meshfed host down{HostInstance(self.prefix, Path()).flag()}",
        ]


def _state_file(instance: HostInstance) -> Path:
    return instance.root / "up.json"


def read_state(prefix: str = DEFAULT_PREFIX, cache: Path | None = None) -> BareClusters | None:
    path = _state_file(HostInstance(prefix, cache or tools.cache_dir() / "host"))
    try:
        return BareClusters(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def up(count: int, backend: HostBackend, progress: Progress) -> BareClusters:
    """``count`` bare clusters; the same ones again when they are already up (nothing is restarted)."""
    preflight()
    instance = backend.instance()
    built = backend.build(instance.cache, progress)
    spec = MeshSpec.default(Topology.MULTI_PRIMARY, count)  # names, regions and zones; no Istio
    state = read_state(instance.prefix, instance.cache)
    owner = instance.owner()
    if owner is not None and owner.command.startswith(HOST_UP) and state is not None and len(state.clusters) == count:
        progress(f"{', '.join(state.clusters)} are up already")
        return state
    hold = instance.hold(HOST_UP)  # a live run's clusters (or another host up's) are refused here
    try:
        shared = instance.network()
        shared.check_free()
        nodes = HostBackend._nodes(spec, instance, shared, progress)
        if kept_state(nodes.values(), UP_MARKER) != "none":
            raise BackendError(
                f"host clusters of an earlier run are running ({', '.join(nodes)}): remove them with "
                f"`meshfed host clean{instance.flag()}` first"
            )
        clean_leftovers(instance.clusters, shared, progress)
        try:
            start_nodes(nodes, built.bins, built.archive, progress)
            kubeconfig = _merged_kubeconfig(nodes, instance.root / "kubeconfig")
            overlay = instance.root / "istio-overlay.yaml"
            overlay.write_text(yaml.safe_dump(install_overlay(built.tag, upstream_envoy=backend.envoy is None)))
            state = BareClusters(
                clusters={name: node.net.index for name, node in nodes.items()},
                kubeconfig=str(kubeconfig),
                istioctl=str(built.bins["istioctl"]),
                kubectl=str(built.bins["kubectl"]),
                hub=images.HUB,
                tag=built.tag,
                workload_image=images.WORKLOAD_IMAGE,
                overlay=str(overlay),
                prefix=instance.prefix,
            )
            _state_file(instance).write_text(json.dumps(asdict(state), indent=2) + "\n")
            for node in nodes.values():
                node.mark_kept(UP_MARKER)  # only finished clusters are taken as up
            # Last: the controller lives as long as the clusters, and holds them for as long.
            pid = _start_loadbalancers(nodes, hold)
            instance.record(pid, f"{HOST_UP} (its LoadBalancer controller, which keeps the clusters)")
        except BaseException:
            _remove(nodes.values(), instance, shared, progress)
            raise
    finally:
        hold.release()  # the controller's copy holds the lock from here on
    return state


def down(progress: Progress, prefix: str = DEFAULT_PREFIX, cache: Path | None = None) -> list[str]:
    """Stop and remove the clusters of ``host up`` (its LoadBalancer controller with them); the names."""
    instance = HostInstance(prefix, cache or tools.cache_dir() / "host")
    state = read_state(prefix, instance.cache)
    if state is None:
        return []
    owner = instance.owner()
    if owner is not None and not owner.command.startswith(HOST_UP):
        raise BackendError(instance.refusal(owner))
    spec = MeshSpec.default(Topology.MULTI_PRIMARY, len(state.clusters))
    shared = instance.network()
    nodes = HostBackend._nodes(spec, instance, shared, progress)
    _remove(nodes.values(), instance, shared, progress)
    return list(nodes)


def _remove(
    nodes: Iterable[HostNode], instance: HostInstance, shared: network.SharedNetwork, progress: Progress
) -> None:
    found = list(nodes)
    with timed(f"stopping and removing {', '.join(node.name for node in found)}", progress):
        for node in found:
            remove(node.net, node.files.root)
        shared.remove()
    instance.forget()


def _start_loadbalancers(nodes: dict[str, HostNode], hold: Hold) -> int:
    """The controller as a process in the first cluster's cgroup and namespace (the shared bridge reaches
    every API server from there): it lives as long as the clusters, goes with them, and inherits the
    mesh's lock; its PID."""
    first = next(iter(nodes.values()))
    log = first.files.log("loadbalancers")
    shared = first.net.shared
    argv = [
        f"{shared.prefix}:{shared.slot}",
        *(f"{name}={node.net.index}={node.kubeconfig}" for name, node in nodes.items()),
    ]
    component = Component(
        "loadbalancers",
        (sys.executable, "-m", "meshfed.backends.host.loadbalancer", *argv),
        log,
        probe=Check("it started", lambda: loadbalancer.STARTED in log.read_text() if log.exists() else False),
        start_timeout=30,
        pass_fds=(hold.fd,),
    )
    supervisor = Supervisor(first.net.netns, first.net.netns)
    supervisor.start(component)
    return supervisor.pid(component.name)


def _merged_kubeconfig(nodes: dict[str, HostNode], path: Path) -> Path:
    """One kubeconfig with every cluster's context, cluster and user (each user named after its cluster)."""
    merged: dict[str, object] = {"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [], "users": []}
    for node in nodes.values():
        own = yaml.safe_load(node.kubeconfig.read_text())
        for key in ("clusters", "contexts", "users"):
            merged[key] += own[key]
    merged["current-context"] = next(iter(nodes))
    path.unlink(missing_ok=True)
    write_private(path, yaml.safe_dump(merged, sort_keys=False).encode())  # it holds client keys: mode 0600
    return path
