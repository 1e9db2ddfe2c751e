"""Faults injected on purpose, to prove that the cases fail where the property they guard is broken.

A conformance suite is worth the failures it can produce. Each fault breaks one property of a federated mesh
the way the world breaks it (a flaky network, a gateway down, a pod without its sidecar, a second root, ...),
through the backend contract (Kubernetes objects) wherever Istio's own objects can make it, and through the
node's network (iptables on real nodes) where only the network can. It names the cases that guard that
property: ``meshfed sensitivity`` runs the suite once per fault and asserts that each of them fails, and the
"what each case catches" (docs/sensitivity.md) is that run's matrix. ``--inject-fault NAME`` runs one fault by hand.

The fault is put in place after provisioning and again before every case (each ``inject`` is idempotent), so
that a case that repairs the mesh on its way (a canary upgrade reinstalls the gateways) does not hide it from
the next. A run with a fault certifies nothing, and its reports say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import yaml

from meshfed import manifests
from meshfed.backends.base import Mesh
from meshfed.cases import Feature
from meshfed.manifests import ISTIO_SYSTEM, TEST_NAMESPACE, only_in
from meshfed.misconfig import _drop_remote_secret, _other_trust_domain, _second_root, target
from meshfed.pki import bundle_from_secret, fingerprint, load_certs
from meshfed.topology import MeshSpec, Topology

# Istio's label that overrides the locality the registry gives a pod (istio/pkg config/labels: "istio-locality",
# region.zone.subzone with dots, since a label value cannot hold a slash).
LOCALITY_LABEL = "istio-locality"
DROP_EVERY = 10  # one in ten packets (embedded: chunks) to the gateway's 15443 answered with a TCP reset


@dataclass(frozen=True)
class Fault:
    name: str
    title: str  # what is broken, in a user's words
    guards: tuple[Feature, ...]  # what it breaks: every case needing one of these features must fail on it
    says: str  # what every guarding case's failure message must contain (a regex): it names what broke
    inject: Callable[[Mesh], None]  # idempotent: run after provisioning and again before every case
    not_applicable: Callable[[MeshSpec], str | None] = field(default=lambda spec: None)


def home(spec: MeshSpec) -> str:
    return spec.names[0]


def _drop_gateway_packets(mesh: Mesh) -> None:
    mesh[target(mesh.spec)].drop_gateway_connections(DROP_EVERY)


def _gateway_down(mesh: Mesh) -> None:
    cluster = mesh[target(mesh.spec)]
    deployment = cluster.get("Deployment", manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM) or {}
    if (deployment.get("spec") or {}).get("replicas") != 0 or cluster.pods(
        ISTIO_SYSTEM, {"app": manifests.EASTWEST_GATEWAY}
    ):
        cluster.scale(manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM, 0, timeout=mesh.convergence_deadline * 10)


def _patch_template_labels(mesh: Mesh, cluster: str, deployment: str, labels: dict[str, str]) -> None:
    """Pod-template labels of a Deployment (a rollout when they change), then wait for it to be ready."""
    found = mesh[cluster].get("Deployment", deployment, TEST_NAMESPACE) or {}
    held = (((found.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
    if any(held.get(key) != value for key, value in labels.items()):
        patch = {"spec": {"template": {"metadata": {"labels": labels}}}}
        mesh[cluster].patch("Deployment", deployment, TEST_NAMESPACE, patch)
    mesh[cluster].wait_ready(deployment, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 10)


def _without_sidecar(mesh: Mesh) -> None:
    name = target(mesh.spec)
    _patch_template_labels(mesh, name, only_in(name), {"sidecar.istio.io/inject": "false"})


def _roots(mesh: Mesh, cluster: str) -> set[str]:
    secret = mesh[cluster].get("Secret", "cacerts", ISTIO_SYSTEM)
    pem = bundle_from_secret(secret).get("root-cert.pem") if secret else None
    return {fingerprint(c) for c in load_certs(pem, "cacerts root-cert.pem")} if pem else set()


def _on_second_root(mesh: Mesh) -> None:
    if _roots(mesh, target(mesh.spec)) == _roots(mesh, home(mesh.spec)):
        _second_root(mesh, {})


def _on_other_trust_domain(mesh: Mesh) -> None:
    config = mesh[target(mesh.spec)].get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    domain = (yaml.safe_load(((config.get("data") or {}).get("mesh")) or "{}") or {}).get("trustDomain")
    if domain in (None, "cluster.local"):
        _other_trust_domain(mesh, {})


def _no_remote_secret(mesh: Mesh) -> None:
    _drop_remote_secret(mesh, {})


def _deny_test_namespace(mesh: Mesh) -> None:
    name = target(mesh.spec)
    policy = manifests.authorization_policy("deny-meshfed-callers", only_in(name), [], action="DENY")
    policy["spec"]["rules"] = [{"from": [{"source": {"namespaces": [TEST_NAMESPACE]}}]}]
    mesh[mesh.spec.config_cluster(name)].apply(policy)


def _echo_elsewhere(mesh: Mesh) -> None:
    """The home cluster's echo reports the locality of the next cluster (``istio-locality``)."""
    spec = mesh.spec
    away = spec.cluster(spec.names[1])
    _patch_template_labels(mesh, home(spec), manifests.ECHO, {LOCALITY_LABEL: f"{away.region}.{away.zone}"})


def _multi_primary_only(why: str) -> Callable[[MeshSpec], str | None]:
    return lambda spec: why if spec.topology is Topology.PRIMARY_REMOTE else None


FAULTS: tuple[Fault, ...] = (
    Fault(
        "gateway-drops-packets",
        f"the last cluster's node answers one in {DROP_EVERY} packets sent to its east-west gateway's port 15443 "
        "with a TCP reset (a flaky network)",
        (
            Feature.CROSS_CLUSTER_CALLS,
            Feature.MESH_WIDE_LOAD_BALANCING,
            Feature.MUTUAL_TLS,
            Feature.SPIFFE_IDENTITY,
            Feature.AUTHORIZATION,
            Feature.CONTROL_PLANE_OUTAGE,
            Feature.CANARY_UPGRADE,
            Feature.ROOT_ROTATION,
            Feature.MISCONFIGURATION_REGRESSION,
        ),
        r"steady window|calls were lost|beyond the",
        _drop_gateway_packets,
    ),
    Fault(
        "eastwest-gateway-down",
        "the last cluster's east-west gateway is scaled to 0",
        (Feature.CROSS_CLUSTER_CALLS, Feature.MESH_WIDE_LOAD_BALANCING),
        r"east-west gateway",
        _gateway_down,
    ),
    Fault(
        "workload-without-sidecar",
        "the service that runs only in the last cluster runs without a sidecar (sidecar.istio.io/inject: false)",
        (Feature.SHARED_ROOT, Feature.SPIFFE_IDENTITY, Feature.MUTUAL_TLS, Feature.CROSS_CLUSTER_CALLS),
        r"sidecar|caller",
        _without_sidecar,
    ),
    Fault(
        "second-root",
        "the last cluster's cacerts holds a root of its own (istiod, gateways and workloads restarted onto it)",
        (Feature.SHARED_ROOT, Feature.CROSS_CLUSTER_CALLS, Feature.SPIFFE_IDENTITY),
        r"root",
        _on_second_root,
        _multi_primary_only("in primary-remote one istiod signs for every cluster: a remote's cacerts is not used"),
    ),
    Fault(
        "other-trust-domain",
        "the last cluster's mesh config names another trust domain (istiod and workloads restarted)",
        (Feature.SPIFFE_IDENTITY, Feature.CROSS_CLUSTER_CALLS, Feature.MUTUAL_TLS),
        r"trust domain",
        _on_other_trust_domain,
        _multi_primary_only("in primary-remote the one istiod signs every identity in its own trust domain"),
    ),
    Fault(
        "missing-remote-secret",
        "the first cluster has no remote secret for the last",
        (Feature.CROSS_CLUSTER_CALLS, Feature.MESH_WIDE_LOAD_BALANCING),
        r"remote secret",
        _no_remote_secret,
    ),
    Fault(
        "deny-test-namespace",
        "an AuthorizationPolicy DENY on the last cluster's own echo refuses every caller of the test namespace "
        "(its callers from the other clusters among them)",
        (Feature.AUTHORIZATION, Feature.CROSS_CLUSTER_CALLS),
        r"RBAC",
        _deny_test_namespace,
    ),
    Fault(
        "echo-in-another-locality",
        "the first cluster's echo reports the second cluster's region (pod label istio-locality)",
        (Feature.LOCALITY_FAILOVER,),
        r"were not answered by",
        _echo_elsewhere,
    ),
)
FAULT_NAMES = tuple(fault.name for fault in FAULTS)


def fault(name: str) -> Fault:
    for item in FAULTS:
        if item.name == name:
            return item
    raise KeyError(f"no fault {name!r}: use one of {', '.join(FAULT_NAMES)}")
