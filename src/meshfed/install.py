"""The ordered install plan of a topology, shared by every backend.

It follows Istio's multi-cluster guides ("Install Multi-Primary on different networks", "Install
Primary-Remote on different networks") and ``../shared/ISTIO_FACTS.md``: ``istio-system`` with its
network label and the ``cacerts`` Secret BEFORE istiod; the control plane; the east-west gateway and
its address; ``expose-services`` (and ``expose-istiod`` on a primary that serves remotes); remote
secrets once the gateways have addresses; then the test namespace and workloads. A backend carries
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
from meshfed.manifests import Obj
from meshfed.topology import ClusterSpec, MeshSpec, Topology


class StepKind(enum.Enum):
    APPLY = "apply"  # kubectl apply the objects
    INSTALL = "install"  # istioctl install -f the IstioOperator
    WAIT_GATEWAY_ADDRESS = "wait-gateway-address"  # until the east-west gateway Service has an address
    INSTALL_REMOTE = "install-remote"  # the remote profile, pointed at `source`'s east-west gateway
    REMOTE_SECRET = "remote-secret"  # a secret for reading `source`, applied in `cluster`


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


def _gateway(cluster: ClusterSpec) -> Iterator[Step]:
    yield Step(cluster.name, StepKind.INSTALL, "east-west gateway", (manifests.eastwest_gateway(cluster.network),))
    yield Step(cluster.name, StepKind.WAIT_GATEWAY_ADDRESS, "east-west gateway address")


def _workloads(mesh: MeshSpec) -> Iterator[Step]:
    for cluster in mesh.clusters:
        objects = (manifests.test_namespace(), *manifests.workloads(cluster, mesh))
        yield Step(cluster.name, StepKind.APPLY, "test namespace and workloads", objects)


def plan(mesh: MeshSpec, cacerts: Mapping[str, Mapping[str, bytes]]) -> list[Step]:
    """The steps for ``mesh``; ``cacerts`` maps a cluster to its plug-in files (none: istiod self-signs)."""
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
) -> None:
    """Carry out ``steps`` in order. ``gateway_address(cluster)`` waits for the east-west gateway's
    address; ``remote_secret(source, destination)`` gives the objects that let ``destination`` read ``source``."""
    for step in steps:
        cluster = clusters[step.cluster]
        with timed(str(step), progress):
            if step.kind in (StepKind.APPLY, StepKind.INSTALL):
                for obj in step.objects:
                    cluster.apply(obj)
            elif step.kind is StepKind.WAIT_GATEWAY_ADDRESS:
                gateway_address(step.cluster)
            elif step.kind is StepKind.INSTALL_REMOTE:
                assert step.source is not None
                address = gateway_address(step.source)
                cluster.apply(manifests.istio_operator_remote(mesh.cluster(step.cluster), mesh, address))
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
            "clusters": [[c.name, c.network, c.region, c.zone, c.role] for c in spec.clusters],
            "meshID": spec.mesh_id,
            "trustDomain": spec.trust_domain,
            "workloadImage": spec.workload_image,
            "istioVersion": istio_version,
            "roots": roots,
        },
        sort_keys=True,
    )
