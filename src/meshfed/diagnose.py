"""Read-only checks of a mesh that name the cause of a failure, as ``linkerd multicluster check`` does.

Every check reads the mesh through the backend contract only (objects, proxy certificates,
``istioctl remote-clusters``), so it runs against a real cluster and the embedded mesh alike. Each
result has a status (ok, warning, error), the evidence, and a hint that says what to do.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from cryptography import x509

from meshfed.backends.base import BackendError, Cluster, Forbidden, Mesh
from meshfed.manifests import (
    CONTROL_PLANE_CLUSTERS,
    EASTWEST_GATEWAY,
    ISTIO_SYSTEM,
    MULTICLUSTER_LABEL,
    NETWORK_LABEL,
    TEST_NAMESPACE,
    Obj,
    image_version,
    istio_minor,
    kubeconfig_server,
    kubeconfig_token,
    token_account,
)
from meshfed.pki import BundleSourceError, PemError, bundle_from_secret, fingerprint, load_certs, validate_bundle
from meshfed.pki.bundle import compare_roots
from meshfed.pki.verify import host_sans, uri_sans

Status = Literal["ok", "warning", "error"]


@dataclass(frozen=True)
class Check:
    check: str  # stable id, e.g. "root-mismatch"
    status: Status
    cluster: str
    evidence: str
    hint: str = ""

    def line(self) -> str:
        return f"{self.cluster}: {self.check}: {self.evidence}" + (f"; {self.hint}" if self.hint else "")


def read_cacerts(cluster: Cluster) -> Obj | None:
    """The cluster's ``cacerts`` Secret; None where there is none, or where the user may not read it (403:
    a managed CA, as far as they can tell; :func:`cacerts_forbidden` says which)."""
    try:
        return cluster.get("Secret", "cacerts", ISTIO_SYSTEM)
    except Forbidden:
        return None


def ca_clusters(mesh: Mesh) -> dict[str, Cluster]:
    """The clusters whose istiod signs workloads, so the ones a ``cacerts`` Secret belongs in: every data-plane
    cluster (a primary's istiod reads its own; a remote's is harmless), or only the external control plane's
    (none when an existing mesh's external cluster was not given)."""
    if mesh.spec.external is not None:
        return {mesh.external.name: mesh.external} if mesh.external is not None else {}
    return dict(mesh.clusters)


def istiod_clusters(mesh: Mesh) -> dict[str, Cluster]:
    """The clusters that run the mesh's istiods: the primaries, or the external control plane's cluster (none
    when an existing mesh's external cluster was not given: what it would show is then not read)."""
    if mesh.spec.external is not None:
        return {mesh.external.name: mesh.external} if mesh.external is not None else {}
    return {spec.name: mesh[spec.name] for spec in mesh.spec.primaries}


def cacerts_roots(mesh: Mesh) -> dict[str, x509.Certificate | None]:
    """Each CA cluster's plug-in root (``root-cert.pem``, or ``ca.crt``), None where there is none or the user
    may not read it."""
    roots: dict[str, x509.Certificate | None] = {}
    for name, cluster in ca_clusters(mesh).items():
        secret = read_cacerts(cluster)
        root = None
        if secret is not None:
            try:
                files = bundle_from_secret(secret)
                data = files.get("root-cert.pem") or files.get("ca.crt")
                root = load_certs(data, f"{name} cacerts root-cert.pem")[0] if data else None
            except (BundleSourceError, PemError):
                root = None
        roots[name] = root
    return roots


def cacerts_forbidden(mesh: Mesh) -> list[str]:
    """The clusters whose ``cacerts`` Secret the user may not read (403)."""
    refused = []
    for name, cluster in ca_clusters(mesh).items():
        try:
            cluster.get("Secret", "cacerts", ISTIO_SYSTEM)
        except Forbidden:
            refused.append(name)
    return refused


def root_mismatch(roots: Mapping[str, x509.Certificate | None]) -> str | None:
    """One sentence naming the clusters whose roots differ, by SHA-256 fingerprint; None when all agree."""
    present = {name: fingerprint(root) for name, root in roots.items() if root is not None}
    if len(set(present.values())) <= 1:
        return None
    listed = ", ".join(f"{name} SHA256 {fp}" for name, fp in present.items())
    return f"root-cert.pem differs: {listed}: the clusters do not share one root of trust"


def mesh_config_name(revision: str) -> str:
    """The ConfigMap a revision's istiod reads its mesh config from (``istio`` for the default one)."""
    return f"istio-{revision}" if revision and revision != "default" else "istio"


def read_mesh_config(cluster: Cluster) -> dict[str, object] | None:
    """The mesh config of the revision meshfed's workloads are injected by (``istio-<rev>``, else ``istio``);
    None where neither exists or the user may not read them."""
    for name in dict.fromkeys([mesh_config_name(cluster.revision), "istio"]):
        try:
            config = cluster.get("ConfigMap", name, ISTIO_SYSTEM)
        except Forbidden:
            continue
        if config is not None:
            loaded = yaml.safe_load(((config.get("data") or {}).get("mesh")) or "{}")
            return loaded if isinstance(loaded, dict) else {}
    return None


def mesh_config(cluster: Cluster) -> dict[str, object]:
    return read_mesh_config(cluster) or {}


def trust_domain(cluster: Cluster) -> str | None:
    """The trust domain the cluster's workloads are named in: its mesh config's (``cluster.local`` when it sets
    none); without a mesh config to read, what its proxies' certificates say; None when nothing says."""
    config = read_mesh_config(cluster)
    if config is not None:
        return str(config.get("trustDomain") or "cluster.local")
    for pod in cluster.pods(TEST_NAMESPACE):
        if pod.has_sidecar and pod.ready and not pod.terminating:
            try:
                leaf = cluster.proxy_certs(pod.name, TEST_NAMESPACE).chain[0]
            except (BackendError, IndexError):
                continue
            for uri in uri_sans(leaf):
                if uri.startswith("spiffe://"):
                    return uri[len("spiffe://") :].split("/", 1)[0]
    return None


def _labels(obj: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def _proxy_roots(mesh: Mesh) -> list[Check]:
    """Without cacerts anywhere (a managed CA): the root each cluster's first ready sidecar trusts, compared."""
    roots: dict[str, x509.Certificate] = {}
    for name, cluster in mesh.clusters.items():
        for pod in cluster.pods(TEST_NAMESPACE):
            if pod.has_sidecar and pod.ready:
                try:
                    trusted = cluster.proxy_certs(pod.name, TEST_NAMESPACE).trusted_roots
                except BackendError:
                    continue
                if trusted:
                    roots[name] = trusted[0]
                break
    if len({fingerprint(root) for root in roots.values()}) <= 1:
        return []
    listed = ", ".join(f"{name} SHA256 {fingerprint(root)}" for name, root in roots.items())
    return [
        Check(
            "proxy-root-mismatch",
            "error",
            name,
            f"the proxies trust different roots: {listed}",
            "configure the managed CA of every cluster with one root of trust (see your provider's multi-cluster guide)",
        )
        for name in roots
    ]


def check_trust(mesh: Mesh) -> list[Check]:
    results: list[Check] = []
    reports = {}
    secrets = {name: read_cacerts(cluster) for name, cluster in ca_clusters(mesh).items()}
    if mesh.backend == "existing" and not any(secrets.values()):
        forbidden = cacerts_forbidden(mesh)
        why = (
            f"the cacerts Secret is not readable by this user (403) in {', '.join(forbidden)}"
            if forbidden
            else "no cacerts Secret in any cluster"
        )
        note = (
            f"{why}: a managed or external CA (or istiod's self-signed roots); the "
            "secret-level checks do not apply, the roots the proxies trust are compared instead"
        )
        return [Check("cacerts-not-used", "warning", ", ".join(secrets) or "mesh", note), *_proxy_roots(mesh)]
    for name in secrets:
        secret = secrets[name]
        if secret is None and mesh.spec.cluster(name).role == "remote":
            continue  # a remote's workloads are signed by its primary's istiod, with the primary's cacerts
        if secret is None:
            results.append(
                Check(
                    "cacerts-missing",
                    "error",
                    name,
                    "no cacerts Secret in istio-system",
                    "create it from your plug-in bundle, then restart istiod and the workloads",
                )
            )
            continue
        report = validate_bundle(bundle_from_secret(secret), source=f"{name} cacerts")
        reports[name] = report
        for finding in report.findings:
            check = "cacerts-incomplete" if finding.code == "incomplete-bundle" else f"cacerts-{finding.code}"
            results.append(Check(check, finding.severity, name, f"{finding.file}: {finding.problem}", finding.fix))
    for name, finding in compare_roots(reports):
        results.append(Check(finding.code, finding.severity, name, finding.problem, finding.fix))
    roots = {name: report.signing_root for name, report in reports.items()}
    for name, cluster in mesh.clusters.items():
        # The CA that signs this cluster's workloads: its own istiod's, or the external control plane's.
        signer = mesh.spec.control_plane(name) if mesh.spec.external is not None else name
        root = roots.get(signer)
        config_map = cluster.get("ConfigMap", "istio-ca-root-cert", TEST_NAMESPACE)
        if root is None or config_map is None:
            continue
        held = load_certs(config_map["data"]["root-cert.pem"].encode(), "istio-ca-root-cert")
        if root not in held:
            served = ", ".join(fingerprint(c) for c in held)
            results.append(
                Check(
                    "istiod-not-on-cacerts",
                    "error",
                    name,
                    f"istio-ca-root-cert holds {served}, not the cacerts root {fingerprint(root)}: istiod signs with another CA (it started before cacerts existed, or never restarted)",
                    "restart istiod (kubectl rollout restart deployment/istiod -n istio-system), then every workload",
                )
            )
            continue
        ca_cert = reports[signer].signing_cert
        for pod in cluster.pods(TEST_NAMESPACE):
            if not pod.has_sidecar or not pod.ready:
                continue
            try:
                chain = cluster.proxy_certs(pod.name, TEST_NAMESPACE).chain
            except BackendError:
                continue
            if (
                ca_cert is not None
                and (len(chain) < 2 or chain[1] != ca_cert)
                and (mesh.spec.cluster(name).role == "primary" or mesh.spec.external is not None)
            ):
                results.append(
                    Check(
                        "stale-workload-certificate",
                        "error",
                        name,
                        f"{pod.name} holds a certificate not issued by the current cacerts intermediate",
                        "restart the workload (kubectl rollout restart) so it gets a certificate from the current CA",
                    )
                )
    return results


def _kubeconfig_servers(secret: Obj) -> dict[str, str]:
    """A remote secret's clusters and the API server each kubeconfig names."""
    return {name: kubeconfig_server(data) or "unreadable" for name, data in bundle_from_secret(secret).items()}


def _is_loopback(server: str) -> bool:
    """The loopback addresses a local cluster's kubeconfig names (kind, minikube, k3d). Other 127/8
    addresses are left alone: the embedded mesh gives each cluster's API server one of its own."""
    return (urllib.parse.urlsplit(server).hostname or "").lower() in ("127.0.0.1", "localhost", "::1")


def _remote_secret_missing(primary: str, other: str, source: str) -> Check:
    return Check(
        "remote-secret-missing",
        "error",
        primary,
        f"no remote secret for {other}{source}: istiod here never sees {other}'s endpoints",
        f"istioctl create-remote-secret --context=<{other}> --name={other} | kubectl apply --context=<{primary}> -f -",
    )


def _remote_secrets_seen_by_istiod(cluster: Cluster, primary: str, wanted: list[str]) -> list[Check]:
    """The remote secrets of a primary whose Secrets this user may not read, judged from what its istiod
    loaded (``istioctl remote-clusters``); a warning when istiod cannot be asked either."""
    try:
        statuses = {status.name: status for status in cluster.remote_clusters()}
    except BackendError as error:
        return [
            Check(
                "remote-secrets-unreadable",
                "warning",
                primary,
                "this user may not read Secrets in the control plane's namespace (403) and istioctl remote-clusters "
                f"failed, so whether istiod has a remote secret for {', '.join(wanted)} is unknown: {error}",
                "grant get and list on secrets there, or run `istioctl remote-clusters` as a user who may",
            )
        ]
    source = " among the clusters istiod loaded (istioctl remote-clusters; the Secrets are not readable by this user)"
    results = [_remote_secret_missing(primary, other, source) for other in wanted if other not in statuses]
    results += [
        Check(
            "remote-secret-unreachable",
            "error",
            primary,
            f"remote cluster {other} is {statuses[other].status} (its server is in {statuses[other].secret}, "
            "not readable by this user)",
            "check that istiod can reach that API server and that the secret's credentials are valid",
        )
        for other in wanted
        if other in statuses and statuses[other].status != "synced"
    ]
    return results


def _remote_secret_holders(mesh: Mesh) -> list[tuple[str, Cluster, list[str]]]:
    """Each istiod's cluster and the clusters it must have a remote secret for: every other cluster (a
    primary), or every remote but the config cluster, which the external istiod reads through its
    ``istio-kubeconfig`` (LOCAL_CLUSTER_SECRET_WATCHER: the secrets live in the external cluster)."""
    if mesh.spec.external is not None:
        config = mesh.spec.config_cluster(mesh.spec.names[0])
        return [
            (name, plane, [c for c in mesh.spec.names if c != config]) for name, plane in istiod_clusters(mesh).items()
        ]
    return [
        (spec.name, mesh[spec.name], [c for c in mesh.spec.names if c != spec.name]) for spec in mesh.spec.primaries
    ]


def check_remote_secrets(mesh: Mesh) -> list[Check]:
    results = []
    for holder, cluster, wanted in _remote_secret_holders(mesh):
        spec = mesh.spec.cluster(holder)
        try:
            secrets = cluster.list("Secret", ISTIO_SYSTEM, {MULTICLUSTER_LABEL: "true"})
        except Forbidden:
            # A managed offering's user may read no Secret: istiod says which remote secrets it loaded.
            results += _remote_secrets_seen_by_istiod(cluster, spec.name, wanted)
            continue
        present = {
            s["metadata"].get("annotations", {}).get("networking.istio.io/cluster")
            or s["metadata"]["name"].removeprefix("istio-remote-secret-")
            for s in secrets
        }
        results += [_remote_secret_missing(spec.name, other, "") for other in wanted if other not in present]
        # A loopback server is wrong whatever istiod shows: istiod keeps serving a cluster its secret's
        # previous kubeconfig reached until the new one syncs, so calls can still work until its restart.
        loopback = {}
        for secret in secrets:
            for remote, server in _kubeconfig_servers(secret).items():
                if _is_loopback(server):
                    loopback[remote] = server
                    results.append(
                        Check(
                            "remote-secret-loopback",
                            "error",
                            spec.name,
                            f"the remote secret {secret['metadata']['name']} points istiod at {server} for {remote}: that is istiod's own pod, so {remote} never syncs (istiod keeps a connection it already had only until it restarts)",
                            f"recreate it with an address istiod can reach: istioctl create-remote-secret --context=<{remote}> --name={remote} --server=https://<{remote}'s API server address>:6443",
                        )
                    )
        try:
            statuses = cluster.remote_clusters()
        except BackendError:
            continue
        for status in statuses:
            if status.name == spec.name or status.status == "synced" or status.name in loopback:
                continue
            found = cluster.get("Secret", status.secret.rsplit("/", 1)[-1], ISTIO_SYSTEM) or {}
            server = _kubeconfig_servers(found).get(status.name, "unknown")
            results.append(
                Check(
                    "remote-secret-unreachable",
                    "error",
                    spec.name,
                    f"remote cluster {status.name} is {status.status} (server {server})",
                    "check that istiod can reach that API server and that the secret's credentials are valid",
                )
            )
    return results


def ingress_addresses(service: Obj | None) -> set[str]:
    ingress = (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return {str(i.get("ip") or i.get("hostname")) for i in ingress if i.get("ip") or i.get("hostname")}


def _exposes_istiod(cluster: Cluster) -> bool:
    """A Gateway passes 15012 through the east-west gateway and a VirtualService routes it to an istiod
    (``samples/multicluster/expose-istiod.yaml``)."""
    gateway = any(
        (g["spec"].get("selector") or {}).get("istio") == "eastwestgateway"
        and any(
            s.get("port", {}).get("number") == 15012 and (s.get("tls") or {}).get("mode") == "PASSTHROUGH"
            for s in g["spec"].get("servers") or []
        )
        for g in cluster.list("Gateway", ISTIO_SYSTEM)
    )
    route = any(
        int(m.get("port", 0)) == 15012 and str(d.get("destination", {}).get("host", "")).startswith("istiod")
        for v in cluster.list("VirtualService", ISTIO_SYSTEM)
        for t in v["spec"].get("tls") or []
        for m in t.get("match") or []
        for d in t.get("route") or []
    )
    return gateway and route


def _external_istiod(cluster: Cluster) -> bool:
    """Whether an istiod here runs with ``EXTERNAL_ISTIOD`` (``values.global.externalIstiod``)."""
    for name in cluster.istiods():
        deployment = cluster.get("Deployment", name, ISTIO_SYSTEM) or {}
        for container in (deployment.get("spec") or {}).get("template", {}).get("spec", {}).get("containers") or []:
            env = {e.get("name"): str(e.get("value", "")) for e in container.get("env") or []}
            if env.get("EXTERNAL_ISTIOD", "").lower() == "true":
                return True
    return False


def check_remote_control_plane(mesh: Mesh) -> list[Check]:
    """What a remote needs of its primary: istiod exposed through the primary's east-west gateway, the
    remote's istiod EndpointSlice (``remotePilotAddress``) naming that gateway, and an external istiod that
    the remote's ``controlPlaneClusters`` annotation names (``checkShouldLead``: only then does it write
    ``istio-ca-root-cert`` into the remote's namespaces and patch its injection webhook)."""
    results: list[Check] = []
    if mesh.spec.external is not None:
        return _check_external_control_plane(mesh)
    remotes = [c.name for c in mesh.spec.clusters if c.role == "remote"]
    for primary in sorted({mesh.spec.config_cluster(name) for name in remotes}):
        served = [name for name in remotes if mesh.spec.config_cluster(name) == primary]
        if not _exposes_istiod(mesh[primary]):
            results.append(
                Check(
                    "istiod-not-exposed",
                    "error",
                    primary,
                    f"no Gateway and VirtualService pass 15012 through the east-west gateway to istiod: the proxies of {', '.join(served)} cannot reach it (they keep their last configuration, get no new certificate, and no pod there can be injected)",
                    "kubectl apply -n istio-system -f samples/multicluster/expose-istiod.yaml",
                )
            )
        if not _external_istiod(mesh[primary]):
            results.append(
                Check(
                    "istiod-not-external",
                    "error",
                    primary,
                    f"istiod runs without EXTERNAL_ISTIOD, so it leads none of {', '.join(served)}: their namespaces get no istio-ca-root-cert",
                    "install the primary with values.global.externalIstiod=true",
                )
            )
        gateway = ingress_addresses(mesh[primary].get("Service", EASTWEST_GATEWAY, ISTIO_SYSTEM))
        for name in served:
            remote = mesh[name]
            namespace = remote.get("Namespace", ISTIO_SYSTEM) or {}
            named = ((namespace.get("metadata") or {}).get("annotations") or {}).get(CONTROL_PLANE_CLUSTERS, "")
            if not any(c in ("*", primary) for c in named.split(",") if c):
                results.append(
                    Check(
                        "control-plane-clusters-missing",
                        "error",
                        name,
                        f"istio-system's {CONTROL_PLANE_CLUSTERS} annotation is {named or 'missing'}, not naming {primary}: istiod of {primary} does not lead this cluster, so its new namespaces get no istio-ca-root-cert and no pod with a sidecar starts there",
                        f"kubectl annotate --overwrite namespace istio-system {CONTROL_PLANE_CLUSTERS}={primary}, then restart istiod in {primary} (it decides as it adds the cluster)",
                    )
                )
            service = remote.get("Service", "istiod", ISTIO_SYSTEM) or {}
            if not gateway or (service.get("spec") or {}).get("type") == "ExternalName":
                continue  # a DNS name, or no gateway address to compare with (its own finding)
            slices = remote.list("EndpointSlice", ISTIO_SYSTEM, {"kubernetes.io/service-name": "istiod"})
            addresses = {a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []}
            if addresses and not addresses & gateway:
                results.append(
                    Check(
                        "remote-pilot-address-wrong",
                        "error",
                        name,
                        f"the istiod Service here sends proxies to {', '.join(sorted(addresses))}, not to {primary}'s east-west gateway ({', '.join(sorted(gateway))}): they cannot reach istiod",
                        f"reinstall the remote profile with values.global.remotePilotAddress={sorted(gateway)[0]}",
                    )
                )
    return results


def _routes_to_external_istiod(cluster: Cluster) -> bool:
    """The external cluster's ingress gateway passes 15012 to the external istiod: a Gateway selecting it and
    a VirtualService routing that port to ``istiod`` (the guide's ``external-istiod-gw.yaml``)."""
    gateway = any(
        (g["spec"].get("selector") or {}).get("istio") == "ingressgateway"
        and any(srv.get("port", {}).get("number") == 15012 for srv in g["spec"].get("servers") or [])
        for g in cluster.list("Gateway", ISTIO_SYSTEM)
    )
    route = any(
        int(m.get("port", 0)) == 15012 and str(d.get("destination", {}).get("host", "")).startswith("istiod")
        for v in cluster.list("VirtualService", ISTIO_SYSTEM)
        for kind in ("tls", "http", "tcp")
        for t in v["spec"].get(kind) or []
        for m in t.get("match") or []
        for d in t.get("route") or []
    )
    return gateway and route


def _istiod_env(cluster: Cluster) -> dict[str, str]:
    """The environment of the first istiod Deployment here (its discovery container)."""
    for name in cluster.istiods():
        deployment = cluster.get("Deployment", name, ISTIO_SYSTEM) or {}
        for container in (deployment.get("spec") or {}).get("template", {}).get("spec", {}).get("containers") or []:
            return {e.get("name"): str(e.get("value", "")) for e in container.get("env") or [] if e.get("name")}
    return {}


def _istiod_dialled_at(cluster: Cluster) -> set[str]:
    """Where a remote reaches istiod (``remotePilotAddress``): its selector-less ``istiod[-<rev>]`` Service's
    EndpointSlice addresses (an IP), or the name of its ExternalName Service (a DNS name)."""
    name = f"istiod-{cluster.revision}" if cluster.revision and cluster.revision != "default" else "istiod"
    service = cluster.get("Service", name, ISTIO_SYSTEM) or {}
    if (service.get("spec") or {}).get("type") == "ExternalName":
        return {str(service["spec"].get("externalName"))}
    slices = cluster.list("EndpointSlice", ISTIO_SYSTEM, {"kubernetes.io/service-name": name})
    return {a for s in slices for e in s.get("endpoints") or [] for a in e.get("addresses") or []}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _discovery_address_dialled(mesh: Mesh, external: Cluster) -> list[Check]:
    """The external istiod names its serving certificate after the host of its mesh config's discovery address
    (``getDNSNames``, besides its Service's names) and injects that address into new pods: it must be the address
    the data-plane clusters dial (their ``remotePilotAddress``), else no proxy verifies istiod."""
    defaults = mesh_config(external).get("defaultConfig")
    discovery = str((defaults if isinstance(defaults, dict) else {}).get("discoveryAddress") or "")
    host = (discovery.rpartition(":")[0] or discovery).strip("[]")
    if not host or host.endswith((".svc", ".svc.cluster.local")):
        return []  # istiod's own Service name: always in its certificate
    dialled = {name: _istiod_dialled_at(mesh[name]) for name in mesh.spec.names}
    # Only like is compared with like: a DNS name the proxies dial may stand for the IP the remote profile was
    # given (or the other way round), which nothing here can resolve.
    wrong = {
        name: addresses
        for name, addresses in dialled.items()
        if addresses and host not in addresses and all(_is_ip(a) == _is_ip(host) for a in addresses)
    }
    if not wrong:
        return []
    addresses = sorted(set().union(*wrong.values()))
    return [
        Check(
            "discovery-address-wrong",
            "error",
            external.name,
            f"the external istiod's mesh config names {discovery} as its discovery address, so its serving certificate "
            f"is valid for {host} (and its Service's names) and new pods are told to dial it, but "
            f"{', '.join(sorted(wrong))} reach istiod at {', '.join(addresses)} (remotePilotAddress): every proxy that "
            "connects fails to verify istiod (x509: certificate is valid for ..., not ...) and no new pod gets ready",
            f"set the external istiod's meshConfig.defaultConfig.discoveryAddress (and values.global.caAddress) to "
            f"{addresses[0]}:15012, the address the data-plane clusters dial, and restart it",
        )
    ]


def _injection_hosts(cluster: Cluster) -> set[str]:
    """The host names this cluster's API server dials for its sidecar injection webhooks: a URL's host, or
    ``<service>.<namespace>.svc`` (the name it checks the certificate against)."""
    hosts = set()
    for configuration in cluster.list("MutatingWebhookConfiguration"):
        for webhook in configuration.get("webhooks") or []:
            if not str(webhook.get("name", "")).endswith("sidecar-injector.istio.io"):
                continue
            client = webhook.get("clientConfig") or {}
            if client.get("url"):
                hosts.add(str(urllib.parse.urlsplit(str(client["url"])).hostname or ""))
            elif client.get("service"):
                hosts.add(f"{client['service'].get('name')}.{client['service'].get('namespace')}.svc")
    return hosts - {""}


def _certificate_covers(cert: x509.Certificate, host: str) -> bool:
    """Whether ``cert`` is valid for ``host`` as Go's crypto/tls and Envoy judge it: an IP address against its
    IP SANs, a DNS name against its DNS SANs (a ``*.`` SAN stands for one leftmost label)."""
    names, ips = host_sans(cert)
    if _is_ip(host):
        return ipaddress.ip_address(host) in ips
    for name in names:
        name = name.lower().rstrip(".")
        if name == host.lower() or (name.startswith("*.") and host.lower().partition(".")[2] == name[2:]):
            return True
    return False


def _gateway_certificate_names(mesh: Mesh, external: Cluster) -> list[Check]:
    """Where the external cluster's ingress gateway terminates TLS on 15012/15017 (the guide's hostname variant),
    its ``credentialName`` certificate is what every proxy and every data-plane API server verifies: it must be
    valid for what they dial, the host of the discovery address and the injection webhooks' hosts."""
    credentials = {
        str((srv.get("tls") or {}).get("credentialName") or "")
        for g in external.list("Gateway", ISTIO_SYSTEM)
        if (g["spec"].get("selector") or {}).get("istio") == "ingressgateway"
        for srv in g["spec"].get("servers") or []
        if srv.get("port", {}).get("number") in (15012, 15017)
        and str((srv.get("tls") or {}).get("mode", "")).upper() in ("SIMPLE", "MUTUAL")
    }
    if not credentials:
        return []  # passed through: the proxies verify istiod's own certificate (discovery-address-wrong)
    defaults = mesh_config(external).get("defaultConfig")
    discovery = str((defaults if isinstance(defaults, dict) else {}).get("discoveryAddress") or "")
    dialled = {(discovery.rpartition(":")[0] or discovery).strip("[]")} - {""}
    for name in mesh.spec.names:
        dialled |= _injection_hosts(mesh[name])
    home = external.istio_system_itself()  # a gateway's credentials are Secrets in its own namespace
    results = []
    for credential in sorted(credentials):
        secret = home.get("Secret", credential, ISTIO_SYSTEM) if credential else None
        files = bundle_from_secret(secret) if secret else {}
        pem = files.get("tls.crt") or files.get("cert")  # the two layouts Istio reads a credential in
        if not pem:
            results.append(
                Check(
                    "gateway-credential-missing",
                    "error",
                    external.name,
                    f"the ingress gateway terminates TLS on 15012/15017 with credentialName {credential!r}, but "
                    "istio-system holds no such Secret with a certificate: it cannot serve those ports, so no proxy "
                    "reaches the external istiod and no pod can be injected",
                    "create the Secret (kubernetes.io/tls) in the ingress gateway's namespace, or pass 15012/15017 "
                    "through (tls mode PASSTHROUGH) as the guide's IP-address variant does",
                )
            )
            continue
        cert = load_certs(pem, f"Secret {credential} tls.crt")[0]
        missing = sorted(host for host in dialled if not _certificate_covers(cert, host))
        if missing:
            names, ips = host_sans(cert)
            valid = [*names, *map(str, ips)]
            results.append(
                Check(
                    "gateway-certificate-wrong-name",
                    "error",
                    external.name,
                    f"the ingress gateway terminates TLS on 15012/15017 with the certificate of {credential}, valid "
                    f"for {', '.join(valid) or 'no name'}, but the data-plane clusters dial {', '.join(missing)}: "
                    "every proxy that connects refuses it (x509: certificate is valid for ..., not ...), and the API "
                    "servers' injection calls fail, so no new pod is created",
                    f"issue the gateway's certificate for {', '.join(sorted(dialled))}, or pass 15012/15017 through "
                    "(tls mode PASSTHROUGH) to istiod, whose own certificate names them",
                )
            )
    return results


def _config_secret_account(mesh: Mesh, external: Cluster, config: str) -> list[Check]:
    """The external istiod reads the config cluster as the account of its ``istio-kubeconfig``: only the ``istiod``
    account has istiod's ClusterRole there, and only the remote profile with ``global.configCluster`` makes it.
    ``istioctl create-remote-secret --type=config`` without ``--service-account`` uses the reader account, which
    cannot list what istiod watches (ingresses, leases): the external istiod never gets ready (seen on host)."""
    secret = external.get("Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    account = token_account(kubeconfig_token(bundle_from_secret(secret).get("config", b""))) if secret else None
    if account is None or account[1] == "istiod" or account[1].startswith("istiod-"):  # istiod-<rev>: a revision's
        return []
    user = f"system:serviceaccount:{account[0]}:{account[1]}"
    has_istiod = mesh[config].get("ServiceAccount", "istiod", ISTIO_SYSTEM) is not None
    why = (
        "its istiod account exists, so make the secret for it"
        if has_istiod
        else f"{config} has no istiod ServiceAccount: its remote profile was installed without global.configCluster"
    )
    return [
        Check(
            "config-secret-wrong-account",
            "error",
            external.name,
            f"istio-kubeconfig reads the config cluster {config} as {user}, not as istiod: that account has no istiod "
            "ClusterRole there (it cannot list ingresses or take leases), so the external istiod never gets ready "
            f"and every proxy is cut off from it; {why}",
            f"install {config}'s remote profile with values.global.configCluster=true, then istioctl "
            f"create-remote-secret --context=<{config}> --type=config --namespace=<istiod's namespace> "
            f"--service-account=istiod --create-service-account=false | kubectl apply --context=<{external.name}> -f -",
        )
    ]


def _check_external_control_plane(mesh: Mesh) -> list[Check]:
    """What an external control plane needs ("Install Istio with an External Control Plane"): its ingress gateway
    routing 15012 and 15017 to it, the ``istio-kubeconfig`` Secret it reads the config cluster with, istiod run
    with ``EXTERNAL_ISTIOD`` and the config cluster's name as ``CLUSTER_ID``; each remote's namespace naming the
    config cluster in ``controlPlaneClusters`` (only then does the external istiod lead it). What the external
    cluster holds is read only when it was given."""
    results: list[Check] = []
    config = mesh.spec.config_cluster(mesh.spec.names[0])
    external = mesh.external
    if external is not None:
        if not _routes_to_external_istiod(external):
            results.append(
                Check(
                    "external-istiod-not-exposed",
                    "error",
                    external.name,
                    "no Gateway and VirtualService pass 15012 through the ingress gateway to the external istiod: no "
                    "proxy of the mesh reaches it (they keep their last configuration, get no new certificate, and no "
                    "pod can be injected)",
                    "apply the guide's external-istiod-gw.yaml (Gateway external-istiod-gw, VirtualService "
                    "external-istiod-vs) in the external istiod's namespace",
                )
            )
        if external.get("Secret", "istio-kubeconfig", ISTIO_SYSTEM) is None:
            results.append(
                Check(
                    "config-secret-missing",
                    "error",
                    external.name,
                    f"no istio-kubeconfig Secret: the external istiod has no credentials for the config cluster {config}, "
                    "so it cannot start (it reads the mesh's configuration and its services there)",
                    f"istioctl create-remote-secret --context=<{config}> --type=config --namespace=<istiod's namespace> "
                    f"--service-account=istiod --create-service-account=false | kubectl apply --context=<{external.name}> -f -",
                )
            )
        results += _config_secret_account(mesh, external, config)
        results += _discovery_address_dialled(mesh, external)
        results += _gateway_certificate_names(mesh, external)
        env = _istiod_env(external)
        if env and env.get("EXTERNAL_ISTIOD", "").lower() != "true":
            results.append(
                Check(
                    "istiod-not-external",
                    "error",
                    external.name,
                    f"the external istiod runs without EXTERNAL_ISTIOD, so it leads none of {', '.join(mesh.spec.names)}",
                    "install it with the guide's env: EXTERNAL_ISTIOD=true",
                )
            )
        if env and env.get("CLUSTER_ID") not in (None, config):
            results.append(
                Check(
                    "istiod-cluster-id-wrong",
                    "error",
                    external.name,
                    f"the external istiod's CLUSTER_ID is {env.get('CLUSTER_ID')!r}, not the config cluster {config!r}",
                    f"install it with CLUSTER_ID={config} (and values.global.multiCluster.clusterName={config})",
                )
            )
    for spec in mesh.spec.clusters:
        if spec.name == config:
            continue
        namespace = mesh[spec.name].get("Namespace", ISTIO_SYSTEM) or {}
        named = ((namespace.get("metadata") or {}).get("annotations") or {}).get(CONTROL_PLANE_CLUSTERS, "")
        if not any(c in ("*", config) for c in named.split(",") if c):
            results.append(
                Check(
                    "control-plane-clusters-missing",
                    "error",
                    spec.name,
                    f"the control plane's namespace has {CONTROL_PLANE_CLUSTERS} {named or 'missing'}, not naming the "
                    f"config cluster {config}: the external istiod does not lead this cluster, so its new namespaces get "
                    "no istio-ca-root-cert and no pod with a sidecar starts there",
                    f"kubectl annotate --overwrite namespace <istiod's namespace> {CONTROL_PLANE_CLUSTERS}={config}, then "
                    "restart the external istiod (it decides as it adds the cluster)",
                )
            )
    return results


def gateway_down(mesh: Mesh, cluster: str) -> str | None:
    """Why ``cluster``'s east-west gateway cannot take a connection, or None when it can."""
    service = mesh[cluster].get("Service", EASTWEST_GATEWAY, ISTIO_SYSTEM)
    if service is None:
        return f"{cluster} has no {EASTWEST_GATEWAY} Service"
    if not ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress"):
        return f"{cluster}'s east-west gateway has no address"
    pods = mesh[cluster].pods(ISTIO_SYSTEM, {"app": EASTWEST_GATEWAY})
    if not any(p.ready and not p.terminating for p in pods):
        return f"{cluster}'s east-west gateway has no ready pod"
    return None


def check_gateways(mesh: Mesh) -> list[Check]:
    results = []
    for spec in mesh.spec.clusters:
        cluster = mesh[spec.name]
        namespace_network = _labels(cluster.get("Namespace", ISTIO_SYSTEM)).get(NETWORK_LABEL)
        if not namespace_network:
            # istiod takes an endpoint's network from its pod's label, and only then from istio-system's
            # (Controller.Network in pilot/pkg/serviceregistry/kube/controller); the injector labels each
            # pod with values.global.network. Without both, the network is empty: "same as any".
            unlabelled = sorted(
                p.name for p in cluster.pods(TEST_NAMESPACE) if p.has_sidecar and not p.labels.get(NETWORK_LABEL)
            )
            results.append(
                Check(
                    "network-label-missing",
                    "error" if unlabelled else "warning",
                    spec.name,
                    f"istio-system has no {NETWORK_LABEL} label and pods {', '.join(unlabelled)} carry none: istiod puts them on no network and hands their pod addresses to callers on other networks"
                    if unlabelled
                    else f"istio-system has no {NETWORK_LABEL} label: its pods still carry their own (the injector writes values.global.network), but a pod without one would be handed to other networks by its pod address",
                    f"kubectl label namespace istio-system {NETWORK_LABEL}={spec.network}",
                )
            )
        elif namespace_network != spec.network:
            results.append(
                Check(
                    "network-label-wrong",
                    "error",
                    spec.name,
                    f"istio-system is labelled {namespace_network!r}, the mesh expects {spec.network!r}",
                    f"kubectl label --overwrite namespace istio-system {NETWORK_LABEL}={spec.network}",
                )
            )
        service = cluster.get("Service", EASTWEST_GATEWAY, ISTIO_SYSTEM)
        if service is None:
            results.append(
                Check(
                    "eastwest-gateway-missing",
                    "error",
                    spec.name,
                    "no istio-eastwestgateway Service",
                    "install it: samples/multicluster/gen-eastwest-gateway.sh --network <net> | istioctl install -y -f -",
                )
            )
        else:
            ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            if not ingress:
                results.append(
                    Check(
                        "eastwest-gateway-no-address",
                        "error",
                        spec.name,
                        "the east-west gateway has no external address",
                        "give LoadBalancer Services an address (MetalLB or cloud-provider-kind on kind)",
                    )
                )
            elif down := gateway_down(mesh, spec.name):
                results.append(
                    Check(
                        "eastwest-gateway-not-ready",
                        "error",
                        spec.name,
                        f"{down}: calls into this cluster from other networks fail (Envoy: connection failure)",
                        "kubectl -n istio-system get deployment,pods -l app=istio-eastwestgateway; describe the pods",
                    )
                )
            gateway_network = _labels(service).get(NETWORK_LABEL)
            if gateway_network != spec.network:
                results.append(
                    Check(
                        "eastwest-gateway-network-label",
                        "error",
                        spec.name,
                        f"the gateway Service's {NETWORK_LABEL} is {gateway_network!r}, not {spec.network!r}",
                        "regenerate the gateway with --network <this cluster's network>",
                    )
                )
    for name in {mesh.spec.config_cluster(n) for n in mesh.spec.names}:
        gateways = mesh[name].list("Gateway")
        passthrough = [
            g
            for g in gateways
            if (g["spec"].get("selector") or {}).get("istio") == "eastwestgateway"
            and any(
                (s.get("tls") or {}).get("mode") == "AUTO_PASSTHROUGH" and s.get("port", {}).get("number") == 15443
                for s in g["spec"].get("servers") or []
            )
        ]
        if not passthrough:
            results.append(
                Check(
                    "cross-network-gateway-missing",
                    "error",
                    name,
                    "no Gateway with AUTO_PASSTHROUGH on 15443 for the east-west gateway: calls into this cluster from other networks are reset",
                    "kubectl apply -n istio-system -f samples/multicluster/expose-services.yaml",
                )
            )
    return results


def _remote_naming_trust_domain(cluster: Cluster) -> tuple[str, bool] | None:
    """The trust domain istiod names a remote's workloads in: its own mesh config's (only ``istio-<rev>`` for a
    revision, as ``getMeshConfigMapName``), ``cluster.local`` when it has none or it names none (the defaults);
    and whether it has one. None when this user may not read it."""
    try:
        config = cluster.get("ConfigMap", mesh_config_name(cluster.revision), ISTIO_SYSTEM)
    except Forbidden:
        return None
    if config is None:
        return "cluster.local", False
    loaded = yaml.safe_load(((config.get("data") or {}).get("mesh")) or "{}")
    return str((loaded if isinstance(loaded, dict) else {}).get("trustDomain") or "cluster.local"), True


def _signing_trust_domain(mesh: Mesh, name: str) -> str | None:
    """The trust domain the istiod serving ``name`` signs in: its own mesh config's (an external istiod's when its
    cluster was given, else the config cluster's, which it shares)."""
    plane = mesh.spec.control_plane(name)
    external = mesh.external
    where = external if external is not None and plane == external.name else mesh[mesh.spec.config_cluster(name)]
    config = read_mesh_config(where)
    return None if config is None else str(config.get("trustDomain") or "cluster.local")


def _unnamed_remote_trust_domains(mesh: Mesh) -> list[Check]:
    """Istio 1.29 on names a remote cluster's workloads in the trust domain of that cluster's own mesh config
    (istio/istio#58455), and the remote profile writes none: with no ``istio`` ConfigMap there, its workloads are
    named in the default ``cluster.local``. Where istiod signs in another trust domain, callers expect a SPIFFE
    ID the server's certificate does not carry, and calls into that cluster fail TLS verification (seen on host
    with an external control plane in trust domain ext.example)."""
    release = istio_minor(mesh.istio_version)
    if release is not None and release < (1, 29):
        return []
    results = []
    for spec in mesh.spec.clusters:
        # (The config cluster is istiod's own: named in istiod's trust domain, with or without a mesh config.)
        naming = _remote_naming_trust_domain(mesh[spec.name]) if spec.role == "remote" else None
        signing = _signing_trust_domain(mesh, spec.name) if naming else None
        if naming is None or signing is None or naming[0] == signing:
            continue
        domain, has_config = naming
        why = f"its mesh config names trust domain {domain}" if has_config else "no mesh config here"
        results.append(
            Check(
                "trust-domain-mismatch",
                "error",
                spec.name,
                f"{why}, so Istio 1.29 on names this cluster's workloads in {domain} (istio/istio#58455), while "
                f"istiod signs them in {signing}: callers expect identities their certificates do not carry, and "
                "calls to services whose endpoints are all in this cluster fail TLS verification",
                f"give it a mesh config naming trustDomain {signing}: the ConfigMap istio in the control plane's "
                f"namespace (install its remote profile with values.pilot.configMap=true and "
                f"meshConfig.trustDomain={signing})",
            )
        )
    return results


def check_mesh_config(mesh: Mesh) -> list[Check]:
    results = _unnamed_remote_trust_domains(mesh)
    configs = {name: read_mesh_config(mesh[name]) for name in mesh.spec.names}
    domains = {
        name: str(config.get("trustDomain") or "cluster.local")
        for name, config in configs.items()
        if config is not None
    }
    if len(set(domains.values())) > 1:
        listed = ", ".join(f"{n}={d}" for n, d in domains.items())
        results.append(
            Check(
                "trust-domain-mismatch",
                "error",
                "mesh",
                f"trust domains differ ({listed}): identities do not match and principal-based policies deny",
                "use one trustDomain everywhere, or list the others in trustDomainAliases",
            )
        )
    return results


def check_services(mesh: Mesh) -> list[Check]:
    """A Service must exist in the caller's cluster for its name to resolve (istio/istio#17087)."""
    results = []
    names = {
        name: {s["metadata"]["name"] for s in mesh[name].list("Service", TEST_NAMESPACE)} for name in mesh.spec.names
    }
    everywhere = set().union(*names.values())
    for name, present in names.items():
        for missing in sorted(everywhere - present):
            results.append(
                Check(
                    "service-missing",
                    "error",
                    name,
                    f"Service {missing}.{TEST_NAMESPACE} does not exist here, so its name does not resolve for callers in {name}",
                    f"create the Service in {name} too (no pods needed), or turn on DNS proxying",
                )
            )
    return results


def check_peer_authentication(mesh: Mesh) -> list[Check]:
    results = []
    for name in sorted({mesh.spec.config_cluster(n) for n in mesh.spec.names}):
        for policy in mesh[name].list("PeerAuthentication"):
            if ((policy["spec"].get("mtls") or {}).get("mode") or "").upper() == "STRICT":
                where = policy["metadata"]["namespace"]
                results.append(
                    Check(
                        "peer-authentication-strict",
                        "warning",
                        name,
                        f"PeerAuthentication {policy['metadata']['name']} in {where} is STRICT: callers without a sidecar are refused",
                        "give the callers a sidecar, or use PERMISSIVE while they migrate",
                    )
                )
    return results


def check_version_skew(mesh: Mesh) -> list[Check]:
    """Istio's skew policy: the control plane may be one minor version ahead of the data plane; the data
    plane is never ahead. Each proxy's version (its istio-proxy image, sidecars and gateways) against the
    istiod of its revision in the cluster it gets its configuration from. The embedded mesh's proxies have
    no image, so there it finds nothing."""
    results = []
    for spec in mesh.spec.clusters:
        cluster = mesh[spec.name]
        config = mesh[mesh.spec.config_cluster(spec.name)]
        istiods = config.istiod_versions()
        # A revision tag (istioctl tag set prod-stable --revision 1-30-3) stands for its revision; the
        # embedded mesh has no webhook configurations, hence no tags.
        try:
            webhooks = config.list("MutatingWebhookConfiguration")
        except BackendError:
            webhooks = []
        for webhook in webhooks:
            tag, revision = _labels(webhook).get("istio.io/tag"), _labels(webhook).get("istio.io/rev")
            if tag and revision in istiods:
                istiods.setdefault(tag, istiods[revision])
        for namespace in (TEST_NAMESPACE, ISTIO_SYSTEM):
            for pod in cluster.pods(namespace):
                revision = pod.revision or "default"
                if not pod.proxy_image or revision not in istiods:
                    continue
                proxy, control = image_version(pod.proxy_image), istiods[revision]
                proxy_minor, control_minor = istio_minor(proxy), istio_minor(control)
                if proxy_minor is None or control_minor is None:
                    continue
                where = f"{namespace}/{pod.name} runs proxy {proxy} against istiod {control} (revision {revision})"
                if proxy_minor > control_minor:
                    results.append(
                        Check(
                            "data-plane-ahead",
                            "error",
                            spec.name,
                            f"{where}: the data plane must never be ahead of its control plane",
                            "upgrade the control plane first (every cluster), then restart the workloads into its revision",
                        )
                    )
                elif proxy_minor[0] == control_minor[0] and control_minor[1] - proxy_minor[1] > 1:
                    results.append(
                        Check(
                            "data-plane-too-old",
                            "warning",
                            spec.name,
                            f"{where}: the control plane may be only one minor version ahead",
                            "restart the workload so that it is injected with its istiod's proxy",
                        )
                    )
    return results


def _unconnected(mesh: Mesh) -> tuple[list[tuple[str, str, str]], list[Check]]:
    """Ready proxies (sidecars and gateways) that no istiod lists, as (cluster, namespace, pod), and a
    warning for each primary whose list could not be read."""
    listed: set[tuple[str, str, str]] = set()
    unreadable = []
    planes = istiod_clusters(mesh)
    for name, plane in planes.items():
        try:
            for proxy in plane.connected_proxies():
                # A cluster ID the mesh does not know (istiod's default "Kubernetes") is the primary's own.
                cluster = proxy.cluster if proxy.cluster in mesh.clusters else name
                listed.add((cluster, proxy.namespace, proxy.pod))
        except BackendError as error:
            reason = str(error).removeprefix(f"{name}: ")
            unreadable.append(
                Check(
                    "proxy-status-unreadable",
                    "warning",
                    name,
                    f"istioctl proxy-status failed, so whether its proxies are connected is unknown: {reason}",
                    "run `istioctl proxy-status` against this cluster to see why (every istiod pod must answer)",
                )
            )
    unknown = {check.cluster for check in unreadable}
    missing = [
        (spec.name, pod.namespace, pod.name)  # the pod's real namespace, as istiod lists it (external-istiod)
        for spec in mesh.spec.clusters
        if mesh.spec.control_plane(spec.name) in planes and mesh.spec.control_plane(spec.name) not in unknown
        for namespace in (TEST_NAMESPACE, ISTIO_SYSTEM)
        for pod in mesh[spec.name].pods(namespace)
        if pod.has_sidecar and pod.ready and (spec.name, pod.namespace, pod.name) not in listed
    ]
    return missing, unreadable


def injection_path(webhook: Mapping[str, Any]) -> dict[str, str]:
    """The parameters an injection webhook's path passes the injector: ``/inject/cluster/<c>/net/<n>`` ->
    {"cluster": c, "net": n} (what ``webhook.go`` reads; a plain ``/inject`` passes none)."""
    client = webhook.get("clientConfig") or {}
    path = urllib.parse.urlsplit(client["url"]).path if client.get("url") else (client.get("service") or {}).get("path")
    parts = str(path or "").strip("/").split("/")
    return {
        parts[i]: parts[i + 1].replace("--slash--", "/")  # parseInjectEnvs's escape for a "/" in a value
        for i in range(len(parts) - 1)
        if parts[i] in ("cluster", "net")
    }


def check_injection(mesh: Mesh) -> list[Check]:
    """Each cluster's pods are injected as that cluster: its sidecar injection webhooks' paths name it (a remote's
    ``istiodRemote.injectionPath``, ``/inject/cluster/<c>/net/<n>``), and its sidecars say so
    (``ISTIO_META_CLUSTER_ID``). A proxy claiming another cluster is authenticated against that cluster's API
    server, which refuses its token (``KubeJWTAuthenticator``): it gets no certificate and its pod never gets
    ready. Pods already running keep working; every new pod fails. (The path's network only labels the pods;
    the network checks judge that.)"""
    results: list[Check] = []
    for spec in mesh.spec.clusters:
        cluster = mesh[spec.name]
        wrong = set()
        for configuration in cluster.list("MutatingWebhookConfiguration"):
            for webhook in configuration.get("webhooks") or []:
                if not str(webhook.get("name", "")).endswith("sidecar-injector.istio.io"):
                    continue
                named = injection_path(webhook)
                if named.get("cluster", spec.name) != spec.name:
                    path = "/".join(f"{k}/{v}" for k, v in named.items())
                    wrong.add(f"{configuration['metadata']['name']} injects as /inject/{path}")
        claiming = sorted(
            f"{pod.name} says {pod.proxy_cluster}"
            for namespace in (TEST_NAMESPACE, ISTIO_SYSTEM)
            for pod in cluster.pods(namespace)
            if pod.has_sidecar and pod.proxy_cluster not in ("", "Kubernetes", spec.name)
        )
        if wrong or claiming:
            evidence = [f"webhook {w}" for w in sorted(wrong)]
            evidence += [f"sidecars claiming another cluster: {', '.join(claiming)}"] if claiming else []
            results.append(
                Check(
                    "injection-path-wrong",
                    "error",
                    spec.name,
                    f"pods here are injected as another cluster ({'; '.join(evidence)}): istiod "
                    f"authenticates their proxies against that cluster's API server, which refuses their tokens, so "
                    "no new pod with a sidecar gets a certificate or gets ready",
                    f"reinstall this cluster's remote profile with values.istiodRemote.injectionPath="
                    f"/inject/cluster/{spec.name}/net/{spec.network}",
                )
            )
    return results


def check_proxy_connections(mesh: Mesh) -> list[Check]:
    """Every ready proxy has an xDS stream to an istiod (``istioctl proxy-status`` lists it). One that has
    none keeps its last configuration and misses every change (new endpoints, policies). A proxy
    reconnecting after an istiod restart is given up to 10 s (the mesh's convergence deadline if shorter)."""
    deadline = time.monotonic() + min(mesh.convergence_deadline, 10.0)
    missing, unreadable = _unconnected(mesh)
    # A proxy can only reconnect to a ready istiod: the others are not waited for.
    serving = {
        name
        for name, plane in istiod_clusters(mesh).items()
        if any(pod.ready for pod in plane.pods(ISTIO_SYSTEM, {"app": "istiod"}))
    }

    def may_reconnect() -> bool:
        return any(mesh.spec.control_plane(cluster) in serving for cluster, _, _ in missing)

    while may_reconnect() and time.monotonic() < deadline:
        time.sleep(min(1.0, mesh.convergence_deadline / 5))
        missing, unreadable = _unconnected(mesh)
    return unreadable + [
        Check(
            "proxy-disconnected",
            "error",
            cluster,
            f"{namespace}/{pod} is ready but connected to no istiod (istioctl proxy-status does not list it): "
            "it keeps its last configuration and misses every change",
            f"check that istiod runs in {mesh.spec.control_plane(cluster)} and that the proxy reaches it on 15012 "
            "(from a remote: through the primary's east-west gateway); the proxy reconnects by itself once it can",
        )
        for cluster, namespace, pod in missing
    ]


def check_istiod_ready(mesh: Mesh) -> list[Check]:
    """Every primary runs a ready istiod (an incomplete or mismatched ``cacerts`` keeps it from starting:
    those findings come first, as the cause)."""
    results = []
    for name, plane in istiod_clusters(mesh).items():
        pods = [p for p in plane.pods(ISTIO_SYSTEM, {"app": "istiod"}) if not p.terminating]
        if any(p.ready for p in pods):
            continue
        shown = ", ".join(f"{p.name} {p.phase}" for p in pods) or "no istiod pod"
        results.append(
            Check(
                "istiod-not-ready",
                "error",
                name,
                f"no istiod is ready ({shown}): the cluster's proxies get no configuration and no certificates",
                "see why with `kubectl -n istio-system logs deploy/istiod`; fix what the findings before this one name",
            )
        )
    return results


CHECKS = (
    check_trust,
    check_remote_secrets,
    check_remote_control_plane,
    check_gateways,
    check_mesh_config,
    check_services,
    check_peer_authentication,
    check_version_skew,
    check_injection,
    check_proxy_connections,
    check_istiod_ready,
)
# A mesh with one of these from the start cannot carry a case: every case fails at once with the findings.
BLOCKING = frozenset({"istiod-not-ready", "eastwest-gateway-missing", "eastwest-gateway-no-address"})


def check_host_evidence(mesh: Mesh) -> list[Check]:
    """What testinfra reads on real clusters' nodes and proxies (nothing on the embedded mesh)."""
    status: dict[bool | None, Status] = {True: "ok", False: "error", None: "warning"}
    return [
        Check(found.check, status[found.ok], name, found.text, found.hint)
        for name, cluster in mesh.clusters.items()
        for found in cluster.host_evidence()
    ]


def _permitted(check: Callable[[Mesh], list[Check]], mesh: Mesh) -> list[Check]:
    """One check's findings; a check this user's RBAC does not let run is a warning saying so, never the end
    of the diagnosis (a managed offering's user may read less than an admin)."""
    try:
        return check(mesh)
    except Forbidden as error:
        cluster, _, reason = str(error).partition(": ")
        name = check.__name__.removeprefix("check_").replace("_", "-")
        return [
            Check(
                f"{name}-not-permitted",
                "warning",
                cluster if cluster in mesh.clusters else "mesh",
                f"this check could not run as this user: {reason or error}",
                "grant this user read access to what it names, or run meshfed doctor as one who has it",
            )
        ]


def diagnose(mesh: Mesh) -> list[Check]:
    """Every check over the mesh; errors first."""
    results = [result for check in (*CHECKS, check_host_evidence) for result in _permitted(check, mesh)]
    order = {"error": 0, "warning": 1, "ok": 2}
    return sorted(results, key=lambda r: order[r.status])


def not_injected(mesh: Mesh) -> list[str]:
    """meshfed's workload pods (``cluster/pod``) that carry no sidecar of the mesh under test: none at all, or
    one of another revision than the one their namespace is injected by. No case has evidence without them."""
    found = []
    for name, cluster in mesh.clusters.items():
        pods = [pod for pod in cluster.pods(TEST_NAMESPACE) if not pod.terminating]
        if not pods:
            found.append(f"{name} (no pod in namespace {TEST_NAMESPACE})")
        others = set(cluster.istiod_versions()) - {cluster.revision} if cluster.revision else set()
        for pod in pods:
            if not pod.has_sidecar:
                found.append(f"{name}/{pod.name}")
            elif pod.revision in others:
                found.append(f"{name}/{pod.name} (a sidecar of revision {pod.revision}, not {cluster.revision})")
    return found


def broken_from_start(mesh: Mesh) -> list[Check]:
    """When a blocking finding (istiod not ready, an east-west gateway missing or without an address) lasts
    the mesh's convergence deadline: every error of the clusters it concerns, the causes first. Cheap on a
    healthy mesh: only the blocking checks run until one fires."""
    ends = time.monotonic() + mesh.convergence_deadline
    while True:
        # A mesh someone else installed may join its clusters otherwise (one network, its own gateway).
        checks = (check_istiod_ready,) if mesh.backend == "existing" else (check_istiod_ready, check_gateways)
        found = [c for check in checks for c in check(mesh) if c.check in BLOCKING]
        if not found:
            return []
        if time.monotonic() >= ends:
            clusters = {c.cluster for c in found}
            return [c for c in diagnose(mesh) if c.status == "error" and c.cluster in clusters]
        time.sleep(min(2.0, mesh.convergence_deadline / 3))
