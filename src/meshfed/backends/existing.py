"""The ``existing`` backend: certify a mesh someone else installed (a vendor's or managed Istio).

It reads the clusters through the user's kubeconfig contexts, creates only its own namespace with
the workloads in it (labelled for the revision the mesh injects with), and deletes that namespace at
the end. It installs nothing else and changes nothing else: cases that break and repair the mesh
are "not supported" unless ``--allow-destructive``. A managed control plane may live in another
namespace (``--istio-namespace``) and a managed CA leaves no ``cacerts`` Secret; the trust cases
then judge what the proxies hold. An external control plane runs no istiod in any data-plane cluster; its
own cluster (``--external-context``) is optional and only ever read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from meshfed import manifests
from meshfed.backends import tools
from meshfed.backends.base import Backend, BackendError, Forbidden, Progress
from meshfed.backends.kube import KubeCluster, KubeMesh
from meshfed.diagnose import Check, read_mesh_config
from meshfed.install import timed
from meshfed.manifests import MANAGED_BY, TEST_NAMESPACE, Obj
from meshfed.topology import MeshSpec, Topology


@dataclass(frozen=True)
class ControlPlane:
    """What a cluster shows of Istio: its istiod revisions and their versions (none on a remote), and its
    revision tags (``istioctl tag set``: a webhook labelled ``istio.io/tag``, pointing at a revision)."""

    revisions: Mapping[str, str]  # revision -> Istio version (from istiod's image tag)
    namespace_exists: bool
    tags: Mapping[str, str] = field(default_factory=dict)  # tag -> revision

    @property
    def is_primary(self) -> bool:
        return bool(self.revisions)


def control_plane(cluster: KubeCluster) -> ControlPlane:
    namespace_exists = cluster.get("Namespace", manifests.ISTIO_SYSTEM) is not None  # or its stand-in
    tags = {}
    for webhook in cluster.list("MutatingWebhookConfiguration"):
        labels = webhook["metadata"].get("labels") or {}
        if labels.get("istio.io/tag"):
            tags[str(labels["istio.io/tag"])] = str(labels.get("istio.io/rev") or "default")
    return ControlPlane(cluster.istiod_versions(), namespace_exists, tags)


@dataclass(frozen=True)
class Injection:
    """How meshfed's namespace is injected: the ``istio.io/rev`` it carries ("" for ``istio-injection=enabled``)
    and the istiod revision that then injects it, whose mesh config its workloads live by."""

    label: str
    revision: str

    def describe(self) -> str:
        by = f"istio.io/rev={self.label}" if self.label else "istio-injection=enabled"
        tag = f" (tag {self.label or 'default'})" if (self.label or "default") != self.revision else ""
        return f"revision {self.revision}{tag}, injected by {by}"


def check_topology(topology: Topology, planes: Mapping[str, ControlPlane], namespace: str) -> None:
    """One sentence when the clusters do not look like the topology the user asked to certify."""
    for name, plane in planes.items():
        if not plane.namespace_exists:
            raise BackendError(
                f"{name}: no namespace {namespace}, so no Istio: install Istio there, or name the namespace its "
                "control plane runs in with --istio-namespace"
            )
    primaries = [name for name, plane in planes.items() if plane.is_primary]
    names = list(planes)
    if topology is Topology.MULTI_PRIMARY and len(primaries) != len(names):
        remotes = [name for name in names if name not in primaries]
        raise BackendError(
            f"{', '.join(remotes)} run no istiod in {namespace}, so the mesh looks primary-remote: run with "
            "--topology primary-remote (primary first), or --istio-namespace if istiod runs elsewhere"
        )
    if topology is Topology.PRIMARY_REMOTE and primaries != names[:1]:
        raise BackendError(
            f"in primary-remote the first --context must be the only cluster running istiod, but istiod runs in "
            f"{', '.join(primaries) or 'none of them'}: put the primary first, or run with --topology multi-primary"
        )
    if topology is Topology.EXTERNAL_CONTROL_PLANE and primaries:
        raise BackendError(
            f"{', '.join(primaries)} run istiod in {namespace}, so the mesh's control plane is not external to them: "
            "run with --topology multi-primary or primary-remote, or give only the data-plane clusters with --context"
        )


def check_external(cluster: KubeCluster, namespace: str) -> None:
    """The external control plane's cluster, when given, runs istiod in the control plane's namespace."""
    if not cluster.istiod_versions():
        raise BackendError(
            f"--external-context {cluster.context}: no istiod in namespace {namespace} there: give the context of "
            "the cluster the external istiod runs in (or leave --external-context out)"
        )


def choose_injection(planes: Mapping[str, ControlPlane], wanted: str | None = None) -> Injection:
    """The revision (or tag) to inject meshfed's workloads with, as ``istioctl`` reads a mesh: the one asked
    for; else the default tag or the default revision; else the only revision. A mesh in the middle of a
    canary upgrade has a default (the old revision, or the tag pointing at it) and is certified as it is."""
    revisions = {rev for plane in planes.values() for rev in plane.revisions}
    tags = {tag: rev for plane in planes.values() for tag, rev in plane.tags.items()}
    if wanted:
        if wanted in tags:
            return Injection("" if wanted == "default" else wanted, tags[wanted])
        if wanted in revisions:
            return Injection("" if wanted == "default" else wanted, wanted)
        known = ", ".join([*(f"revision {r}" for r in sorted(revisions)), *(f"tag {t}" for t in sorted(tags))])
        raise BackendError(
            f"--revision {wanted}: the mesh has no revision or tag of that name ({known or 'it runs no istiod'}): "
            "give one of those"
        )
    if "default" in tags:
        return Injection("", tags["default"])
    if not revisions or "default" in revisions:
        return Injection("", "default")
    if len(revisions) > 1:
        raise BackendError(
            f"the mesh runs several revisions ({', '.join(sorted(revisions))}) and none is the default: choose the "
            "one to certify with --revision R, or make one the default (`istioctl tag set default --revision R`)"
        )
    (only,) = revisions
    return Injection(only, only)


_INJECTION_PATH = re.compile(r"/inject/cluster/([^/]+)/net/")


def mesh_names(cluster: KubeCluster) -> set[str]:
    """The names the mesh gives a cluster: its istiods' ``CLUSTER_ID``; on a remote (no istiod) the
    cluster in its injection webhook's path (``/inject/cluster/<name>/net/<network>``, what its proxies
    report as their cluster); and the injector ConfigMap's ``global.multiCluster.clusterName`` where
    there is one (the remote profile omits it)."""
    names: set[str] = set()
    for configuration in cluster.list("MutatingWebhookConfiguration"):
        for webhook in configuration.get("webhooks") or []:
            client = webhook.get("clientConfig") or {}
            path = client.get("url") or (client.get("service") or {}).get("path") or ""
            if found := _INJECTION_PATH.search(path):
                names.add(found.group(1))
    for istiod in cluster.list("Deployment", manifests.ISTIO_SYSTEM, {"app": "istiod"}):
        for container in istiod["spec"]["template"]["spec"].get("containers") or []:
            env = {e.get("name"): e.get("value") for e in container.get("env") or []}
            if env.get("CLUSTER_ID"):
                names.add(str(env["CLUSTER_ID"]))
    for values in _injector_values(cluster):
        name = ((values.get("global") or {}).get("multiCluster") or {}).get("clusterName")
        if name:
            names.add(str(name))
    return names


def _injector_values(cluster: KubeCluster) -> list[dict[str, Any]]:
    """The install values of each ``istio-sidecar-injector[-REV]`` ConfigMap (what the webhook injects with)."""
    found = []
    for config_map in cluster.list("ConfigMap", manifests.ISTIO_SYSTEM):
        if not config_map["metadata"]["name"].startswith("istio-sidecar-injector"):
            continue
        try:
            values = json.loads((config_map.get("data") or {}).get("values") or "{}")
        except ValueError:
            continue
        if isinstance(values, dict):
            found.append(values)
    return found


def mesh_network(cluster: KubeCluster) -> str | None:
    """The network the mesh puts a cluster's workloads on, read as istiod reads it: the control-plane
    namespace's ``topology.istio.io/network`` label; else ``values.global.network``, which the injector
    labels every pod with (istiod reads a pod's label first); else the east-west gateway Service's label.
    None when the mesh names no network."""
    namespace = cluster.get("Namespace", manifests.ISTIO_SYSTEM) or {}
    if network := ((namespace.get("metadata") or {}).get("labels") or {}).get(manifests.NETWORK_LABEL):
        return str(network)
    for values in _injector_values(cluster):
        if network := (values.get("global") or {}).get("network"):
            return str(network)
    for service in cluster.list("Service", manifests.ISTIO_SYSTEM):
        if network := (service["metadata"].get("labels") or {}).get(manifests.NETWORK_LABEL):
            return str(network)
    return None


def _as_deployed(spec: MeshSpec, clusters: Mapping[str, KubeCluster]) -> MeshSpec:
    """The spec with what the clusters say: each one's network (``mesh_network``) and region and zone
    (its first node's labels), so that checks compare the mesh with itself, not with meshfed's defaults.
    Each cluster must be named as the mesh names it: remote secrets and endpoints are keyed by that name."""
    refined = []
    named = {cluster_spec.name: mesh_names(clusters[cluster_spec.name]) for cluster_spec in spec.clusters}
    for cluster_spec in spec.clusters:
        cluster = clusters[cluster_spec.name]
        known = named[cluster_spec.name]
        if known and cluster_spec.name not in known:
            if len(known) > 1:
                raise BackendError(
                    f"the mesh gives the cluster of context {cluster.context} several names "
                    f"({', '.join(sorted(known))}): make istiod's CLUSTER_ID and the injection webhook agree"
                )
            (name,) = known
            if sum(name in names for names in named.values()) > 1:  # two clusters called alike: one is misinjected
                raise BackendError(
                    f"the mesh calls the cluster of context {cluster.context} {name!r}, the name of another of its "
                    f"clusters: its injection webhook names the wrong cluster, so every new pod's proxy there is "
                    f"refused (injection-path-wrong); reinstall its remote profile with "
                    f"values.istiodRemote.injectionPath=/inject/cluster/{cluster_spec.name}/net/<its network>"
                )
            raise BackendError(
                f"the mesh calls the cluster of context {cluster.context} {name!r}, not {cluster_spec.name!r}: "
                f"name it as Istio does, --context {name}={cluster.context}"
            )
        nodes = cluster.list("Node")
        node_labels = (nodes[0]["metadata"].get("labels") or {}) if nodes else {}
        refined.append(
            replace(
                cluster_spec,
                network=mesh_network(cluster) or cluster_spec.network,
                region=node_labels.get("topology.kubernetes.io/region") or cluster_spec.region,
                zone=node_labels.get("topology.kubernetes.io/zone") or cluster_spec.zone,
            )
        )
    return replace(spec, clusters=tuple(refined))


def kubeconfig_files(kubeconfig: Path | None) -> list[Path]:
    """The files kubectl reads: the one given, else each of ``$KUBECONFIG``, else ``~/.kube/config``."""
    if kubeconfig is not None:
        return [kubeconfig]
    listed = [Path(part) for part in os.environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    return listed or [Path.home() / ".kube" / "config"]


def check_kubeconfig_users(contexts: Mapping[str, str], files: Sequence[Path]) -> None:
    """One sentence when two merged kubeconfigs define one user name differently: kubectl keeps the first,
    so a context of the second file would silently authenticate with the first cluster's credentials."""
    users: dict[str, list[tuple[Path, Any]]] = {}
    context_users: dict[str, str] = {}
    for path in files:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue  # the client says what is wrong with an unreadable file
        if not isinstance(loaded, dict):
            continue
        for entry in loaded.get("users") or []:
            users.setdefault(str(entry.get("name")), []).append((path, entry.get("user")))
        for entry in loaded.get("contexts") or []:
            context_users.setdefault(str(entry.get("name")), str((entry.get("context") or {}).get("user")))
    for context in contexts.values():
        user = context_users.get(context)
        defined = users.get(user or "", [])
        if len({json.dumps(body, sort_keys=True) for _, body in defined}) > 1:
            where = " and ".join(str(path) for path, _ in defined)
            raise BackendError(
                f"the user {user!r} of context {context} is defined differently in {where}: kubectl keeps the first, "
                "so a context of the other file would use another cluster's credentials; give each cluster's "
                "user its own name"
            )


def _versions(cluster: KubeCluster, plane: ControlPlane) -> list[str]:
    """Each istiod's version: its image's tag, or where the tag names none (an image pinned by digest only)
    what istiod reports itself."""
    return [
        version if manifests.istio_minor(version) else (cluster.istiod_reported_version(revision) or version)
        for revision, version in plane.revisions.items()
    ]


def _trust_domain_found(cluster: KubeCluster) -> str:
    """The trust domain the mesh config says, and where it says it; the proxies say it once they run."""
    config = read_mesh_config(cluster)
    if config is None:
        return "no mesh config here (a remote's is its primary's) or none readable: read from the proxies' certificates"
    return f"{config.get('trustDomain') or 'cluster.local'} (from the mesh config)"


def _root_found(cluster: KubeCluster) -> str:
    """Where the root of trust is read from: the ``cacerts`` Secret, or (a managed CA) what the proxies hold."""
    try:
        secret = cluster.get("Secret", "cacerts", manifests.ISTIO_SYSTEM)
    except Forbidden:
        return "cacerts Secret not readable by this user (403): a managed CA, judged from what the proxies hold"
    if secret is None:
        return "no cacerts Secret: a managed or istiod's own CA, judged from what the proxies hold"
    return "the cacerts Secret (a plugged-in CA)"


def _remove_own_namespaces(clusters: Mapping[str, KubeCluster]) -> None:
    """Delete meshfed's own namespaces, and nothing else."""
    for cluster in clusters.values():
        for namespace in cluster.list("Namespace", labels=MANAGED_BY):
            with contextlib.suppress(BackendError):
                cluster.delete("Namespace", namespace["metadata"]["name"])


class ExistingBackend(Backend):
    name = "existing"

    def __init__(
        self,
        contexts: Mapping[str, str],
        *,
        kubeconfig: Path | None = None,
        control_plane_namespace: str = manifests.ISTIO_SYSTEM,
        revision: str | None = None,
        istioctl: Path | None = None,
        kubectl: Path | None = None,
        download: tools.Download | None = None,
        external_context: str | None = None,
    ) -> None:
        self.external_context = external_context
        self.contexts = dict(contexts)
        self.kubeconfig = kubeconfig
        self.control_plane_namespace = control_plane_namespace
        self.revision = revision
        self.istioctl = istioctl
        self.kubectl = kubectl
        self.download = download or tools._http_get

    def connect(self, spec: MeshSpec, progress: Progress = lambda _: None) -> KubeMesh:
        """The mesh as it is, read-only: contexts reachable, Istio present, the topology it appears to have."""
        return self._connect(spec, progress)[0]

    def _connect(self, spec: MeshSpec, progress: Progress) -> tuple[KubeMesh, Injection]:
        """The mesh, and how its test namespace is injected."""
        planes, clusters = self._inspect(spec, progress)
        check_topology(spec.topology, planes, self.control_plane_namespace)
        external = self._external(spec, progress)
        if external is not None:  # its istiod's revisions and tags are the mesh's
            planes = {**planes, external.name: control_plane(external)}
        injection = choose_injection(planes, self.revision)
        if external is not None:
            del planes[external.name]
        kubectl = self._kubectl(progress)
        for cluster in [*clusters.values(), *([external] if external else [])]:
            cluster.kubectl = kubectl
        versions = sorted({version for name in planes for version in _versions(clusters[name], planes[name])})
        if external is not None:
            versions = sorted({*versions, *external.istiod_versions().values()})
        istioctl = self._istioctl(versions, progress)
        for cluster in [*clusters.values(), *([external] if external else [])]:
            cluster.istioctl, cluster.revision = istioctl, injection.revision
        deployed = _as_deployed(spec, clusters)
        environment = {
            "control plane": f"namespace {self.control_plane_namespace}, {injection.describe()}",
            **{f"{name}: trust domain": _trust_domain_found(cluster) for name, cluster in clusters.items()},
            **{
                f"{name}: root of trust": _root_found(cluster)
                for name, cluster in clusters.items()
                if planes[name].is_primary
            },
            "istioctl": f"{istioctl} ({tools.istioctl_build_of(istioctl) or 'version unknown'})",
        }
        if spec.external is not None:
            environment["external control plane"] = (
                f"context {self.external_context}, read only: {_root_found(external)}"
                if external is not None
                else "not given (--external-context): its istiod, cacerts and remote secrets are not read"
            )
        mesh = KubeMesh(
            "existing",
            deployed,
            ", ".join(versions),
            clusters,
            lambda: _remove_own_namespaces(clusters),  # never the external cluster's: nothing of meshfed's there
            environment=environment,
            external=external,
        )
        return mesh, injection

    def _external(self, spec: MeshSpec, progress: Progress) -> KubeCluster | None:
        """The external control plane's cluster, read only, when the user gave its context."""
        if spec.external is None or self.external_context is None:
            return None
        cluster = KubeCluster(
            spec.external.name,
            self.kubeconfig,
            self.external_context,
            kubectl=Path("kubectl"),
            istioctl_binary=Path("istioctl"),
            control_plane_namespace=self.control_plane_namespace,
            installs_istio=False,
        )
        server = cluster.api.server_version()
        check_external(cluster, self.control_plane_namespace)
        shown = ", ".join(f"{rev} {version}" for rev, version in cluster.istiod_versions().items())
        progress(f"{spec.external.name}: context {self.external_context}, Kubernetes {server}, istiod: {shown}")
        return cluster

    def _kubectl(self, progress: Progress) -> Path:
        """The kubectl given, else one from PATH, else the pinned release (downloaded once)."""
        if self.kubectl is not None and not tools.is_kubectl(self.kubectl):
            raise BackendError(
                f"--kubectl {self.kubectl} is not a kubectl (`{self.kubectl} version --client` failed): give the path of kubectl"
            )
        return self.kubectl or tools.find_kubectl(self.download, progress)

    def _istioctl(self, versions: Sequence[str], progress: Progress) -> Path:
        """The istioctl given; else istioctl of the release the mesh's istiod is built from (1.30.3 for
        1.30.3-asm.2), from PATH or downloaded; else, for a build no release names (1.31-dev), an istioctl on
        PATH of the same release line."""
        if self.istioctl is not None:
            if not tools.istioctl_build_of(self.istioctl):
                raise BackendError(
                    f"--istioctl {self.istioctl} is not an istioctl (`{self.istioctl} version --remote=false` names no "
                    "Istio version): give the path of istioctl"
                )
            return self.istioctl
        releases = sorted(
            {m.group(0) for v in versions if (m := re.match(r"\d+\.\d+\.\d+", v))},
            key=lambda v: tuple(int(part) for part in v.split(".")),
        )
        if releases:
            toolbox = tools.find_tools(releases[-1:], need_kind=False, download=self.download, progress=progress)
            return toolbox.istioctl_for(releases[-1])
        lines = {manifests.istio_minor(v) for v in versions} - {None}
        on_path = shutil.which("istioctl")
        if on_path and len(lines) == 1 and manifests.istio_minor(tools.istioctl_build_of(on_path)) in lines:
            progress(f"istioctl {on_path} ({tools.istioctl_build_of(on_path)}), of istiod's release line")
            return Path(on_path)
        raise BackendError(
            f"cannot tell the Istio release from istiod's image ({', '.join(versions) or 'no istiod'}): give the "
            "istioctl to use with --istioctl PATH (for a build of your own, the istioctl built with it)"
        )

    def provision(
        self, spec: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]], progress: Progress = lambda _: None
    ) -> KubeMesh:
        del cacerts  # the mesh is certified as it is: its CA is whatever it runs
        mesh, injection = self._connect(spec, progress)
        for cluster in mesh.clusters.values():
            cluster.check_own_namespace(TEST_NAMESPACE)  # in every cluster before anything is written
        try:
            for name, cluster in mesh.clusters.items():
                with timed(f"{name}: namespace {TEST_NAMESPACE} and workloads", progress):
                    for obj in self._workloads(mesh.spec, name, injection.label):
                        cluster.apply(obj)
        except BaseException:
            mesh.teardown()
            raise
        return mesh

    def _inspect(self, spec: MeshSpec, progress: Progress) -> tuple[dict[str, ControlPlane], dict[str, KubeCluster]]:
        check_kubeconfig_users(self.contexts, kubeconfig_files(self.kubeconfig))
        planes: dict[str, ControlPlane] = {}
        clusters: dict[str, KubeCluster] = {}
        for name in spec.names:
            context = self.contexts[name]
            cluster = KubeCluster(
                name,
                self.kubeconfig,
                context,
                kubectl=Path("kubectl"),
                istioctl_binary=Path("istioctl"),
                control_plane_namespace=self.control_plane_namespace,
                installs_istio=False,
            )
            server = cluster.api.server_version()
            try:
                planes[name] = control_plane(cluster)
            except Forbidden as error:
                raise BackendError(
                    f"{name}: the user of context {context} may not read what meshfed needs to see the mesh ({error}): "
                    "grant it get and list on namespaces, deployments, configmaps and mutatingwebhookconfigurations"
                ) from None
            shown = ", ".join(f"{rev} {version}" for rev, version in planes[name].revisions.items()) or "remote"
            progress(f"{name}: context {context}, Kubernetes {server}, istiod: {shown}")
            clusters[name] = cluster
        return planes, clusters

    @staticmethod
    def _workloads(spec: MeshSpec, name: str, revision: str) -> Sequence[Obj]:
        return [manifests.test_namespace(revision), *manifests.workloads(spec.cluster(name), spec)]


def analyze_findings(clusters: Mapping[str, KubeCluster]) -> list[Check]:
    """What ``istioctl analyze`` says of each cluster, in its own words (level, IST code, resource, message),
    beside meshfed's findings. Shown as warnings: its verdict is Istio's advice, not meshfed's."""
    found = []
    for name, cluster in clusters.items():
        try:
            messages = cluster.analyze()
        except BackendError as error:
            refused = re.search(r"Error: (\S+ is forbidden: .*)", str(error))
            if refused:  # a reader without Secret access: analyze lists the remote secrets
                found.append(
                    Check(
                        "istioctl-analyze-not-permitted",
                        "warning",
                        name,
                        f"istioctl analyze needs more than this user may read: {refused.group(1).strip()}",
                        "run meshfed doctor as a user who may read what it names to see istioctl analyze's findings",
                    )
                )
            else:
                found.append(
                    Check("istioctl-analyze-failed", "warning", name, f"istioctl analyze did not run: {error}")
                )
            continue
        for message in messages:
            code = message.get("code", "IST????")
            text = f"{message.get('level', '')} [{code}] ({message.get('origin', '')}) {message.get('message', '')}"
            found.append(Check(f"istioctl-{code}", "warning", name, text.strip()))
    return found
