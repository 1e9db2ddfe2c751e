"""The ordered install plan of a topology, shared by every backend.

It follows Istio's multi-cluster guides ("Install Multi-Primary on different networks", "Install
Primary-Remote on different networks") and ``../shared/ISTIO_FACTS.md``: ``istio-system`` with its
network label and the ``cacerts`` Secret BEFORE istiod; the control plane; the east-west gateway and
its address; ``expose-services`` (and ``expose-istiod`` on a primary that serves remotes); remote
secrets once the gateways have addresses; then the test namespace and workloads. An external control plane
follows "Install Istio with an External Control Plane" and its "Adding clusters" section: the external
cluster's ingress gateway and its address, the config cluster's remote profile (``configCluster``), the
``istio-kubeconfig`` Secret, the external istiod and its routes, then each remote (namespace annotated with
the config cluster, remote profile, remote secret in the external cluster), east-west gateways on every
data-plane cluster and ``expose-services`` on the config cluster. A backend carries
out the steps in order; it may run steps of different clusters side by side only where the plan says
nothing depends on it (it never does here: the order is the contract).
"""

from __future__ import annotations

import enum
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from meshfed import manifests
from meshfed.manifests import ISTIO_SYSTEM, Obj
from meshfed.topology import ClusterSpec, MeshSpec, Topology


class StepKind(enum.Enum):
    APPLY = "apply"  # kubectl apply the objects
    INSTALL = "install"  # istioctl install -f the IstioOperator
    WAIT_GATEWAY_ADDRESS = "wait-gateway-address"  # until the east-west gateway Service has an address
    INSTALL_REMOTE = "install-remote"  # the remote profile, pointed at `source`'s east-west gateway
    REMOTE_SECRET = "remote-secret"  # a secret for reading `source`, applied in `cluster`
    WAIT_CONTROL_PLANE_ADDRESS = "wait-control-plane-address"  # until the external cluster's ingress gateway has one
    INSTALL_EXTERNAL_ISTIOD = "install-external-istiod"  # the external istiod, reached at `source`'s ingress address
    CONFIG_SECRET = "config-secret"  # istio-kubeconfig: the external istiod reads `source` (the config cluster)


@dataclass(frozen=True)
class Step:
    cluster: str
    kind: StepKind
    title: str
    objects: tuple[Obj, ...] = ()
    source: str | None = None

    def __str__(self) -> str:
        return f"{self.cluster}: {self.title}"


def _control_plane(
    cluster: ClusterSpec, mesh: MeshSpec, cacerts: Mapping[str, bytes] | None, serves_remotes: bool
) -> Iterator[Step]:
    yield Step(
        cluster.name,
        StepKind.APPLY,
        f"namespace istio-system, network {cluster.network}",
        (manifests.istio_system(cluster),),
    )
    if cacerts is not None:
        yield Step(cluster.name, StepKind.APPLY, "cacerts Secret (before istiod)", (manifests.cacerts(cacerts),))
    yield Step(
        cluster.name,
        StepKind.INSTALL,
        "control plane (istiod)",
        (manifests.istio_operator(cluster, mesh, external_istiod=serves_remotes),),
    )


def _gateway(cluster: ClusterSpec, namespace: str = manifests.ISTIO_SYSTEM) -> Iterator[Step]:
    gateway = manifests.eastwest_gateway(cluster.network, namespace_=namespace)
    yield Step(cluster.name, StepKind.INSTALL, "east-west gateway", (gateway,))
    yield Step(cluster.name, StepKind.WAIT_GATEWAY_ADDRESS, "east-west gateway address")


def _workloads(mesh: MeshSpec) -> Iterator[Step]:
    for cluster in mesh.clusters:
        objects = (manifests.test_namespace(), *manifests.workloads(cluster, mesh))
        yield Step(cluster.name, StepKind.APPLY, "test namespace and workloads", objects)


def plan(mesh: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]]) -> list[Step]:
    """The steps for ``mesh``; ``cacerts`` maps a cluster to its plug-in files (none: istiod self-signs)."""
    if mesh.topology is Topology.EXTERNAL_CONTROL_PLANE:
        return _external_plan(mesh, cacerts)
    steps: list[Step] = []
    if mesh.topology is Topology.MULTI_PRIMARY:
        for cluster in mesh.clusters:
            steps += _control_plane(cluster, mesh, cacerts.get(cluster.name), serves_remotes=False)
            steps += _gateway(cluster)
            steps.append(
                Step(
                    cluster.name,
                    StepKind.APPLY,
                    "expose services (cross-network-gateway)",
                    (manifests.cross_network_gateway(),),
                )
            )
        for pair in mesh.pairs():
            steps.append(
                Step(pair.destination, StepKind.REMOTE_SECRET, f"remote secret for {pair.source}", source=pair.source)
            )
    else:
        primary, *remotes = mesh.clusters
        steps += _control_plane(primary, mesh, cacerts.get(primary.name), serves_remotes=True)
        steps += _gateway(primary)
        steps.append(Step(primary.name, StepKind.APPLY, "expose istiod", tuple(manifests.expose_istiod())))
        steps.append(
            Step(
                primary.name,
                StepKind.APPLY,
                "expose services (cross-network-gateway)",
                (manifests.cross_network_gateway(),),
            )
        )
        for remote in remotes:
            namespace = manifests.istio_system(remote, control_plane_cluster=primary.name)
            steps.append(
                Step(
                    remote.name,
                    StepKind.APPLY,
                    f"namespace istio-system, network {remote.network}, controlled by {primary.name}",
                    (namespace,),
                )
            )
            if remote.name in cacerts:
                steps.append(
                    Step(remote.name, StepKind.APPLY, "cacerts Secret", (manifests.cacerts(cacerts[remote.name]),))
                )
            steps.append(
                Step(
                    remote.name,
                    StepKind.INSTALL_REMOTE,
                    f"remote profile, istiod of {primary.name}",
                    source=primary.name,
                )
            )
            steps.append(
                Step(primary.name, StepKind.REMOTE_SECRET, f"remote secret for {remote.name}", source=remote.name)
            )
            steps += _gateway(remote)
    steps += _workloads(mesh)
    return steps


def _external_plan(mesh: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]]) -> list[Step]:
    assert mesh.external is not None
    external = mesh.external.name
    config, *remotes = mesh.clusters
    steps = [
        Step(
            external,
            StepKind.INSTALL,
            "ingress gateway for the external istiod",
            (manifests.external_ingress_gateway(),),
        ),
        Step(external, StepKind.WAIT_CONTROL_PLANE_ADDRESS, "ingress gateway address"),
        Step(
            config.name,
            StepKind.APPLY,
            f"namespace {manifests.EXTERNAL_ISTIOD}, network {config.network}",
            (manifests.istio_system(config),),
        ),
        Step(config.name, StepKind.INSTALL_REMOTE, f"remote profile, config cluster of {external}", source=external),
        Step(external, StepKind.APPLY, f"namespace {manifests.EXTERNAL_ISTIOD}", (manifests.namespace(ISTIO_SYSTEM),)),
    ]
    if external in cacerts:
        steps.append(
            Step(external, StepKind.APPLY, "cacerts Secret (before istiod)", (manifests.cacerts(cacerts[external]),))
        )
    steps += [
        Step(external, StepKind.CONFIG_SECRET, f"istio-kubeconfig for reading {config.name}", source=config.name),
        Step(
            external,
            StepKind.INSTALL_EXTERNAL_ISTIOD,
            f"external istiod (config cluster {config.name})",
            source=external,
        ),
        Step(external, StepKind.APPLY, "routes to the external istiod", tuple(manifests.external_istiod_routes())),
        *_gateway(config, manifests.EXTERNAL_ISTIOD),
        Step(
            config.name, StepKind.APPLY, "expose services (cross-network-gateway)", (manifests.cross_network_gateway(),)
        ),
    ]
    for remote in remotes:
        namespace = manifests.istio_system(remote, control_plane_cluster=config.name)
        steps += [
            Step(
                remote.name,
                StepKind.APPLY,
                f"namespace {manifests.EXTERNAL_ISTIOD}, network {remote.network}, controlled by {config.name}",
                (namespace,),
            ),
            Step(remote.name, StepKind.INSTALL_REMOTE, f"remote profile, istiod of {external}", source=external),
            Step(external, StepKind.REMOTE_SECRET, f"remote secret for {remote.name}", source=remote.name),
            *_gateway(remote, manifests.EXTERNAL_ISTIOD),
        ]
    return steps + list(_workloads(mesh))


class Applier(Protocol):
    def apply(self, obj: Obj) -> Obj: ...


@contextmanager
def timed(title: str, progress: Callable[[str], None], every: float = 15.0, quiet: float = 1.0) -> Iterator[None]:
    """One line for a step done within ``quiet`` seconds ("title: done in 0.2 s"); a longer one is also said
    as it starts ("title ..."), then "still running" every ``every`` seconds."""
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        if done.wait(quiet):
            return
        progress(f"{title} ...")
        while not done.wait(every):
            progress(f"{title}: still running ({time.monotonic() - started:.0f} s)")

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
    progress(f"{title}: done in {time.monotonic() - started:.1f} s")


def execute(
    steps: list[Step],
    mesh: MeshSpec,
    clusters: Mapping[str, Applier],
    *,
    gateway_address: Callable[[str], str],
    remote_secret: Callable[[str, str], list[Obj]],
    progress: Callable[[str], None],
    control_plane_address: Callable[[str], str] | None = None,
    config_secret: Callable[[str], list[Obj]] | None = None,
    pilot_env: Mapping[str, str] | None = None,
) -> None:
    """Carry out ``steps`` in order. ``gateway_address(cluster)`` waits for the east-west gateway's
    address; ``remote_secret(source, destination)`` gives the objects that let ``destination`` read ``source``.
    An external control plane also needs ``control_plane_address(external)`` (its ingress gateway's address)
    and ``config_secret(config)`` (the ``istio-kubeconfig`` Secret for reading the config cluster)."""

    def address_of(name: str) -> str:
        if mesh.external is not None and name == mesh.external.name:
            if control_plane_address is None:
                raise ValueError("this backend cannot install an external control plane (no control_plane_address)")
            return control_plane_address(name)
        return gateway_address(name)

    for step in steps:
        cluster = clusters[step.cluster]
        with timed(str(step), progress):
            if step.kind in (StepKind.APPLY, StepKind.INSTALL):
                for obj in step.objects:
                    cluster.apply(obj)
            elif step.kind is StepKind.WAIT_GATEWAY_ADDRESS:
                gateway_address(step.cluster)
            elif step.kind in (StepKind.WAIT_CONTROL_PLANE_ADDRESS,):
                address_of(step.cluster)
            elif step.kind is StepKind.INSTALL_REMOTE:
                assert step.source is not None
                address = address_of(step.source)
                spec = mesh.cluster(step.cluster)
                if mesh.external is not None:
                    operator = manifests.istio_operator_remote(
                        spec,
                        mesh,
                        address,
                        namespace_=manifests.EXTERNAL_ISTIOD,
                        config_cluster=spec.role == "config",
                    )
                else:
                    operator = manifests.istio_operator_remote(spec, mesh, address)
                cluster.apply(operator)
            elif step.kind is StepKind.INSTALL_EXTERNAL_ISTIOD:
                assert step.source is not None and mesh.external is not None
                config = next(c for c in mesh.clusters if c.role == "config")
                cluster.apply(manifests.external_istiod(config, mesh, address_of(step.source), pilot_env))
            elif step.kind is StepKind.CONFIG_SECRET:
                assert step.source is not None
                if config_secret is None:
                    raise ValueError("this backend cannot install an external control plane (no config_secret)")
                for obj in config_secret(step.source):
                    cluster.apply(obj)
            elif step.kind is StepKind.REMOTE_SECRET:
                assert step.source is not None
                for obj in remote_secret(step.source, step.cluster):
                    cluster.apply(obj)


def mesh_marker(spec: MeshSpec, istio_version: str, cacerts: Mapping[str, Mapping[str, bytes]]) -> str:
    """What a kept mesh was made from; a later run reuses it only when this is the same."""
    roots = {name: hashlib.sha256(files.get("root-cert.pem", b"")).hexdigest() for name, files in cacerts.items()}
    return json.dumps(
        {
            "topology": spec.topology.value,
            "clusters": [[c.name, c.network, c.region, c.zone, c.role] for c in spec.all_clusters],
            "meshID": spec.mesh_id,
            "trustDomain": spec.trust_domain,
            "workloadImage": spec.workload_image,
            "istioVersion": istio_version,
            "roots": roots,
        },
        sort_keys=True,
    )
