"""Core profile: what every federated mesh must do, in both topologies.

Each case follows an Istio guide: "Install Multi-Primary / Primary-Remote on different networks" and
"Verify the installation" (calls in every direction), "Plug in CA Certificates" (one root),
"Mutual TLS Migration" and "Authorization" (identities and policies across clusters).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from cryptography import x509

from meshfed import manifests
from meshfed.backends.base import Cluster, Mesh
from meshfed.calls import CallResult, Symptom, summarize
from meshfed.cases import Feature, case
from meshfed.causes import likely_cause, unreached
from meshfed.diagnose import cacerts_forbidden, cacerts_roots, read_cacerts, root_mismatch, trust_domain
from meshfed.expect import Wanted, converge, hold, reliably, require
from meshfed.manifests import CLIENT, TEST_NAMESPACE, only_in, service_url
from meshfed.options import SuiteOptions
from meshfed.pki import ChainVerificationError, Purpose, bundle_from_secret, fingerprint, load_certs, verify_chain
from meshfed.pki.verify import uri_sans
from meshfed.report.model import RunRecord
from meshfed.topology import ClusterPair

OUTSIDE = "meshfed-outside"
STRANGER = "stranger"
# A policy change reaches a connection opened before it only when that connection closes: Envoy drains a
# connection whose filter chain changed (Istio runs it with `--drain-strategy immediate`, so it closes after
# its next answer, given under the old chain), and each of the caller proxy's worker threads keeps a pool of
# its own (Istio's default proxy concurrency: 2). Calls made one at a time hold one connection per worker, so
# at most this many answers after the policy may still be the old one, once each (seen on host, 1 in 50).
STALE_ANSWERS_AFTER_A_POLICY = 2


def calls_from(cluster: Cluster, url: str, app: str = CLIENT, namespace: str = TEST_NAMESPACE):  # type: ignore[no-untyped-def]
    pod = cluster.pod_of(namespace, app)
    return lambda count: cluster.call(pod.name, namespace, url, count)


def identity(mesh: Mesh, cluster: str, account: str = CLIENT) -> str:
    """The SPIFFE ID a workload of ``cluster`` carries, in that cluster's trust domain."""
    return f"spiffe://{trust_domain(mesh[cluster]) or 'cluster.local'}/ns/{TEST_NAMESPACE}/sa/{account}"


def explain(results: list[CallResult], mesh: Mesh, destination: str | None = None) -> str:
    """The likely cause of failed calls (to the service that runs only in ``destination``), read from the mesh."""
    cause = likely_cause(mesh, results, destination)
    return f"; likely cause: {cause}" if cause else ""


@case(
    "CrossClusterReachability",
    "A client in the source cluster reaches a service that runs only in the destination.",
    {Feature.CROSS_CLUSTER_CALLS},
)
def test_cross_cluster_reachability(
    mesh: Mesh, pair: ClusterPair, run_record: RunRecord, suite_options: SuiteOptions
) -> None:
    source = mesh[pair.source]
    caller = identity(mesh, pair.source)
    window, deadline = suite_options.steady_calls, mesh.convergence_deadline
    cross = reliably(
        pair.id,
        calls_from(source, service_url(only_in(pair.destination))),
        window=window,
        deadline=deadline,
        wanted=Wanted(cluster=pair.destination, caller=caller),
    )
    local = reliably(
        f"{pair.source} (same cluster)",
        calls_from(source, service_url(only_in(pair.source))),
        window=window,
        deadline=deadline,
        wanted=Wanted(cluster=pair.source, caller=caller),
    )
    for kind, outcome in (("cross", cross), ("same", local)):
        run_record.record_latency(
            pair.id, kind, [r.latency_ms for r in outcome.window.results if r.ok] if outcome.window else []
        )
    problems = [
        outcome.message() + explain(outcome.results, mesh, destination)
        for outcome, destination in ((cross, pair.destination), (local, pair.source))
        if not outcome.held
    ]
    require(not problems, "; ".join(problems))


@case(
    "MeshWideLoadBalancing",
    "From every cluster, the service that runs everywhere answers from every cluster, each its share.",
    {Feature.MESH_WIDE_LOAD_BALANCING},
)
def test_mesh_wide_load_balancing(mesh: Mesh, cluster_name: str, suite_options: SuiteOptions) -> None:
    make = calls_from(mesh[cluster_name], service_url(manifests.ECHO))
    wanted = set(mesh.spec.names)
    results: list[CallResult] = []
    ends = time.monotonic() + mesh.convergence_deadline
    while not wanted <= {r.cluster for r in results if r.ok}:  # converged: every cluster has answered
        if time.monotonic() > ends:
            seen = {r.cluster for r in results if r.ok}
            pytest.fail(
                f"{cluster_name}: echo answered only from {sorted(c for c in seen if c)} in {len(results)} calls "
                f"({summarize(results)}); never from {sorted(wanted - seen)}"
                + "".join(f"; likely cause: {why}" for name in sorted(wanted - seen) if (why := unreached(mesh, name))),
                pytrace=False,
            )
        results += make(2 * len(wanted))
    # With no locality policy Istio spreads calls over every endpoint alike (one echo per cluster), so each
    # cluster answers about 1/N of the window; the bound is half of that, which a fair spread misses with a
    # probability below 1e-4 at 50 calls per cluster.
    window = hold(
        f"{cluster_name} -> {manifests.ECHO}",
        make,
        suite_options.steady_calls * len(wanted),
        Wanted(caller=identity(mesh, cluster_name)),
    )
    problems = [window.message() + explain(window.results, mesh)] if not window.held else []
    shares = {name: sum(r.ok and r.cluster == name for r in window.results) for name in sorted(wanted)}
    bound = window.size / (2 * len(wanted))
    short = [f"{name} {count}" for name, count in shares.items() if count < bound]
    if short:
        problems.append(
            f"{cluster_name}: of {window.size} calls, {', '.join(f'{n} answered {c}' for n, c in shares.items())}: "
            f"{', '.join(short)} is below the bound of {bound:g} (half of an even share)"
        )
    require(not problems, "; ".join(problems))


@pytest.fixture
def outside_client(mesh: Mesh, pair: ClusterPair) -> Iterator[Cluster]:
    """A client without a sidecar (its namespace has no injection label) in the destination cluster."""
    cluster = mesh[pair.destination]
    for obj in manifests.client_outside_mesh(cluster.name, OUTSIDE, mesh.spec.workload_image):
        cluster.apply(obj)
    try:
        ready = cluster.wait_ready(CLIENT, OUTSIDE, timeout=mesh.convergence_deadline * 4)
        require(ready, f"{pair.destination}: the client outside the mesh did not get ready")
        yield cluster
    finally:
        mesh[mesh.spec.config_cluster(pair.destination)].delete("PeerAuthentication", "default", TEST_NAMESPACE)
        cluster.delete("Namespace", OUTSIDE)


REFUSED = {Symptom.CONNECTION_RESET, Symptom.CONNECTION_REFUSED}


@case(
    "CrossClusterMutualTLS",
    "Cross-cluster replies show the caller's SPIFFE identity; under STRICT a caller outside the mesh is refused.",
    {Feature.MUTUAL_TLS},
)
def test_cross_cluster_mutual_tls(
    mesh: Mesh, pair: ClusterPair, outside_client: Cluster, suite_options: SuiteOptions
) -> None:
    url = service_url(only_in(pair.destination))
    window, deadline = suite_options.steady_calls, mesh.convergence_deadline
    from_mesh = Wanted(cluster=pair.destination, caller=identity(mesh, pair.source))
    mesh_caller = calls_from(mesh[pair.source], url)
    # Reachability first, as every case establishes it: the case before may have changed the mesh (its
    # PeerAuthentication removed), and real Envoy can reset a call while its listener is being replaced.
    reached = reliably(pair.id, mesh_caller, window=window, deadline=deadline, wanted=from_mesh)
    require(reached.held, reached.message() + explain(reached.results, mesh, pair.destination))
    outside = calls_from(outside_client, url, namespace=OUTSIDE)
    label = f"{pair.destination} (no sidecar) -> {only_in(pair.destination)}"
    baseline = reliably(label, outside, window=window, deadline=deadline, wanted=Wanted(cluster=pair.destination))
    require(
        baseline.held,
        f"before STRICT (PERMISSIVE takes plaintext) a caller without a sidecar must be answered: {baseline.message()}",
    )
    mesh[mesh.spec.config_cluster(pair.destination)].apply(manifests.peer_authentication("STRICT"))
    refused = reliably(
        label,
        outside,
        window=window,
        deadline=deadline,
        wanted=Wanted(accept=lambda r: r.symptom in REFUSED, expected="refused"),
    )
    require(
        refused.held,
        f"under PeerAuthentication STRICT a caller without a sidecar must be refused: {refused.message()}",
    )
    still = hold(f"{pair.id} under STRICT", mesh_caller, window, from_mesh)
    require(still.held, still.message())


def plugged_intermediate(mesh: Mesh, cluster: str) -> x509.Certificate | None:
    """The intermediate of the cacerts that signs ``cluster``'s workloads (the istiod that serves it)."""
    if mesh.spec.external is not None and mesh.external is None:
        return None  # the external control plane's cluster was not given: its cacerts is not read
    secret = read_cacerts(mesh[mesh.spec.control_plane(cluster)])
    if secret is None:
        return None
    files = bundle_from_secret(secret)
    data = files.get("ca-cert.pem") or files.get("tls.crt")
    return load_certs(data, "ca-cert.pem")[0] if data else None


def first_proxy_root(mesh: Mesh) -> x509.Certificate | None:
    """The root the first sidecar of the first cluster trusts: the reference when no cacerts names one."""
    for cluster in mesh.clusters.values():
        for pod in cluster.pods(TEST_NAMESPACE):
            if pod.has_sidecar and pod.ready:
                roots = cluster.proxy_certs(pod.name, TEST_NAMESPACE).trusted_roots
                return roots[0] if roots else None
    return None


@case(
    "SharedRootOfTrust",
    "One root everywhere: in every cacerts Secret, every istio-ca-root-cert, every proxy; every workload chain verifies in every other cluster.",
    {Feature.SHARED_ROOT},
)
def test_shared_root_of_trust(mesh: Mesh, not_applicable: Callable[[str], None]) -> None:
    problems: list[str] = []
    roots = cacerts_roots(mesh)
    missing = [spec.name for spec in mesh.spec.control_planes if roots.get(spec.name) is None]
    managed_ca = mesh.backend == "existing" and len(missing) == len(mesh.spec.control_planes)
    if managed_ca:
        # A managed or external CA leaves no cacerts Secret, or one the user may not read: what the proxies
        # hold is judged instead.
        forbidden = cacerts_forbidden(mesh)
        why = (
            f"the cacerts Secret is not readable by this user (403) in {', '.join(forbidden)}"
            if forbidden
            else "the external control plane's cluster was not given (--external-context), so its cacerts is not read"
            if mesh.spec.external is not None and mesh.external is None
            else "no cacerts Secret in any primary"
        )
        not_applicable(
            f"secret-level check: {why} (a managed or external CA); "
            "the root every proxy trusts and every workload chain are checked"
        )
    elif missing:
        problems.append(f"no cacerts root in {', '.join(missing)}: istiod there signs with a root of its own")
    roots = {name: root for name, root in roots.items() if root is not None}
    mismatch = root_mismatch(roots)
    if mismatch:
        problems.append(mismatch)
    shared = next((root for root in roots.values() if root is not None), None)
    if managed_ca:
        shared = first_proxy_root(mesh)
        if shared is None:
            problems.append("no cacerts Secret and no ready sidecar in any cluster: there is no root to compare")
    workloads = {}
    for name, cluster in mesh.clusters.items():
        root_map = cluster.get("ConfigMap", "istio-ca-root-cert", TEST_NAMESPACE)
        if shared is not None and root_map is not None:
            held = load_certs(root_map["data"]["root-cert.pem"].encode(), "istio-ca-root-cert")
            if shared not in held:
                problems.append(
                    f"{name}: istio-ca-root-cert in {TEST_NAMESPACE} holds {', '.join(fingerprint(c) for c in held)}, "
                    f"not the cacerts root {fingerprint(shared)}"
                )
        elif root_map is None:
            problems.append(f"{name}: no istio-ca-root-cert in namespace {TEST_NAMESPACE}")
        intermediate = plugged_intermediate(mesh, name)
        for pod in cluster.pods(TEST_NAMESPACE):
            if pod.terminating:
                continue
            if not pod.has_sidecar:
                problems.append(f"{name}/{pod.name}: no sidecar, so no mesh certificate: it is outside the mesh")
                continue
            certs = cluster.proxy_certs(pod.name, TEST_NAMESPACE)
            workloads[(name, pod.name)] = certs
            if intermediate is not None and (len(certs.chain) < 2 or certs.chain[1] != intermediate):
                problems.append(
                    f"{name}/{pod.name}: its certificate was not issued by the cacerts intermediate: istiod is not on the "
                    "plugged-in CA (started before cacerts?) or the workload kept an old certificate"
                )
            if shared is not None and shared not in certs.trusted_roots:
                problems.append(
                    f"{name}/{pod.name}: the proxy trusts {', '.join(fingerprint(r) for r in certs.trusted_roots)}, not {fingerprint(shared)}"
                )
            try:
                path = verify_chain(certs.chain, certs.trusted_roots, purpose=Purpose.CLIENT)
                if shared is not None and path.root != shared:
                    problems.append(
                        f"{name}/{pod.name}: its chain leads to {fingerprint(path.root)}, not {fingerprint(shared)}"
                    )
            except ChainVerificationError as error:
                problems.append(f"{name}/{pod.name}: its own chain does not verify against its own roots: {error}")
    if len({name for name, _ in workloads}) < len(mesh.clusters):
        found = sorted({name for name, _ in workloads})
        problems.append(
            f"workload certificates were found only in {found or 'no cluster'}: nothing to compare across clusters"
        )
    for (name, pod), certs in workloads.items():
        for (other, _other_pod), theirs in workloads.items():
            if other == name:
                continue
            try:
                verify_chain(certs.chain, theirs.trusted_roots, purpose=Purpose.SERVER)
            except ChainVerificationError as error:
                problems.append(f"{name}/{pod}'s chain is rejected by the proxies of {other} ({error})")
                break
    require(not problems, "; ".join(dict.fromkeys(problems)))


@case(
    "SpiffeIdentity",
    "Each workload certificate carries exactly its SPIFFE ID; trust domains agree; the callee sees the caller's ID across clusters.",
    {Feature.SPIFFE_IDENTITY},
)
def test_spiffe_identity(mesh: Mesh, pair: ClusterPair, suite_options: SuiteOptions) -> None:
    problems = []
    source = mesh[pair.source]
    domains = {name: trust_domain(cluster) for name, cluster in mesh.clusters.items()}
    if len({d for d in domains.values() if d}) > 1:
        problems.append("trust domains differ: " + ", ".join(f"{n}={d}" for n, d in domains.items()))
    domain = domains[pair.source] or "cluster.local"
    checked = 0
    for pod in source.pods(TEST_NAMESPACE):
        if pod.terminating:
            continue
        if not pod.has_sidecar:
            problems.append(f"{pair.source}/{pod.name}: no sidecar, so no SPIFFE identity")
            continue
        leaf = source.proxy_certs(pod.name, TEST_NAMESPACE).chain[0]
        uris = uri_sans(leaf)
        expected = f"spiffe://{domain}/ns/{TEST_NAMESPACE}/sa/{pod.service_account}"
        checked += 1
        if uris != [expected]:
            problems.append(f"{pair.source}/{pod.name}: URI SANs {uris}, expected exactly [{expected}]")
    if not checked:
        problems.append(f"{pair.source}: no workload certificate in {TEST_NAMESPACE} to check")
    wanted = f"spiffe://{domain}/ns/{TEST_NAMESPACE}/sa/{CLIENT}"
    seen = reliably(
        pair.id,
        calls_from(source, service_url(only_in(pair.destination))),
        window=suite_options.steady_calls,
        deadline=mesh.convergence_deadline,
        wanted=Wanted(cluster=pair.destination, caller=wanted),
    )
    if not seen.held:
        problems.append(
            f"the callee must see the caller {wanted}: {seen.message()}" + explain(seen.results, mesh, pair.destination)
        )
    require(not problems, "; ".join(problems))


@pytest.fixture
def stranger(mesh: Mesh, pair: ClusterPair) -> Iterator[Cluster]:
    """A second client in the source cluster with its own service account."""
    cluster = mesh[pair.source]
    cluster.apply(manifests.service_account(STRANGER))
    cluster.apply(manifests.idle_client(STRANGER, cluster.name, image=mesh.spec.workload_image))
    try:
        ready = cluster.wait_ready(STRANGER, TEST_NAMESPACE, timeout=mesh.convergence_deadline * 4)
        require(ready, f"{pair.source}: the second client did not get ready")
        yield cluster
    finally:
        mesh[mesh.spec.config_cluster(pair.destination)].delete(
            "AuthorizationPolicy", "allow-client-only", TEST_NAMESPACE
        )
        cluster.delete("Deployment", STRANGER, TEST_NAMESPACE)
        cluster.delete("ServiceAccount", STRANGER, TEST_NAMESPACE)


@case(
    "CrossClusterAuthorization",
    "An AuthorizationPolicy allowing only the client's principal admits it from another cluster and denies a second account.",
    {Feature.AUTHORIZATION},
)
def test_cross_cluster_authorization(
    mesh: Mesh,
    pair: ClusterPair,
    stranger: Cluster,
    suite_options: SuiteOptions,
    observed: Callable[[str], None],
) -> None:
    target = only_in(pair.destination)
    domain = trust_domain(mesh[pair.destination]) or "cluster.local"
    principal = f"{domain}/ns/{TEST_NAMESPACE}/sa/{CLIENT}"
    url = service_url(target)
    window, deadline = suite_options.steady_calls, mesh.convergence_deadline
    as_stranger = calls_from(stranger, url, app=STRANGER)
    label = f"{pair.id} as {STRANGER}"
    answered = Wanted(cluster=pair.destination, caller=identity(mesh, pair.source, STRANGER))
    before = reliably(label, as_stranger, window=window, deadline=deadline, wanted=answered)
    require(before.held, f"without a policy the second account must be answered: {before.message()}")
    mesh[mesh.spec.config_cluster(pair.destination)].apply(
        manifests.authorization_policy("allow-client-only", target, [principal])
    )

    def rbac_denied(result: CallResult) -> bool:
        return result.status == 403 and result.symptom is Symptom.RBAC_DENIED

    def stale(result: CallResult) -> bool:  # answered as before the policy, on a connection opened before it
        return answered.fault(result) is None

    # Converged when denied 3 times in a row; then the window: denied, or a tolerated stale answer.
    first = Wanted(accept=rbac_denied, expected="RBAC denied")
    denied = converge(label, as_stranger, deadline=deadline, accept=rbac_denied, why=first.fault)
    steady = (
        hold(label, as_stranger, window, Wanted(accept=lambda r: rbac_denied(r) or stale(r)))
        if denied.converged
        else None
    )
    stale_answers = sum(map(stale, steady.results)) if steady else 0
    seen = steady.message() if steady else f"{denied.message()} (never converged)"
    require(
        steady is not None and steady.held,
        f"{seen}: expected 403 RBAC: access denied once the policy allows only {principal}",
    )
    require(
        stale_answers <= STALE_ANSWERS_AFTER_A_POLICY,
        f"{label}: {stale_answers}/{window} calls of the steady window were still answered after the policy allowing "
        f"only {principal} had denied others (at most {STALE_ANSWERS_AFTER_A_POLICY} may be: one per caller proxy "
        "worker, on a connection opened before the policy)",
    )
    if stale_answers:
        observed(f"{label}: {stale_answers}/{window} answered on connections opened before the policy (tolerated)")
    allowed = reliably(
        f"{pair.id} as {CLIENT}",
        calls_from(stranger, url),
        window=window,
        deadline=deadline,
        wanted=Wanted(cluster=pair.destination, caller=identity(mesh, pair.source)),
    )
    require(allowed.held, allowed.message() + explain(allowed.results, mesh, pair.destination))
