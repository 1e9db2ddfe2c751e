"""``python -m meshfed.bench``: how fast a mesh is on this machine (a benchmark, not a test).

For each backend asked for (``--backends embedded host``: the embedded mesh and real Istio side by side)
and each cluster count it prints the time to provision the mesh and the median and p99 latency of
same-cluster and cross-cluster calls (client -> sidecar -> [east-west gateway] -> sidecar -> echo), as
the workload program measures them. With ``--suite`` it also times ``pytest conformance/`` on the
embedded backend for both topologies.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

from meshfed.backends.base import Backend, Cluster
from meshfed.backends.embedded.mesh import EmbeddedBackend
from meshfed.backends.host.backend import HostBackend
from meshfed.manifests import TEST_NAMESPACE, only_in, service_url
from meshfed.options import DEFAULT_ISTIO_VERSION
from meshfed.pki import create_mesh_pki
from meshfed.topology import MeshSpec, Topology


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _converge(cluster: Cluster, client: str, url: str, deadline: float) -> None:
    """Until one call answers (a new mesh takes a moment to hand out endpoints): latency is measured after."""
    until = time.monotonic() + deadline
    while not cluster.call(client, TEST_NAMESPACE, url, 1)[0].ok:
        if time.monotonic() >= until:
            raise SystemExit(f"{cluster.name}: {url} did not answer within {deadline:g} s")
        time.sleep(0.5)


def measure(topology: Topology, clusters: int, calls: int, backend: Backend | None = None) -> dict[str, float]:
    spec = MeshSpec.default(topology, clusters)
    pki = create_mesh_pki(spec.cacerts_clusters, key_type="ecdsa")
    started = time.perf_counter()
    backend = backend or EmbeddedBackend()
    mesh = backend.provision(spec, {n: ca.secret_data() for n, ca in pki.cluster_cas.items()})
    provisioned = time.perf_counter() - started
    try:
        for cluster in mesh.clusters.values():
            for deployment in cluster.list("Deployment", TEST_NAMESPACE):
                cluster.wait_ready(deployment["metadata"]["name"], TEST_NAMESPACE, mesh.convergence_deadline)
        same: list[float] = []
        cross: list[float] = []
        for pair in spec.pairs():
            cluster = mesh[pair.source]
            client = cluster.pod_of(TEST_NAMESPACE, "client").name
            for target, bucket in ((pair.source, same), (pair.destination, cross)):
                _converge(cluster, client, service_url(only_in(target)), mesh.convergence_deadline)
                results = cluster.call(client, TEST_NAMESPACE, service_url(only_in(target)), calls)
                if not all(r.ok for r in results):
                    raise SystemExit(f"{pair.id}: calls to {target} failed: {results[0].described}")
                bucket += [r.latency_ms for r in results]
    finally:
        mesh.teardown()
    return {
        "provision_s": provisioned,
        "same_median_ms": statistics.median(same),
        "same_p99_ms": _percentile(same, 0.99),
        "cross_median_ms": statistics.median(cross),
        "cross_p99_ms": _percentile(cross, 0.99),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshfed.bench", description=__doc__)
    parser.add_argument("--topology", choices=[t.value for t in Topology], default="multi-primary")
    parser.add_argument("--calls", type=int, default=50, help="calls per ordered pair and target (default 50)")
    parser.add_argument("--clusters", type=int, nargs="+", help="cluster counts (default: 2 3 5 embedded, 2 host)")
    parser.add_argument(
        "--backends", nargs="+", choices=("embedded", "host"), default=["embedded"], help="default: embedded"
    )
    parser.add_argument("--suite", action="store_true", help="also time pytest conformance/ for both topologies")
    args = parser.parse_args(argv)
    print(f"{args.topology}, {args.calls} calls per pair and target")
    print(
        f"{'backend':>8}  {'clusters':>8}  {'provision':>9}  {'same median':>11}  {'same p99':>8}"
        f"  {'cross median':>12}  {'cross p99':>9}"
    )
    for name in args.backends:
        for count in args.clusters or ([2, 3, 5] if name == "embedded" else [2]):
            backend = HostBackend(DEFAULT_ISTIO_VERSION) if name == "host" else EmbeddedBackend()
            r = measure(Topology(args.topology), count, args.calls, backend)
            print(
                f"{name:>8}  {count:>8}  {r['provision_s']:>8.2f}s  {r['same_median_ms']:>9.1f}ms"
                f"  {r['same_p99_ms']:>6.1f}ms  {r['cross_median_ms']:>10.1f}ms  {r['cross_p99_ms']:>7.1f}ms",
                flush=True,
            )
    if args.suite:
        selections = {
            "every case": [],
            "core profile": [
                "--features",
                "CrossClusterCalls,MeshWideLoadBalancing,MutualTLS,SharedRootOfTrust,SpiffeIdentity,Authorization",
            ],
            "the four bad-day cases": ["--features", "ControlPlaneOutage,LocalityFailover,CanaryUpgrade,RootRotation"],
        }
        for topology in Topology:
            for title, extra in selections.items():
                with tempfile.TemporaryDirectory() as reports:
                    command = [sys.executable, "-m", "pytest", "conformance/", "-q", "--topology", topology.value]
                    started = time.perf_counter()
                    result = subprocess.run(
                        [*command, "--report-dir", reports, *extra], capture_output=True, text=True, check=False
                    )
                    elapsed = time.perf_counter() - started
                last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr.strip()
                print(f"pytest conformance/ --topology {topology.value}, {title}: {elapsed:.1f}s ({last})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
