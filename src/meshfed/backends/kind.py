"""The ``kind`` backend: a mesh of kind clusters in Docker, installed with ``istioctl`` as Istio's guides do.

It follows Istio's own kind CI (``common/scripts/kind_provisioner.sh``): clusters created side by side,
each with its own pod and service subnets (and here its region/zone node labels); MetalLB in every
cluster with its own slice of the docker ``kind`` network for the east-west gateways; remote secrets
that reach each API server at its control-plane container's address on that network (never
127.0.0.1, which means the pod itself inside a cluster). The suite talks to each cluster through
the kubeconfig ``kind create cluster`` writes (127.0.0.1 and a published port).

``--keep-clusters`` keeps the clusters, and a later run with it reuses them: when every cluster
carries the marker of the same mesh (topology, clusters, Istio version, root of trust, image), the
install plan is skipped. Without it the clusters are deleted at the end, after a failure or Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from pytest_kind import KindCluster

from meshfed import manifests
from meshfed.backends import evidence, preflight, tools
from meshfed.backends.base import Backend, BackendError, Progress
from meshfed.backends.kube import KubeCluster, KubeMesh
from meshfed.install import Step, StepKind, execute, mesh_marker, plan, timed
from meshfed.manifests import CANARY, Obj
from meshfed.topology import ClusterSpec, MeshSpec

PREFIX = "meshfed-"
STATE_CONFIGMAP = "meshfed-state"
METALLB_NAMESPACE = "metallb-system"
ADDRESSES_PER_CLUSTER = 32
ISTIO_HUB = "docker.io/istio"  # where a release's istioctl takes its images from


def kind_name(cluster: str) -> str:
    return PREFIX + cluster


def kind_config(cluster: ClusterSpec, index: int, image: str) -> Obj:
    """The kind cluster: its own pod and service subnets (as Istio's CI topologies), region and zone labels."""
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"podSubnet": f"10.{10 + index}.0.0/16", "serviceSubnet": f"10.255.{10 + index}.0/24"},
        "nodes": [
            {
                "role": "control-plane",
                "image": image,
                "labels": {
                    "topology.kubernetes.io/region": cluster.region,
                    "topology.kubernetes.io/zone": cluster.zone,
                },
            }
        ],
    }


def ipv4_subnet(network_inspect: str) -> ipaddress.IPv4Network:
    """The IPv4 subnet of ``docker network inspect kind`` (Docker lists IPv4 and IPv6 in either order)."""
    try:
        networks = json.loads(network_inspect)
        configs = networks[0]["IPAM"]["Config"] or []
    except (ValueError, LookupError, TypeError):
        raise BackendError("cannot read `docker network inspect kind`: recreate the network with kind") from None
    for config in configs:
        subnet = ipaddress.ip_network(config.get("Subnet", "::/128"), strict=False)
        if isinstance(subnet, ipaddress.IPv4Network):
            return subnet
    raise BackendError("the docker network 'kind' has no IPv4 subnet: MetalLB needs one; recreate it with IPv4")


def address_slices(subnet: ipaddress.IPv4Network, count: int) -> list[list[str]]:
    """Per cluster, a slice of the addresses Istio's CI gives MetalLB (``cidr_to_ips`` in
    common/scripts/kind_provisioner.sh): hosts 1000 to 1999 of a subnet larger than 2000 addresses (on kind's
    usual 172.18.0.0/16, 172.18.3.233 onwards, clear of the first thousand Docker hands out to containers
    from the bottom), else the top quarter of a small subnet."""
    hosts = subnet.num_addresses - 2
    start, end = (1000, 2000) if hosts > 2000 else (hosts * 3 // 4, hosts)
    pool = [str(subnet.network_address + 1 + offset) for offset in range(start, end)]
    size = min(ADDRESSES_PER_CLUSTER, len(pool) // count)
    if size < 2:
        raise BackendError(
            f"the docker network 'kind' ({subnet}) is too small for {count} clusters' load balancer addresses: "
            "delete it (`docker network rm kind`, after deleting every kind cluster) so kind recreates a /16"
        )
    return [pool[i * size : (i + 1) * size] for i in range(count)]


def pool_addresses(entries: Sequence[str]) -> set[ipaddress.IPv4Address]:
    """The IPv4 addresses of a MetalLB pool's ``spec.addresses`` (CIDRs and ``first-last`` ranges)."""
    found: set[ipaddress.IPv4Address] = set()
    for entry in entries:
        try:
            if "-" in entry:
                first, last = (ipaddress.ip_address(part.strip()) for part in entry.split("-", 1))
                if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):
                    found.update(ipaddress.IPv4Address(i) for i in range(int(first), int(last) + 1))
            else:
                network = ipaddress.ip_network(entry, strict=False)
                if isinstance(network, ipaddress.IPv4Network) and network.num_addresses <= 1 << 16:
                    found.update(network)
        except ValueError:
            continue
    return found


def istio_images(versions: Sequence[str], hub: str | None, tag: str | None) -> list[str]:
    """The images ``istioctl install`` runs for these releases: pilot and proxyv2 from ``hub`` (istioctl's
    default ``docker.io/istio``), tagged ``tag`` for the first release and each release's version otherwise."""
    found = []
    for index, version in enumerate(dict.fromkeys(versions)):
        chosen = tag if tag and index == 0 else version
        found += [f"{hub or ISTIO_HUB}/{name}:{chosen}" for name in ("pilot", "proxyv2")]
    return found


def manifest_images(manifest: str) -> list[str]:
    """Every ``image:`` of a manifest (MetalLB's controller and speaker)."""
    return list(dict.fromkeys(re.findall(r"^\s*image:\s*[\"']?([^\s\"']+)", manifest, re.MULTILINE)))


def image_overlay(hub: str | None, tag: str | None) -> Obj:
    """An IstioOperator overlay (a second ``istioctl install -f``) taking Istio's images from a mirror."""
    spec: Obj = {"hub": hub} if hub else {}
    if tag:
        spec["tag"] = tag
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": spec}


def metallb_pool(addresses: Sequence[str]) -> list[Obj]:
    meta = {"namespace": METALLB_NAMESPACE}
    return [
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "default-pool", **meta},
            "spec": {"addresses": [f"{address}/32" for address in addresses]},
        },
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": {"name": "default-l2", **meta},
            "spec": {"ipAddressPools": ["default-pool"]},
        },
    ]


class KindBackend(Backend):
    name = "kind"

    def __init__(
        self,
        istio_version: str,
        *,
        upgrade_to: str | None = None,
        keep_clusters: bool = False,
        node_image: str = tools.NODE_IMAGE,
        istio_hub: str | None = None,
        istio_tag: str | None = None,
        download: tools.Download | None = None,
        state_dir: Path | None = None,
        run: preflight.Run | None = None,
        host: preflight.HostPaths | None = None,
    ) -> None:
        self.host = host or preflight.HostPaths()
        self.istio_version = istio_version
        self.upgrade_to = upgrade_to or istio_version
        self.keep_clusters = keep_clusters
        self.node_image = node_image
        self.istio_hub = istio_hub
        self.istio_tag = istio_tag
        self.download = download or tools._http_get
        self.state_dir = state_dir or tools.cache_dir() / "kind"
        self._run_command = run or _run

    # Commands
    def run(self, command: list[str], what: str) -> str:
        try:
            done = self._run_command(command)
        except FileNotFoundError:
            raise BackendError(f"{command[0]} is not installed: install it and run again") from None
        except subprocess.TimeoutExpired as error:
            raise BackendError(
                f"{what} did not finish within {error.timeout:g} s (`{' '.join(command[:4])} ...`): check that "
                "Docker answers (`docker ps`) and run again"
            ) from None
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-2:]
            raise BackendError(f"{what} failed (`{' '.join(command[:4])} ...`): {' / '.join(last) or 'no output'}")
        return done.stdout

    def provision(
        self, spec: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]], progress: Progress = lambda _: None
    ) -> KubeMesh:
        preflight.check_istio_supports([self.istio_version, self.upgrade_to], self.node_image)
        info = preflight.docker_info(self._run_command)
        preflight.check_cgroup(info, self.node_image)
        names = [kind_name(cluster.name) for cluster in spec.all_clusters]
        toolbox = tools.find_tools(
            [self.istio_version, self.upgrade_to], need_kind=True, download=self.download, progress=progress
        )
        existing = self._kind_clusters(toolbox)
        present = [name for name in names if name in existing]
        if present and not self.keep_clusters:
            raise BackendError(
                f"kind clusters {', '.join(present)} already exist (kept by an earlier --keep-clusters run?): run "
                f"with --keep-clusters to reuse them, or delete them with `kind delete cluster --name NAME`"
            )
        marker = mesh_marker(spec, self.istio_version, cacerts)
        # A kept cluster is reused only when it holds this very mesh, finished (the marker is written
        # last). Installing another mesh over it would leave the old one's pieces (a root istiod will
        # not swap, remote secrets, gateways): it is recreated instead.
        stale = [name for name in present if self._kept_marker(toolbox, name) != marker]
        if stale:
            progress(f"the kept clusters {', '.join(stale)} hold another mesh, or an unfinished one: recreating them")
            self._delete(toolbox, stale)
        missing = [name for name in names if name not in present or name in stale]
        if missing:
            preflight.check_memory(info, len(missing), self.host.meminfo)
            preflight.check_inotify(len(names), self.host.inotify)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            if missing:
                with timed(f"creating kind clusters {', '.join(missing)} ({self.node_image})", progress):
                    self._create(spec, toolbox, missing)
                self._check_nodes(missing, progress)
                self._load_local_images(spec, toolbox, missing, progress)
            clusters = {cluster.name: self._cluster(cluster.name, toolbox, spec) for cluster in spec.all_clusters}

            def run_plan(steps: Sequence[Step]) -> None:
                execute(
                    list(steps),
                    spec,
                    clusters,
                    gateway_address=lambda name: self._gateway_address(clusters[name]),
                    remote_secret=lambda source, _dest: clusters[source].create_remote_secret(
                        f"https://{self._container_ip(kind_name(source) + '-control-plane')}:6443"
                    ),
                    control_plane_address=lambda name: self._gateway_address(clusters[name], control_plane=True),
                    config_secret=lambda source: clusters[source].create_remote_secret(
                        f"https://{self._container_ip(kind_name(source) + '-control-plane')}:6443", config=True
                    ),
                    progress=progress,
                )

            if not missing:
                progress(f"reusing the kept clusters {', '.join(names)}: same mesh, install plan skipped")
                addresses = self._addresses(spec, clusters)
                kept = _kept_addresses(next(iter(clusters.values())))
                redo = _steps_behind_moved_addresses(spec, cacerts, kept, addresses, progress)
                run_plan(redo)
                if spec.external is not None and any(step.kind is StepKind.CONFIG_SECRET for step in redo):
                    # istiod reads its kubeconfig only as it starts
                    clusters[spec.external.name].rollout_restart("istiod", manifests.ISTIO_SYSTEM, timeout=300)
            else:
                self._metallb(spec, toolbox, clusters, progress)
                run_plan(plan(spec, cacerts))
                addresses = self._addresses(spec, clusters)
            for cluster in clusters.values():
                cluster.apply(_state_configmap(marker, addresses))
        except BaseException:
            if not self.keep_clusters:
                with contextlib.suppress(BackendError):
                    self._delete(toolbox, names)
            raise
        data_plane, external = _split(spec, clusters)
        if self.keep_clusters:
            return KubeMesh(
                "kind",
                spec,
                self.istio_version,
                data_plane,
                lambda: progress(f"kept {', '.join(names)}"),
                external=external,
            )
        return KubeMesh(
            "kind", spec, self.istio_version, data_plane, lambda: self._delete(toolbox, names), external=external
        )

    def connect(self, spec: MeshSpec, progress: Progress = lambda _: None) -> KubeMesh:
        """The clusters a --keep-clusters run left, read as they are (for ``meshfed doctor``); nothing is deleted."""
        toolbox = tools.find_tools([self.istio_version], need_kind=True, download=self.download, progress=progress)
        names = [kind_name(cluster.name) for cluster in spec.all_clusters]
        missing = [name for name in names if name not in self._kind_clusters(toolbox)]
        if missing:
            raise BackendError(
                f"no kind cluster {', '.join(missing)}: run the suite with --backend kind --keep-clusters first "
                "(with the same --topology and --clusters)"
            )
        clusters = {cluster.name: self._cluster(cluster.name, toolbox, spec) for cluster in spec.all_clusters}
        data_plane, external = _split(spec, clusters)
        return KubeMesh("kind", spec, self.istio_version, data_plane, lambda: None, external=external)

    def _kind_clusters(self, toolbox: tools.Toolbox) -> set[str]:
        return set(self.run([str(toolbox.kind), "get", "clusters"], "listing kind clusters").split())

    def _kubeconfig(self, name: str) -> Path:
        return self.state_dir / f"kubeconfig-{name}"

    def _create(self, spec: MeshSpec, toolbox: tools.Toolbox, names: Sequence[str]) -> None:
        """Create the clusters side by side with pytest-kind, given the pinned kind, kubectl and node image."""
        configs = {}
        for index, cluster in enumerate(spec.all_clusters):
            if kind_name(cluster.name) in names:
                path = self.state_dir / f"kind-config-{cluster.name}.yaml"
                path.write_text(yaml.safe_dump(kind_config(cluster, index, self.node_image), sort_keys=False))
                configs[kind_name(cluster.name)] = path

        def create(name: str) -> str:
            kubeconfig = self._kubeconfig(name)
            cluster = KindCluster(
                name, kubeconfig=kubeconfig, image=self.node_image, kind_path=toolbox.kind, kubectl_path=toolbox.kubectl
            )
            try:
                cluster.create(configs[name])
            except subprocess.CalledProcessError as error:
                raise BackendError(
                    f"`kind create cluster --name {name}` failed (exit {error.returncode}): see kind's output "
                    "above; `docker ps -a` shows what is left, `kind delete cluster --name NAME` removes it"
                ) from None
            kubeconfig.chmod(0o600)
            return name

        with _pytest_kind_folder(), ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = [pool.submit(create, name) for name in names]
            errors = []
            for future in futures:
                try:
                    future.result()
                except BackendError as error:
                    errors.append(error)
        if errors:
            raise errors[0]

    @staticmethod
    def _check_nodes(names: Sequence[str], progress: Progress) -> None:
        """Each new node container runs its kubelet (testinfra, docker://), before anything is installed."""
        for name in names:
            found = evidence.node(f"{name}-control-plane")
            if found.ok is False:
                raise BackendError(f"{found.text}: the node did not come up; see `{found.hint}`")
            progress(found.text)

    def _cluster(self, name: str, toolbox: tools.Toolbox, spec: MeshSpec | None = None) -> KubeCluster:
        istioctl = toolbox.istioctl_for(self.istio_version)
        external = spec is not None and spec.external is not None
        by_revision = {CANARY: toolbox.istioctl_for(self.upgrade_to)}
        return KubeCluster(
            name,
            self._kubeconfig(kind_name(name)),
            f"kind-{kind_name(name)}",
            kubectl=toolbox.kubectl,
            istioctl_binary=istioctl,
            istioctl_by_revision=by_revision,
            node_container=f"{kind_name(name)}-control-plane",
            node_command=("docker", "exec", f"{kind_name(name)}-control-plane"),
            control_plane_namespace=manifests.EXTERNAL_ISTIOD if external else manifests.ISTIO_SYSTEM,
            install_overlays=self._image_overlay("images", self.istio_tag),
            # The canary takes the same tag when it is the same release, else its istioctl's own.
            overlays_by_revision={
                CANARY: self._image_overlay(
                    "images-canary", self.istio_tag if self.upgrade_to == self.istio_version else None
                )
            },
        )

    def _image_overlay(self, name: str, tag: str | None) -> tuple[Path, ...]:
        """``--istio-hub``/``--istio-tag`` as an overlay file for ``istioctl install`` (none without them)."""
        if not self.istio_hub and not tag:
            return ()
        path = self.state_dir / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(image_overlay(self.istio_hub, tag), sort_keys=False))
        return (path,)

    def _load_local_images(
        self, spec: MeshSpec, toolbox: tools.Toolbox, names: Sequence[str], progress: Progress
    ) -> None:
        """Images the mesh needs that the local Docker already has go into the new nodes (`kind load
        docker-image`), so that a machine holding them pulls nothing; the others the nodes pull themselves."""
        assert toolbox.metallb_manifest is not None
        wanted = [
            *istio_images([self.istio_version, self.upgrade_to], self.istio_hub, self.istio_tag),
            spec.workload_image,
            *manifest_images(toolbox.metallb_manifest.read_text()),
        ]
        present = [
            image for image in wanted if self._run_command(["docker", "image", "inspect", image]).returncode == 0
        ]
        absent = [image for image in wanted if image not in present]
        if absent:
            progress(f"not in the local Docker, so the nodes pull them: {', '.join(absent)}")
        if not present:
            return
        with timed(f"loading {len(present)} local images into {', '.join(names)}: {', '.join(present)}", progress):
            for name in names:
                self.run(
                    [str(toolbox.kind), "load", "docker-image", *present, "--name", name], f"loading images into {name}"
                )

    def _container_ip(self, container: str) -> str:
        fmt = "{{ .NetworkSettings.Networks.kind.IPAddress }}"
        address = self.run(["docker", "inspect", container, "--format", fmt], f"finding {container}'s address").strip()
        if not address:
            raise BackendError(f"{container} has no address on the docker network 'kind': recreate the cluster")
        return address

    def _metallb(
        self, spec: MeshSpec, toolbox: tools.Toolbox, clusters: Mapping[str, KubeCluster], progress: Progress
    ) -> None:
        subnet = ipv4_subnet(self.run(["docker", "network", "inspect", "kind"], "reading the docker network 'kind'"))
        slices = address_slices(subnet, len(spec.all_clusters))
        ours = {
            kind_name(c.name): pool_addresses(addresses) for c, addresses in zip(spec.all_clusters, slices, strict=True)
        }
        for other, entries in self._other_pools(toolbox, list(ours)).items():
            shared = sorted(address for taken in ours.values() for address in taken & pool_addresses(entries))
            if shared:
                progress(
                    f"warning: the kind cluster {other} has a MetalLB pool ({', '.join(entries)}) on the same docker "
                    f"network holding {len(shared)} of meshfed's load balancer addresses ({shared[0]}-{shared[-1]}): "
                    "two clusters may answer for one address; delete that cluster or give its pool other addresses"
                )
        assert toolbox.metallb_manifest is not None
        for cluster_spec, addresses in zip(spec.all_clusters, slices, strict=True):
            cluster = clusters[cluster_spec.name]
            with timed(
                f"{cluster.name}: MetalLB {tools.METALLB_VERSION}, addresses {addresses[0]}-{addresses[-1]}", progress
            ):
                cluster.run(toolbox.kubectl, ["apply", "-f", str(toolbox.metallb_manifest)])
                if not cluster.wait_ready("controller", METALLB_NAMESPACE, timeout=300):
                    raise BackendError(
                        f"{cluster.name}: MetalLB's controller did not get ready in 300 s: "
                        f"see `kubectl --context {cluster.context} -n {METALLB_NAMESPACE} get pods`"
                    )
                # The pool is validated by MetalLB's webhook, which answers a little after the controller is ready.
                _retry(functools.partial(_apply_all, cluster, metallb_pool(addresses)), seconds=120)

    def _other_pools(self, toolbox: tools.Toolbox, ours: Sequence[str]) -> dict[str, list[str]]:
        """The MetalLB pools of the other kind clusters (they share the docker network 'kind'), read as far as
        each answers; a cluster without MetalLB, or one that does not answer, has none."""
        pools: dict[str, list[str]] = {}
        for other in sorted(self._kind_clusters(toolbox) - set(ours)):
            try:
                text = self.run(
                    [str(toolbox.kind), "get", "kubeconfig", "--name", other], f"reading {other}'s kubeconfig"
                )
                # Its own file, 0600 (it holds the cluster's client key), deleted once read.
                with tempfile.NamedTemporaryFile("w", dir=self.state_dir, prefix=".kubeconfig-") as file:
                    file.write(text)
                    file.flush()
                    cluster = KubeCluster(
                        other,
                        Path(file.name),
                        f"kind-{other}",
                        kubectl=toolbox.kubectl,
                        istioctl_binary=Path("istioctl"),
                    )
                found = cluster.list("IPAddressPool")
            except BackendError:
                continue
            pools[other] = [str(a) for pool in found for a in (pool.get("spec") or {}).get("addresses") or []]
        return {name: entries for name, entries in pools.items() if entries}

    def _addresses(self, spec: MeshSpec, clusters: Mapping[str, KubeCluster]) -> dict[str, dict[str, str]]:
        """What the installed mesh was pointed at: each API server's address on the docker network 'kind'
        (remote secrets) and each east-west gateway's address (the remote profile's ``remotePilotAddress``),
        or the external control plane's ingress gateway's."""
        external = spec.external.name if spec.external is not None else None
        return {
            "apiServers": {name: self._container_ip(kind_name(name) + "-control-plane") for name in clusters},
            "gateways": {
                name: self._gateway_address(cluster, control_plane=name == external)
                for name, cluster in clusters.items()
            },
        }

    def _gateway_address(self, cluster: KubeCluster, timeout: float = 300, *, control_plane: bool = False) -> str:
        return cluster.gateway_address(
            timeout,
            f"check MetalLB (`kubectl --context {cluster.context} -n {METALLB_NAMESPACE} get pods,ipaddresspools`)",
            control_plane=control_plane,
        )

    def _kept_marker(self, toolbox: tools.Toolbox, name: str) -> str:
        """The mesh a kept cluster holds ("" when unknown: no marker, no kubeconfig, no answer)."""
        kubeconfig = self._kubeconfig(name)
        try:
            if not kubeconfig.is_file():
                text = self.run(
                    [str(toolbox.kind), "get", "kubeconfig", "--name", name], f"reading {name}'s kubeconfig"
                )
                kubeconfig.parent.mkdir(parents=True, exist_ok=True)
                kubeconfig.write_text(text)
                kubeconfig.chmod(0o600)
            found = self._cluster(name.removeprefix(PREFIX), toolbox).get("ConfigMap", STATE_CONFIGMAP, "kube-system")
        except BackendError:
            return ""
        return str(((found or {}).get("data") or {}).get("mesh", ""))

    def _delete(self, toolbox: tools.Toolbox, names: Sequence[str]) -> None:
        """Delete every cluster, each on its own: one that fails does not keep the others alive."""
        errors = []
        for name in names:
            try:
                self.run([str(toolbox.kind), "delete", "cluster", "--name", name], f"deleting kind cluster {name}")
            except BackendError as error:
                errors.append(str(error))
                continue
            self._kubeconfig(name).unlink(missing_ok=True)
            (self.state_dir / f"kind-config-{name.removeprefix(PREFIX)}.yaml").unlink(missing_ok=True)
        if errors:
            raise BackendError("; ".join(errors) + ": delete what is left with `kind delete cluster --name NAME`")


def _split(spec: MeshSpec, clusters: Mapping[str, KubeCluster]) -> tuple[dict[str, KubeCluster], KubeCluster | None]:
    """The data-plane clusters, and the external control plane's cluster (None in the other topologies)."""
    external = spec.external.name if spec.external is not None else None
    return {name: c for name, c in clusters.items() if name != external}, clusters.get(external) if external else None


def _steps_behind_moved_addresses(
    spec: MeshSpec,
    cacerts: Mapping[str, Mapping[str, bytes]],
    kept: Mapping[str, Mapping[str, str]],
    now: Mapping[str, Mapping[str, str]],
    progress: Progress,
) -> list[Step]:
    """After a Docker or machine restart the kept clusters' containers may have new addresses: the plan's
    steps that used the old ones (remote secrets; the remote profile, pointed at a gateway) are done again."""
    moved = {
        kind: sorted(name for name, address in now[kind].items() if kept.get(kind, {}).get(name) != address)
        for kind in now
    }
    # The external istiod reads the config cluster through istio-kubeconfig (an API server address) and is
    # reached at its ingress gateway's address (its discoveryAddress and caAddress, in its install).
    redo = {
        StepKind.REMOTE_SECRET: moved["apiServers"],
        StepKind.CONFIG_SECRET: moved["apiServers"],
        StepKind.INSTALL_REMOTE: moved["gateways"],
        StepKind.INSTALL_EXTERNAL_ISTIOD: moved["gateways"],
    }
    steps = [step for step in plan(spec, cacerts) if step.source in redo.get(step.kind, ())]
    if steps:
        progress(
            f"the kept clusters' addresses changed since they were installed (API servers: "
            f"{', '.join(moved['apiServers']) or 'none'}; gateways: {', '.join(moved['gateways']) or 'none'}; "
            "Docker restarted?): redoing the steps that use them"
        )
    return steps


def _kept_addresses(cluster: KubeCluster) -> dict[str, dict[str, str]]:
    found = cluster.get("ConfigMap", STATE_CONFIGMAP, "kube-system") or {}
    try:
        addresses = json.loads((found.get("data") or {}).get("addresses") or "{}")
    except ValueError:
        return {}
    return addresses if isinstance(addresses, dict) else {}


def _state_configmap(marker: str, addresses: Mapping[str, Mapping[str, str]]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": STATE_CONFIGMAP,
            "namespace": "kube-system",
            "labels": {"app.kubernetes.io/managed-by": "meshfed"},
        },
        "data": {"mesh": marker, "addresses": json.dumps(addresses, sort_keys=True)},
    }


def _apply_all(cluster: KubeCluster, objects: Sequence[Obj]) -> None:
    for obj in objects:
        cluster.apply(obj)


def _retry(action: Callable[[], object], seconds: float, every: float = 2.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            action()
            return
        except BackendError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(every)


@contextlib.contextmanager
def _pytest_kind_folder() -> Iterator[None]:
    """pytest-kind makes ``.pytest-kind/NAME`` in the working folder (our kubeconfigs live elsewhere):
    leave nothing behind that was not there before."""
    folder = Path(".pytest-kind")
    before = set(folder.iterdir()) if folder.is_dir() else None
    try:
        yield
    finally:
        if before is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            for path in set(folder.iterdir()) - before:
                shutil.rmtree(path, ignore_errors=True)


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
