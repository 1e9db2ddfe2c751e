"""Extended profile: will the mesh survive a bad day? Clients keep calling for the whole procedure and
every lost call is reported with its symptom, step by step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509

from meshfed import manifests
from meshfed.backends.base import BackendError, Cluster, Mesh
from meshfed.calls import CallResult, Symptom, summarize
from meshfed.cases import Feature, case, not_supported
from meshfed.diagnose import istiod_clusters, mesh_config, read_cacerts
from meshfed.expect import Traffic, Wanted, reliably, require
from meshfed.manifests import CANARY, CLIENT, ISTIO_SYSTEM, TEST_NAMESPACE, only_in, service_url
from meshfed.misconfig import publishes_its_root
from meshfed.options import SuiteOptions
from meshfed.pki import (
    ChainVerificationError,
    PluginCA,
    bundle_from_secret,
    cert_pem,
    verify_chain,
)
from meshfed.pki.authority import new_intermediate, new_root
from meshfed.pki.certs import load_certs
from meshfed.report.model import RunRecord
from meshfed.topology import Topology

NEWCOMER = "newcomer"


def from_ready_client(cluster: Cluster, url: str, count: int) -> list[CallResult]:
    """Calls from the client pod that is ready now; a pod that went away between being chosen and being
    asked (procedures restart the clients too) is not a lost call: another is chosen."""
    for _ in range(3):
        try:
            return cluster.call(cluster.pod_of(TEST_NAMESPACE, CLIENT).name, TEST_NAMESPACE, url, count, timeout=5)
        except BackendError:
            continue
    return cluster.call(cluster.pod_of(TEST_NAMESPACE, CLIENT).name, TEST_NAMESPACE, url, count, timeout=5)


def cross_cluster_traffic(mesh: Mesh) -> Traffic:
    """Every ordered pair calling without pause."""
    calls = {}
    for pair in mesh.spec.pairs():
        url = service_url(only_in(pair.destination))
        calls[pair.id] = lambda n, c=mesh[pair.source], u=url: from_ready_client(c, u, n)
    return Traffic(calls)


def steady_after(mesh: Mesh, traffic: Traffic, window: int) -> list[str]:
    """After a procedure: every pair called during it (a pair that made no call has nothing to show), and
    every pair holds a steady window on the mesh it left."""
    problems = [f"{label}: no call was answered during the procedure" for label in traffic.silent()]
    for pair in mesh.spec.pairs():
        outcome = reliably(
            pair.id,
            calls_between(mesh, pair.source, pair.destination),
            window=window,
            deadline=mesh.convergence_deadline,
            wanted=Wanted(cluster=pair.destination),
        )
        if not outcome.held:
            problems.append(f"after the procedure: {outcome.message()}")
    return problems


def start_newcomer(mesh: Mesh, cluster: Cluster) -> bool:
    """A new pod in ``cluster``: True when it got ready with a certificate."""
    cluster.apply(
        manifests.idle_client(NEWCOMER, cluster.name, image=mesh.spec.workload_image, account=CLIENT, version="new")
    )
    if not cluster.wait_ready(NEWCOMER, TEST_NAMESPACE, timeout=mesh.convergence_deadline):
        return False
    try:
        return bool(cluster.proxy_certs(cluster.pod_of(TEST_NAMESPACE, NEWCOMER).name, TEST_NAMESPACE).chain)
    except BackendError:
        return False


@pytest.fixture
def istiod_restored(mesh: Mesh) -> Iterator[dict[str, dict[str, int]]]:
    """Each istiod cluster's (the primaries', or the external control plane's) istiod Deployments and replicas,
    as they were before the case; put back after it."""
    saved = {name: cluster.istiods() for name, cluster in istiod_clusters(mesh).items()}
    yield saved
    for name, istiods in saved.items():
        for deployment, replicas in istiods.items():
            mesh[name].scale(deployment, ISTIO_SYSTEM, replicas, timeout=mesh.convergence_deadline * 10)
    for name in mesh.spec.names:
        mesh[name].delete("Deployment", NEWCOMER, TEST_NAMESPACE)


@case(
    "ControlPlaneOutage",
    "With an istiod down, existing workloads keep calling across clusters; new pods get certificates only where an istiod serves them.",
    {Feature.CONTROL_PLANE_OUTAGE},
    profile="extended",
)
def test_control_plane_outage(
    mesh: Mesh, suite_options: SuiteOptions, run_record: RunRecord, istiod_restored: dict[str, dict[str, int]]
) -> None:
    if suite_options.backend == "existing" and not suite_options.allow_destructive:
        not_supported("destructive: it stops istiod; pass --allow-destructive to run it on existing clusters")
    if not istiod_restored:
        not_supported(
            "the external control plane's cluster was not given (--external-context): its istiod cannot be stopped"
        )
    down = mesh.spec.control_planes[0].name
    other = mesh.spec.names[-1]
    problems: list[str] = []
    with cross_cluster_traffic(mesh) as traffic:
        traffic.step(f"istiod of {down} scaled to 0")
        for deployment in istiod_restored[down]:
            mesh[down].scale(deployment, ISTIO_SYSTEM, 0)
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
        if mesh.spec.topology is Topology.EXTERNAL_CONTROL_PLANE and got_certificate:
            problems.append(
                f"external-control-plane: with the external istiod down, a new pod in {other} got a certificate: who signed it?"
            )
        traffic.step(f"istiod of {down} back")
        for deployment, replicas in istiod_restored[down].items():
            mesh[down].scale(deployment, ISTIO_SYSTEM, replicas)
        if not mesh[other].wait_ready(NEWCOMER, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 4):
            problems.append(f"with istiod back, the new pod in {other} did not get ready")
        traffic.step("after")
    run_record.procedures["ControlPlaneOutage"] = traffic.counts()
    problems += [f"calls were lost: {line}" for line in traffic.lost()]
    problems += steady_after(mesh, traffic, suite_options.steady_calls)
    require(not problems, "; ".join(problems))


def _locality_policy(mesh: Mesh, outlier_detection: bool) -> dict[str, object]:
    failover = [
        {"from": mesh.spec.cluster(a).region, "to": mesh.spec.cluster(b).region}
        for a, b in zip(mesh.spec.names, mesh.spec.names[1:] + mesh.spec.names[:1], strict=True)
    ]
    policy: dict[str, object] = {"loadBalancer": {"localityLbSetting": {"enabled": True, "failover": failover}}}
    if outlier_detection:
        # maxEjectionPercent 100: Envoy (1.31 on) ejects a host only while the ejected share stays within it
        # (default 10%, and Istio leaves always_eject_one_host off), so with a few endpoints per cluster
        # nothing would ever be ejected; real Istio on the host backend showed it.
        policy["outlierDetection"] = {
            "consecutive5xxErrors": 1,
            "interval": "1s",
            "baseEjectionTime": "1m",
            "maxEjectionPercent": 100,
        }
    return policy


def _apply_everywhere(mesh: Mesh, obj: dict[str, object]) -> None:
    """Istio config goes to every cluster that holds config (each primary reads only its own)."""
    for name in sorted({mesh.spec.config_cluster(n) for n in mesh.spec.names}):
        mesh[name].apply(obj)  # type: ignore[arg-type]


@pytest.fixture
def locality_restored(mesh: Mesh) -> Iterator[None]:
    yield
    for name in sorted({mesh.spec.config_cluster(n) for n in mesh.spec.names}):
        mesh[name].delete("DestinationRule", "echo-locality", TEST_NAMESPACE)
    home = mesh[mesh.spec.names[0]]
    home.patch("Deployment", manifests.ECHO, TEST_NAMESPACE, {"spec": {"replicas": 1}})
    deployment = home.get("Deployment", manifests.ECHO, TEST_NAMESPACE) or {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "FAIL_WITH"]
    home.patch(
        "Deployment", manifests.ECHO, TEST_NAMESPACE, {"spec": {"template": {"spec": {"containers": [container]}}}}
    )
    home.wait_ready(manifests.ECHO, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 10)


class Watch:
    """Calls from one client to ``echo`` until the answers come from ``cluster`` (N in a row), timed."""

    def __init__(self, mesh: Mesh, source: str, window: int) -> None:
        cluster = mesh[source]
        pod = cluster.pod_of(TEST_NAMESPACE, CLIENT).name
        self.make = lambda n: cluster.call(pod, TEST_NAMESPACE, service_url(manifests.ECHO), n, timeout=5)
        self.mesh = mesh
        self.window = window
        self.steps: list[tuple[str, int, int]] = []

    def until(self, step: str, cluster: str, consecutive: int = 5) -> tuple[bool, float, str]:
        """Until ``consecutive`` answers in a row come from ``cluster``, then a steady window from it alone."""
        started = time.monotonic()
        outcome = reliably(
            step,
            self.make,
            window=self.window,
            consecutive=consecutive,
            batch=1,
            wanted=Wanted(cluster=cluster),
            deadline=self.mesh.convergence_deadline + 10,
        )
        elapsed = time.monotonic() - started
        answered = sum(r.ok for r in outcome.results)
        self.steps.append((f"{step} ({elapsed:.1f}s)", answered, len(outcome.results) - answered))
        return outcome.held, elapsed, outcome.message()


@case(
    "LocalityFailover",
    "With localityLbSetting failover and outlierDetection, calls stay in their region, move to the other region when the local echo goes or fails, and come back.",
    {Feature.LOCALITY_FAILOVER},
    profile="extended",
)
def test_locality_failover(
    mesh: Mesh, suite_options: SuiteOptions, run_record: RunRecord, locality_restored: None
) -> None:
    if suite_options.backend == "existing" and not suite_options.allow_destructive:
        not_supported(
            "destructive: it scales and breaks the echo; pass --allow-destructive to run it on existing clusters"
        )
    home, away = mesh.spec.names[0], mesh.spec.names[1]
    watch = Watch(mesh, home, suite_options.steady_calls)
    problems: list[str] = []
    _apply_everywhere(
        mesh,
        manifests.destination_rule("echo-locality", manifests.ECHO, _locality_policy(mesh, outlier_detection=False)),
    )
    sample = watch.make(12 * len(mesh.spec.names))
    spread = {r.cluster for r in sample if r.ok}
    answered = sum(r.ok for r in sample)
    watch.steps.append(
        (
            f"without outlierDetection: answered by {', '.join(sorted(map(str, spread)))}",
            answered,
            len(sample) - answered,
        )
    )
    if answered < len(sample):
        problems.append(f"without outlierDetection every call must be answered: {summarize(sample)}")
    if spread != set(mesh.spec.names):
        problems.append(
            f"without outlierDetection traffic must spread over every cluster (Istio ignores locality then), but only {sorted(map(str, spread))} answered"
        )
    _apply_everywhere(
        mesh,
        manifests.destination_rule("echo-locality", manifests.ECHO, _locality_policy(mesh, outlier_detection=True)),
    )
    for step, act, target in (
        ("stays local", None, home),
        (f"echo in {home} scaled to 0: fail over", lambda: mesh[home].scale(manifests.ECHO, TEST_NAMESPACE, 0), away),
        (f"echo in {home} back: fail back", lambda: mesh[home].scale(manifests.ECHO, TEST_NAMESPACE, 1), home),
        (f"echo in {home} answers 503: ejected, fail over", lambda: _fail(mesh, home, "503"), away),
        (f"echo in {home} healthy again: fail back", lambda: _fail(mesh, home, None), home),
    ):
        if act is not None:
            act()
        converged, _, message = watch.until(step, target)
        if not converged:
            problems.append(f"{step}: calls from {home} were not answered by {target}: {message}")
    run_record.procedures["LocalityFailover"] = watch.steps
    require(not problems, "; ".join(problems))


def _fail(mesh: Mesh, cluster: str, status: str | None) -> None:
    """Patch the echo Deployment's env (FAIL_WITH makes it answer that status) and roll it out."""
    target = mesh[cluster]
    deployment = target.get("Deployment", manifests.ECHO, TEST_NAMESPACE) or {}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [e for e in container["env"] if e["name"] != "FAIL_WITH"] + (
        [{"name": "FAIL_WITH", "value": status}] if status else []
    )
    target.patch(
        "Deployment", manifests.ECHO, TEST_NAMESPACE, {"spec": {"template": {"spec": {"containers": [container]}}}}
    )
    target.wait_ready(manifests.ECHO, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 10)


def _istiod(revision: str) -> str:
    return f"istiod-{revision}" if revision else "istiod"


def _gateway_address(mesh: Mesh, cluster: str) -> str:
    service = mesh[cluster].get("Service", manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM) or {}
    return str((((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [{}])[0].get("ip", ""))


def _data_plane_ahead(mesh: Mesh) -> list[str]:
    """Pods whose sidecar revision has no ready control plane where their configuration comes from."""
    found = []
    for name in mesh.spec.names:
        config = mesh[mesh.spec.config_cluster(name)]
        for pod in mesh[name].pods(TEST_NAMESPACE):
            if not pod.has_sidecar:
                continue
            revision = "" if pod.revision == "default" else pod.revision
            istiods = config.pods(ISTIO_SYSTEM, {"app": "istiod", "istio.io/rev": pod.revision})
            if not any(p.ready for p in istiods):
                found.append(
                    f"{name}/{pod.name} runs revision {pod.revision or 'default'} but {_istiod(revision)} is not serving"
                )
    return found


def upgrade(mesh: Mesh, traffic: Traffic, old: str, new: str) -> list[str]:
    """Istio's canary upgrade, control plane first in every cluster, then the data plane cluster by cluster."""
    problems: list[str] = []
    deadline = mesh.convergence_deadline * 10
    label = new or "default"
    traffic.step(f"control plane {label} installed in every cluster")
    for spec in mesh.spec.primaries:
        serves_remotes = mesh.spec.topology is Topology.PRIMARY_REMOTE
        mesh[spec.name].apply(manifests.istio_operator(spec, mesh.spec, external_istiod=serves_remotes, revision=new))
        if not mesh[spec.name].wait_ready(_istiod(new), ISTIO_SYSTEM, timeout=deadline):
            problems.append(f"{spec.name}: {_istiod(new)} did not get ready")
        if serves_remotes:
            for obj in manifests.expose_istiod(new):
                mesh[spec.name].apply(obj)
    for spec in mesh.spec.clusters:
        if spec.role == "remote":
            primary = mesh.spec.config_cluster(spec.name)
            mesh[spec.name].apply(
                manifests.istio_operator_remote(spec, mesh.spec, _gateway_address(mesh, primary), revision=new)
            )
    for spec in mesh.spec.primaries:
        for revision in (old, new):
            if not any(
                p.ready
                for p in mesh[spec.name].pods(ISTIO_SYSTEM, {"app": "istiod", "istio.io/rev": revision or "default"})
            ):
                problems.append(f"{spec.name}: revision {revision or 'default'} does not serve while both should")
        if new == CANARY and mesh.upgrade_version:  # another build: its istiod must run that build's image
            running = mesh[spec.name].istiod_versions().get(CANARY)
            if running != mesh.upgrade_version:
                problems.append(f"{spec.name}: {_istiod(CANARY)} runs Istio {running}, not {mesh.upgrade_version}")
    traffic.step(f"east-west gateways moved to {label}")
    for spec in mesh.spec.clusters:
        mesh[spec.name].apply(manifests.eastwest_gateway(spec.network, revision=new))
        mesh[spec.name].wait_ready(manifests.EASTWEST_GATEWAY, ISTIO_SYSTEM, timeout=deadline)
    for spec in mesh.spec.clusters:
        traffic.step(f"data plane of {spec.name} moved to {label}")
        cluster = mesh[spec.name]
        labels = (
            {"istio-injection": "enabled", "istio.io/rev": None}
            if not new
            else {"istio-injection": None, "istio.io/rev": new}
        )
        cluster.patch("Namespace", TEST_NAMESPACE, None, {"metadata": {"labels": labels}})
        for deployment in cluster.list("Deployment", TEST_NAMESPACE):
            cluster.rollout_restart(deployment["metadata"]["name"], TEST_NAMESPACE, timeout=deadline)
        behind = [p.name for p in cluster.pods(TEST_NAMESPACE) if p.has_sidecar and p.revision != label]
        if behind:
            problems.append(f"{spec.name}: pods still on the old revision after the restart: {', '.join(behind)}")
        problems += _data_plane_ahead(mesh)
    traffic.step(f"revision {old or 'default'} removed")
    for spec in mesh.spec.clusters:
        name = f"control-plane-{old}" if old else "control-plane"
        mesh[spec.name].delete("IstioOperator", name, ISTIO_SYSTEM)
        if spec.role == "primary" and mesh.spec.topology is Topology.PRIMARY_REMOTE and old:
            route = manifests.expose_istiod_route(old)
            mesh[spec.name].delete(route["kind"], route["metadata"]["name"], ISTIO_SYSTEM)
    problems += _wait_until_removed(mesh, _istiod(old), deadline)
    problems += _data_plane_ahead(mesh)
    return problems


def _wait_until_removed(mesh: Mesh, istiod: str, timeout: float) -> list[str]:
    """Until the removed revision's istiod Deployment is gone everywhere: on a real cluster it is still
    being deleted when istioctl uninstall returns, and the next case must not find it."""
    ends = time.monotonic() + timeout
    while True:
        left = [spec.name for spec in mesh.spec.primaries if mesh[spec.name].get("Deployment", istiod, ISTIO_SYSTEM)]
        if not left:
            return []
        if time.monotonic() >= ends:
            return [f"{', '.join(left)}: {istiod} is still there {timeout:g} s after its revision was uninstalled"]
        time.sleep(1)


@case(
    "CanaryUpgrade",
    "A canary upgrade by revision, control plane first in every cluster, then the data plane cluster by cluster, loses no call.",
    {Feature.CANARY_UPGRADE},
    profile="extended",
)
def test_canary_upgrade(
    mesh: Mesh, suite_options: SuiteOptions, run_record: RunRecord, request: pytest.FixtureRequest
) -> None:
    if suite_options.backend == "existing":
        not_supported("it installs a second Istio version beside the first, and the existing backend installs no Istio")
    if mesh.spec.external is not None:
        not_supported(
            "Istio documents no canary upgrade of an external control plane (the discovery address and the injection "
            "URL the data-plane clusters use are not revision-aware: istio/istio#31322, #34867), and meshfed invents none"
        )
    with cross_cluster_traffic(mesh) as traffic:
        problems = upgrade(mesh, traffic, old="", new=CANARY)
        problems += [f"while restoring: {p}" for p in upgrade(mesh, traffic, old=CANARY, new="")]
        traffic.step("after")
    run_record.procedures["CanaryUpgrade"] = traffic.counts()
    request.node.user_properties.append(
        (
            "upgrade",
            f"{mesh.istio_version} -> {mesh.upgrade_version or mesh.istio_version} (revision {CANARY}) and back",
        )
    )
    problems += [f"calls were lost: {line}" for line in traffic.lost(excused=cut_by_gateway_exit)]
    for line in traffic.excused_losses(cut_by_gateway_exit):  # shown in JUnit and HTML, failed beyond the tolerance
        request.node.user_properties.append(("cutByGatewayExit", line))
    for label, cut in traffic.tally(cut_by_gateway_exit).items():
        if cut > GATEWAY_EXITS_PER_PAIR:
            problems.append(
                f"{label}: {cut} calls cut by east-west gateway exits, beyond the {GATEWAY_EXITS_PER_PAIR} tolerated "
                "(one call in flight per gateway exit on its path)"
            )
    problems += steady_after(mesh, traffic, suite_options.steady_calls)
    require(not problems, "; ".join(problems))


# The calls a pair may lose to gateway exits: its one client calls one call at a time, and its calls cross one
# east-west gateway (its destination's), which the upgrade replaces twice (to the canary and back).
GATEWAY_EXITS_PER_PAIR = 2


def cut_by_gateway_exit(step: str, result: CallResult) -> bool:
    """A call in flight when a replaced east-west gateway exits. The gateway passes TLS through, so its
    drain cannot close the connections through it gracefully; it closes them when it exits, and the
    caller's sidecar answers 503 "reset reason: connection termination". Istio's default retry policy
    (connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes) does not retry a
    reset, so on real Istio a gateway rollout under load may cut such a call (seen on the host backend,
    one call when it happens). At most one per gateway exit on a pair's path is tolerated
    (``GATEWAY_EXITS_PER_PAIR``); any other failure fails the case."""
    return (
        step.startswith("east-west gateways moved")
        and result.symptom is Symptom.CONNECTION_RESET
        and "connection termination" in result.seen
    )


def _cacerts_files(mesh: Mesh, cluster: str) -> dict[str, bytes]:
    secret = read_cacerts(mesh[cluster])
    return bundle_from_secret(secret) if secret else {}


def _reinstall(mesh: Mesh, env: dict[str, str] | None) -> None:
    """Every istiod installed again as the mesh was, with ``env`` added to its environment."""
    if mesh.spec.external is not None:
        external = mesh[mesh.spec.external.name]
        # The address the proxies reach it at, as its install wrote it into its mesh config.
        discovery = str((mesh_config(external).get("defaultConfig") or {}).get("discoveryAddress") or "")
        address = discovery.rpartition(":")[0]
        if not address:
            raise BackendError(f"{external.name}: the external istiod's mesh config names no discovery address")
        config = mesh.spec.cluster(mesh.spec.config_cluster(mesh.spec.names[0]))
        external.apply(manifests.external_istiod(config, mesh.spec, address, pilot_env=env))
        external.wait_ready("istiod", ISTIO_SYSTEM, timeout=mesh.convergence_deadline * 10)
        return
    for spec in mesh.spec.primaries:
        serves_remotes = mesh.spec.topology is Topology.PRIMARY_REMOTE
        mesh[spec.name].apply(manifests.istio_operator(spec, mesh.spec, external_istiod=serves_remotes, pilot_env=env))
        mesh[spec.name].wait_ready("istiod", ISTIO_SYSTEM, timeout=mesh.convergence_deadline * 10)


def _restart_onto_current_ca(mesh: Mesh) -> list[str]:
    """Restart every workload until its pods hold certificates from their istiod's current intermediate.
    istiod reads a changed cacerts only once the kubelet has synced its mounted Secret (a minute or two on
    a real cluster), so a pod restarted before that is certified by the previous intermediate; seen on the
    host backend in primary-remote, where the primary's pods kept the old root to the end."""
    ends = time.monotonic() + mesh.convergence_deadline * 3
    problems = []
    for name in mesh.spec.names:
        cluster = mesh[name]
        signer = _cacerts_files(mesh, mesh.spec.control_plane(name)).get("ca-cert.pem")
        current = load_certs(signer, "cacerts ca-cert.pem")[0] if signer else None
        for deployment in cluster.list("Deployment", TEST_NAMESPACE):
            selector = deployment["spec"]["selector"].get("matchLabels") or {}
            while True:
                cluster.rollout_restart(
                    deployment["metadata"]["name"], TEST_NAMESPACE, timeout=mesh.convergence_deadline * 10
                )
                stale = [
                    pod.name
                    for pod in cluster.pods(TEST_NAMESPACE, selector)
                    if pod.has_sidecar
                    and pod.ready
                    and not pod.terminating
                    and current is not None
                    and cluster.proxy_certs(pod.name, TEST_NAMESPACE).chain[1:2] != (current,)
                ]
                if not stale:
                    break
                if time.monotonic() >= ends:
                    problems.append(f"{name}: {', '.join(stale)} still certified by the previous intermediate")
                    break
                time.sleep(5)  # istiod has not read the new cacerts yet
    return problems


def rotate_root(
    mesh: Mesh,
    traffic: Traffic,
    steps: list[tuple[str, Callable[[str, dict[str, bytes]], dict[str, bytes]]]],
    window: int,
) -> list[str]:
    """Each step rewrites every cluster's cacerts; istiod (multi-root) takes it, then workloads restart."""
    problems = []
    for title, rewrite in steps:
        traffic.step(title)
        for name in mesh.spec.cacerts_clusters:
            files = _cacerts_files(mesh, name)
            if files:
                mesh[name].apply(manifests.cacerts(rewrite(name, files)))
        problems += _wait_for_istiod_roots(mesh, title)
        problems += [f"after '{title}': {p}" for p in _restart_onto_current_ca(mesh)]
        for pair in mesh.spec.pairs():
            outcome = reliably(
                pair.id,
                calls_between(mesh, pair.source, pair.destination),
                window=window,
                deadline=mesh.convergence_deadline,
                wanted=Wanted(cluster=pair.destination),
            )
            if not outcome.held:
                problems.append(f"after '{title}': {outcome.message()}")
    return problems


def _wait_for_istiod_roots(mesh: Mesh, title: str) -> list[str]:
    """Until every istiod serves the roots of its new cacerts (in istio-ca-root-cert of every cluster it leads,
    the remotes too: a proxy that starts before then cannot verify istiod): on a real cluster a
    Secret reaches istiod's mounted files only after the kubelet's sync, up to a minute later."""
    deadline = time.monotonic() + mesh.convergence_deadline * 2
    # (where, whose istiod): every cluster, the root of the istiod that serves it (its own, its primary's, the
    # external one's).
    waiting = [(name, mesh.spec.control_plane(name)) for name in mesh.spec.names]
    while waiting:
        waiting = [(name, signer) for name, signer in waiting if not publishes_its_root(mesh, name, signer=signer)]
        if waiting and time.monotonic() >= deadline:
            where = ", ".join(name if name == signer else f"{name} (istiod of {signer})" for name, signer in waiting)
            return [f"after '{title}': istiod in {where} does not serve the new roots"]
        if waiting:
            time.sleep(1)
    return []


def calls_between(mesh: Mesh, source: str, destination: str) -> Callable[[int], list[CallResult]]:
    url = service_url(only_in(destination))
    return lambda n: from_ready_client(mesh[source], url, n)


@case(
    "RootRotation",
    "The shared root is rotated (combined roots, new intermediates, old root removed) with every pair calling and no call lost.",
    {Feature.ROOT_ROTATION},
    profile="extended",
)
def test_root_rotation(mesh: Mesh, suite_options: SuiteOptions, run_record: RunRecord) -> None:
    if suite_options.backend == "existing" and not suite_options.allow_destructive:
        not_supported("destructive: it replaces every cluster's CA; pass --allow-destructive")
    if mesh.spec.external is not None and suite_options.backend == "existing":
        not_supported(
            "it reinstalls the external istiod as meshfed installs one (with ISTIO_MULTIROOT_MESH=true): on a control "
            "plane meshfed did not install that would replace the operator's install"
        )
    if any(not _cacerts_files(mesh, spec.name) for spec in mesh.spec.control_planes):
        not_supported(
            "the mesh has no plug-in CA (cacerts) where each istiod runs, so there is no shared root to rotate"
        )
    new = new_root(key_type="ecdsa" if suite_options.backend == "embedded" else "rsa", common_name="Root CA (rotated)")
    new_pem = cert_pem(new.cert)
    fresh: dict[str, PluginCA] = {}

    def combined(name: str, files: dict[str, bytes]) -> dict[str, bytes]:
        return {**files, "root-cert.pem": files["root-cert.pem"] + new_pem}

    def new_intermediate_signed_by_new_root(name: str, files: dict[str, bytes]) -> dict[str, bytes]:
        fresh[name] = PluginCA.from_parts(
            new_intermediate(new, name, key_type="ecdsa" if suite_options.backend == "embedded" else "rsa"), [new.cert]
        )
        return {**fresh[name].secret_data(), "root-cert.pem": files["root-cert.pem"]}

    def old_root_removed(name: str, files: dict[str, bytes]) -> dict[str, bytes]:
        return {**files, "root-cert.pem": new_pem}

    original = {name: _cacerts_files(mesh, name) for name in mesh.spec.cacerts_clusters}
    problems: list[str] = []
    restored = False
    try:
        with cross_cluster_traffic(mesh) as traffic:
            traffic.step("istiod restarted with ISTIO_MULTIROOT_MESH=true")
            _reinstall(mesh, {"ISTIO_MULTIROOT_MESH": "true"})
            problems += rotate_root(
                mesh,
                traffic,
                [
                    ("1. root-cert.pem holds the old and the new root", combined),
                    ("2. new intermediates signed by the new root", new_intermediate_signed_by_new_root),
                    ("3. the old root removed", old_root_removed),
                ],
                suite_options.steady_calls,
            )
            problems += _chains_lead_to(mesh, new.cert)
            # Back to the PKI the mesh was given, by the same rotation backwards, so that no later case
            # runs on a root the user never gave it; a healthy mesh loses no call in it either.
            problems += _restore_pki(mesh, original, traffic)
            restored = True
            traffic.step("istiod back to its install options")
            _reinstall(mesh, None)
            traffic.step("after")
        run_record.procedures["RootRotation"] = traffic.counts()
        problems += [f"calls were lost: {line}" for line in traffic.lost()]
        problems += steady_after(mesh, traffic, suite_options.steady_calls)
    finally:
        if not restored:
            problems += _restore_pki(mesh, original, None)
            _reinstall(mesh, None)
    require(not problems, "; ".join(problems))


def _chains_lead_to(mesh: Mesh, root: x509.Certificate) -> list[str]:
    problems = []
    for name in mesh.spec.names:
        for pod in mesh[name].pods(TEST_NAMESPACE):
            if not pod.has_sidecar:
                continue
            certs = mesh[name].proxy_certs(pod.name, TEST_NAMESPACE)
            try:
                if verify_chain(certs.chain, [root]).root != root:
                    problems.append(f"{name}/{pod.name}: its chain does not lead to the new root")
            except ChainVerificationError as error:
                problems.append(f"{name}/{pod.name}: its chain does not lead to the new root ({error})")
    return problems


def _restore_pki(mesh: Mesh, original: dict[str, dict[str, bytes]], traffic: Traffic | None) -> list[str]:
    """The rotation run backwards to each cluster's original cacerts, whatever that holds (a second root
    included): the original root beside the current one, the original intermediates, the original files."""
    steps: list[tuple[str, Callable[[str, dict[str, bytes]], dict[str, bytes]]]] = [
        (
            "back 1. the original root beside the new",
            lambda n, f: {**f, "root-cert.pem": f["root-cert.pem"] + original[n]["root-cert.pem"]},
        ),
        ("back 2. the original intermediates", lambda n, f: {**original[n], "root-cert.pem": f["root-cert.pem"]}),
        ("back 3. the original cacerts", lambda n, _f: dict(original[n])),
    ]
    problems = []
    for title, rewrite in steps:
        if traffic is not None:
            traffic.step(title)
        for name, files in original.items():
            if files:
                mesh[name].apply(manifests.cacerts(rewrite(name, _cacerts_files(mesh, name))))
        problems += _wait_for_istiod_roots(mesh, title)
        problems += [f"while restoring the original PKI, after '{title}': {p}" for p in _restart_onto_current_ca(mesh)]
    return problems
