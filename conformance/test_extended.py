"""Extended profile: will the mesh survive a bad day? Clients keep calling for the whole procedure and
every lost call is reported with its symptom, step by step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshfed import manifests
from meshfed.backends.base import BackendError, Cluster, Mesh
from meshfed.cases import Feature, case, not_supported
from meshfed.expect import Traffic, require
from meshfed.manifests import CLIENT, ISTIO_SYSTEM, TEST_NAMESPACE, only_in, service_url
from meshfed.options import SuiteOptions
from meshfed.report.model import RunRecord
from meshfed.topology import Topology

NEWCOMER = "newcomer"


def cross_cluster_traffic(mesh: Mesh) -> Traffic:
    calls = {}
    for pair in mesh.spec.pairs():
        cluster = mesh[pair.source]
        pod = cluster.pod_of(TEST_NAMESPACE, CLIENT).name
        url = service_url(only_in(pair.destination))
        calls[pair.id] = lambda n, c=cluster, p=pod, u=url: c.call(p, TEST_NAMESPACE, u, n, timeout=5)
    return Traffic(calls)


def start_newcomer(mesh: Mesh, cluster: Cluster) -> bool:
    """A new pod in ``cluster``: True when it got ready with a certificate."""
    cluster.apply(
        manifests.deployment(
            NEWCOMER, app=NEWCOMER, service_account_name=CLIENT, args=["idle"], cluster=cluster.name, version="new"
        )
    )
    if not cluster.wait_ready(NEWCOMER, TEST_NAMESPACE, timeout=mesh.convergence_deadline):
        return False
    try:
        return bool(cluster.proxy_certs(cluster.pod_of(TEST_NAMESPACE, NEWCOMER).name, TEST_NAMESPACE).chain)
    except BackendError:
        return False


@pytest.fixture
def istiod_restored(mesh: Mesh) -> Iterator[None]:
    yield
    for spec in mesh.spec.primaries:
        mesh[spec.name].scale("istiod", ISTIO_SYSTEM, 1, timeout=mesh.convergence_deadline * 10)
    for name in mesh.spec.names:
        mesh[name].delete("Deployment", NEWCOMER, TEST_NAMESPACE)


@case(
    "ControlPlaneOutage",
    "With an istiod down, existing workloads keep calling across clusters; new pods get certificates only where an istiod serves them.",
    {Feature.CONTROL_PLANE_OUTAGE},
    profile="extended",
)
def test_control_plane_outage(
    mesh: Mesh, suite_options: SuiteOptions, run_record: RunRecord, istiod_restored: None
) -> None:
    if suite_options.backend == "existing" and not suite_options.allow_destructive:
        not_supported("destructive: it stops istiod; pass --allow-destructive to run it on existing clusters")
    down = mesh.spec.primaries[0].name
    other = mesh.spec.names[-1]
    problems: list[str] = []
    with cross_cluster_traffic(mesh) as traffic:
        traffic.step(f"istiod of {down} scaled to 0")
        mesh[down].scale("istiod", ISTIO_SYSTEM, 0)
        traffic.step(f"new pod in {other}")
        got_certificate = start_newcomer(mesh, mesh[other])
        if mesh.spec.topology is Topology.MULTI_PRIMARY and not got_certificate:
            problems.append(
                f"multi-primary: with {down}'s istiod down, a new pod in {other} must still get a certificate from its own istiod"
            )
        if mesh.spec.topology is Topology.PRIMARY_REMOTE and got_certificate:
            problems.append(
                f"primary-remote: with the primary's istiod down, a new pod in the remote {other} got a certificate: who signed it?"
            )
        traffic.step(f"istiod of {down} back")
        mesh[down].scale("istiod", ISTIO_SYSTEM, 1)
        if not mesh[other].wait_ready(NEWCOMER, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 4):
            problems.append(f"with istiod back, the new pod in {other} did not get ready")
        traffic.step("after")
    run_record.procedures["ControlPlaneOutage"] = traffic.counts()
    problems += [f"calls were lost: {line}" for line in traffic.lost()]
    require(not problems, "; ".join(problems))
