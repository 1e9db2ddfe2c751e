"""The catalog of known multi-cluster misconfigurations: how to break, what breaks, what names it, the fix.

Each entry breaks the mesh only through the backend contract, says per direction which symptoms a
call must show (Istio's own behaviour), names the diagnosis check that must come first, and repairs
the mesh. ``target`` is the last cluster, ``other`` the first; where Istio configuration is involved it
goes to the cluster that holds it (a remote's primary). An entry that cannot happen in a topology
says why instead of passing.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from meshfed import manifests
from meshfed.backends.base import BackendError, Mesh
from meshfed.calls import Symptom
from meshfed.cases import not_supported
from meshfed.causes import PathEvidence
from meshfed.diagnose import ingress_addresses, injection_path, istiod_clusters
from meshfed.expect import Wanted, reliably
from meshfed.manifests import (
    CLIENT,
    CONTROL_PLANE_CLUSTERS,
    EASTWEST_GATEWAY,
    ISTIO_SYSTEM,
    NETWORK_LABEL,
    TEST_NAMESPACE,
    Obj,
    istio_minor,
    kubeconfig_server,
    only_in,
    service_url,
)
from meshfed.pki import PluginCA, bundle_from_secret, create_mesh_pki
from meshfed.pki.certs import cert_pem, fingerprint, key_pem, load_certs, load_key, new_key
from meshfed.topology import MeshSpec, Topology

# A failed handshake between sidecars, as the caller sees it: Envoy names the TLS error in its 503 body,
# except Envoy 1.39 on (and 1.38 backports), which keeps every transport failure reason out of the body
# (envoyproxy/envoy#44746): there the caller sees only "remote connection failure", which a gateway that is
# down shows too, so such a call counts as a TLS failure only when the proxies' own certificates say so
# (meshfed.causes), and the diagnosis, which each entry requires to come first, names the cause.
TLS_FAILURES = frozenset({Symptom.TLS_VERIFY_FAILED, Symptom.UNKNOWN_CA, Symptom.TLS_FAILURE_INFERRED})
OK = frozenset({Symptom.OK})


@dataclass(frozen=True)
class Expect:
    """Calls from the client in ``source`` to the service that runs only in ``destination``."""

    source: str
    destination: str
    symptoms: frozenset[Symptom]
    namespace: str = TEST_NAMESPACE


@dataclass(frozen=True)
class Change:
    """An Istio release from which a stage shows what ``Stage.expect`` says; a mesh before it shows ``before``."""

    since: tuple[int, int]
    why: str  # the change in Istio, e.g. "istio/istio#58567: ..."
    before: Callable[[MeshSpec], list[Expect]]


@dataclass
class Stage:
    """One step of breaking (or of a partial fix) and what the mesh then shows."""

    title: str
    act: Callable[[Mesh, dict[str, Any]], None]
    expect: Callable[[MeshSpec], list[Expect]]
    finding: str | None  # the diagnosis check that must come first; None: the mesh is healthy
    istiod_ready: bool | None = None  # for entries that break the control plane rather than traffic
    change: Change | None = None  # where Istio's behaviour depends on its version
    # What the stage must show beyond calls (a control plane cut off from a remote): what the mesh showed,
    # and None when that is what it must show, else the problem.
    shows: Callable[[Mesh], tuple[str, str | None]] | None = None

    def expectations(self, spec: MeshSpec, istio_version: str) -> tuple[list[Expect], str]:
        """What the stage must show on this Istio version, and which versions that expectation belongs to
        ("" when every version behaves alike). An unknown version (the embedded mesh emulates the newest
        behaviour; a managed Istio may not say) gets the newest expectation."""
        if self.change is None:
            return self.expect(spec), ""
        since = ".".join(str(n) for n in self.change.since)
        release = istio_minor(istio_version)
        if release is not None and release < self.change.since:
            return self.change.before(spec), f"Istio before {since} ({self.change.why})"
        return self.expect(spec), f"Istio {since} and later ({self.change.why})"


@dataclass
class Misconfiguration:
    name: str
    title: str
    stages: list[Stage]
    fix: Callable[[Mesh, dict[str, Any]], None]
    not_applicable: Callable[[MeshSpec], str | None] = field(default=lambda spec: None)
    healed: Callable[[Mesh], tuple[str, str | None]] | None = None  # after the fix, like Stage.shows


def target(spec: MeshSpec) -> str:
    return spec.names[-1]


def other(spec: MeshSpec) -> str:
    return spec.names[0]


def _both(spec: MeshSpec, symptoms: frozenset[Symptom]) -> list[Expect]:
    return [Expect(other(spec), target(spec), symptoms), Expect(target(spec), other(spec), symptoms)]


def _one_way(spec: MeshSpec, symptoms: frozenset[Symptom]) -> list[Expect]:
    return [Expect(other(spec), target(spec), symptoms), Expect(target(spec), other(spec), OK)]


def _restart_istiod(mesh: Mesh, cluster: str) -> None:
    for name in mesh[cluster].istiods():
        mesh[cluster].rollout_restart(name, ISTIO_SYSTEM, timeout=mesh.convergence_deadline * 10)
    _wait_for_published_root(mesh, cluster)


def _signing_root(mesh: Mesh, cluster: str) -> set[str]:
    """Fingerprints of the root istiod signs under: cacerts' root-cert.pem, else its self-signed CA's."""
    for name, key in (("cacerts", "root-cert.pem"), ("istio-ca-secret", "ca-cert.pem")):
        secret = mesh[cluster].get("Secret", name, ISTIO_SYSTEM)
        pem = bundle_from_secret(secret).get(key) if secret else None
        if pem:
            return {fingerprint(c) for c in load_certs(pem, f"{name} {key}")}
    return set()


def publishes_its_root(mesh: Mesh, cluster: str, signer: str | None = None) -> bool:
    """Whether istiod (of ``signer``, by default ``cluster``'s own) has written the root it signs under into
    istio-ca-root-cert of istio-system and the test namespace of ``cluster`` (a new root reaches istiod's
    mounted files only after the kubelet's sync)."""
    wanted = _signing_root(mesh, signer or cluster)
    for namespace in (ISTIO_SYSTEM, TEST_NAMESPACE):
        config = mesh[cluster].get("ConfigMap", "istio-ca-root-cert", namespace) or {}
        pem = ((config.get("data") or {}).get("root-cert.pem") or "").encode()
        if not pem or not wanted <= {fingerprint(c) for c in load_certs(pem, "istio-ca-root-cert")}:
            return False
    return bool(wanted)


def _wait_for_published_root(mesh: Mesh, cluster: str) -> None:
    """Until istiod publishes its root. A pod mounts istio-ca-root-cert as it is when the pod starts, and the
    kubelet refreshes the mount only at its next sync (up to about two minutes on real clusters): a proxy
    started before istiod published a new root cannot verify istiod and gets no certificate until then
    (seen on the host backend). An external istiod publishes it in the clusters it serves, not its own."""
    deadline = time.monotonic() + mesh.convergence_deadline * 2
    served = mesh.spec.names if mesh.spec.external is not None and cluster == mesh.spec.external.name else [cluster]
    while time.monotonic() < deadline and not all(publishes_its_root(mesh, name, signer=cluster) for name in served):
        time.sleep(0.5)


def _restart_workloads(mesh: Mesh, cluster: str) -> None:
    for deployment in mesh[cluster].list("Deployment", TEST_NAMESPACE):
        mesh[cluster].rollout_restart(
            deployment["metadata"]["name"], TEST_NAMESPACE, timeout=mesh.convergence_deadline * 10
        )


def _restart_gateways(mesh: Mesh, cluster: str) -> None:
    """The cluster's gateways, as a fresh install would start them: on a real cluster a gateway that kept
    running keeps trusting the root it started with, cannot reach an istiod restarted on another root,
    and keeps routing to the endpoints it last had (seen on the host backend: calls through it reset)."""
    for deployment in mesh[cluster].list("Deployment", ISTIO_SYSTEM):
        name = deployment["metadata"]["name"]
        if not name.startswith("istiod"):
            mesh[cluster].rollout_restart(name, ISTIO_SYSTEM, timeout=mesh.convergence_deadline * 10)


def _save(
    mesh: Mesh, saved: dict[str, Any], key: str, cluster: str, kind: str, name: str, namespace: str | None
) -> None:
    saved[key] = (cluster, mesh[cluster].get(kind, name, namespace))


def _restore(mesh: Mesh, saved: dict[str, Any], key: str) -> None:
    cluster, obj = saved[key]
    if obj is not None:
        clean = {k: v for k, v in obj.items() if k != "status"}
        clean["metadata"] = {
            k: v for k, v in obj["metadata"].items() if k in ("name", "namespace", "labels", "annotations")
        }
        mesh[cluster].apply(clean)


def _multi_primary_only(reason: str, external: str) -> Callable[[MeshSpec], str | None]:
    """Not applicable outside multi-primary: ``reason`` in primary-remote, ``external`` with an external
    control plane."""
    return lambda spec: {Topology.PRIMARY_REMOTE: reason, Topology.EXTERNAL_CONTROL_PLANE: external}.get(spec.topology)


def _primary_remote_only(spec: MeshSpec) -> str | None:
    if spec.external is not None:
        return (
            "an external control plane is reached through its own cluster's ingress gateway at the address in the "
            "mesh config, not through a primary's east-west gateway (see external-istiod-not-exposed)"
        )
    return "every cluster runs its own istiod: no cluster is configured from another" if not _remotes(spec) else None


def _led_remotely(spec: MeshSpec) -> str | None:
    """Applies where a remote's namespace says which istiod leads it: primary-remote and an external control plane."""
    return "every cluster runs its own istiod: no cluster is configured from another" if not _remotes(spec) else None


def _external_only(spec: MeshSpec) -> str | None:
    return None if spec.external is not None else "no external control plane: istiod runs in the mesh's own clusters"


def _remotes(spec: MeshSpec) -> list[str]:
    return [c.name for c in spec.clusters if c.role == "remote"]


def _served(spec: MeshSpec) -> list[str]:
    """The clusters whose proxies reach an istiod in another cluster: the remotes, and the config cluster."""
    return [c.name for c in spec.clusters if c.role in ("remote", "config")]


def _remote_proxies(mesh: Mesh) -> list[tuple[str, str, bool]]:
    """The remotes' ready proxies (sidecars and gateways): cluster, ``cluster/namespace/pod``, and whether an
    istiod lists it."""
    listed = {
        (proxy.cluster, proxy.namespace, proxy.pod)
        for plane in istiod_clusters(mesh).values()
        for proxy in plane.connected_proxies()
    }
    return [
        (name, f"{name}/{pod.namespace}/{pod.name}", (name, pod.namespace, pod.name) in listed)
        for name in _served(mesh.spec)
        for namespace in (TEST_NAMESPACE, ISTIO_SYSTEM)
        for pod in mesh[name].pods(namespace)
        if pod.has_sidecar and pod.ready
    ]


def _remote_proxies_become(cut_off: Callable[[MeshSpec], list[str]]) -> Callable[[Mesh], tuple[str, str | None]]:
    """Until the ready proxies (sidecars and gateways) of the remotes ``cut_off`` names are connected to no
    istiod and those of every other remote to one. A proxy cut off keeps its last configuration and its
    certificate; Envoy drains a removed gateway listener for up to 45 s (Istio's drainDuration) and retries a
    lost xDS stream with a backoff of up to 30 s."""

    def shows(mesh: Mesh) -> tuple[str, str | None]:
        cut = set(cut_off(mesh.spec))
        every_remote = cut == set(_served(mesh.spec))
        whose = "the data-plane clusters'" if mesh.spec.external is not None else "the remotes'"
        start = time.monotonic()
        while True:
            proxies = _remote_proxies(mesh)
            still = [where for cluster, where, on in proxies if on and cluster in cut]
            lost = [where for cluster, where, on in proxies if not on and cluster not in cut]
            cut_count = sum(1 for cluster, _, on in proxies if not on and cluster in cut)
            kept_count = sum(1 for cluster, _, on in proxies if on and cluster not in cut)
            waited = time.monotonic() - start
            # What is shown is the symptom, without times (they differ between runs and backends).
            if every_remote:
                shown = f"{whose} {cut_count} ready proxies connected to no istiod"
            elif cut:
                shown = (
                    f"{', '.join(sorted(cut))}: {cut_count} ready proxies connected to no istiod, "
                    f"the other remotes' {kept_count} connected to an istiod"
                )
            else:
                shown = f"{whose} {kept_count} ready proxies connected to an istiod"
            if proxies and not still and not lost:
                return shown, None
            if waited >= mesh.convergence_deadline + 45:
                if not proxies:
                    return "no ready proxy in the remotes", f"no ready proxy in the remotes after {waited:.0f} s"
                wrong = [f"{', '.join(still)}: still connected to an istiod"] if still else []
                wrong += [f"{', '.join(lost)}: connected to no istiod"] if lost else []
                return (
                    f"{len(still) + len(lost)} of {whose} ready proxies not as expected",
                    f"{'; '.join(wrong)} after {waited:.0f} s",
                )
            time.sleep(min(2.0, mesh.convergence_deadline / 3))

    return shows


# A misconfiguration's symptom must show in every call of a window this long once it has shown (a failing
# call can cost a connect timeout, so it is shorter than a healthy window).
SYMPTOM_WINDOW = 5


def observe(mesh: Mesh, expect: Expect, window: int) -> tuple[str, str | None]:
    """What the calls showed (the symptoms of the steady window), and None when every call of it showed one of
    the expected symptoms, else what they showed instead. A bare connection failure is first named from the
    mesh's evidence (a gateway down is not a TLS failure)."""
    cluster = mesh[expect.source]
    pod = cluster.pod_of(expect.namespace, CLIENT)
    url = service_url(only_in(expect.destination))
    evidence = PathEvidence(mesh, expect.source, expect.destination, expect.namespace)
    wanted = expect.symptoms
    healthy = wanted == {Symptom.OK}
    names = " or ".join(sorted(s.value for s in wanted))
    outcome = reliably(
        f"{expect.source}->{expect.destination}",
        lambda n: [evidence.name(r) for r in cluster.call(pod.name, expect.namespace, url, n)],
        window=window if healthy else min(window, SYMPTOM_WINDOW),
        consecutive=3 if healthy else 2,
        batch=1,
        # A failure can be slow to show (an unroutable address costs a connect timeout per attempt).
        deadline=mesh.convergence_deadline if healthy else mesh.convergence_deadline + 10,
        wanted=Wanted(
            accept=lambda r: r.symptom in wanted and (r.symptom is not Symptom.OK or r.cluster == expect.destination),
            expected=names,
        ),
    )
    last = outcome.window.results if outcome.window else outcome.results[-(3 if healthy else 2) :]
    shown = f"{expect.source}->{expect.destination}: {', '.join(sorted({r.symptom.value for r in last}))}"
    if outcome.held:
        return shown, None
    failed = [r for r in outcome.results if not r.ok]
    saw = f"; the last failed call saw: {failed[-1].seen}" if failed and outcome.window is None else ""
    cause = evidence.cause() if any(r.symptom is Symptom.GATEWAY_DOWN for r in outcome.results) else None
    why = f"; {cause[1]}" if cause else ""
    return shown, f"{outcome.message()} (expected {names}){saw}{why}"


# -- the entries ---------------------------------------------------------------------------------


def _second_root(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = target(mesh.spec)
    _save(mesh, saved, "cacerts", name, "Secret", "cacerts", ISTIO_SYSTEM)
    stranger = create_mesh_pki([name], key_type="ecdsa").cluster_cas[name]
    mesh[name].apply(manifests.cacerts(stranger.secret_data()))
    _restart_istiod(mesh, name)  # as if the cluster had been installed with this cacerts
    _restart_gateways(mesh, name)
    _restart_workloads(mesh, name)


def _restored(key: str) -> Callable[[Mesh, dict[str, Any]], None]:
    """The fix that puts the saved object back, then restarts istiod and the workloads of the target."""

    def fix(mesh: Mesh, saved: dict[str, Any]) -> None:
        name = target(mesh.spec)
        _restore(mesh, saved, key)
        _restart_istiod(mesh, name)
        _restart_gateways(mesh, name)
        _restart_workloads(mesh, name)

    return fix


def _install_before_cacerts(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = target(mesh.spec)
    _save(mesh, saved, "cacerts", name, "Secret", "cacerts", ISTIO_SYSTEM)
    mesh[name].delete("Secret", "cacerts", ISTIO_SYSTEM)
    _restart_istiod(mesh, name)  # istiod now runs its self-signed CA, as when installed before cacerts
    _restart_gateways(mesh, name)
    _restart_workloads(mesh, name)


def _add_cacerts_restart_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = target(mesh.spec)
    _restore(mesh, saved, "cacerts")
    _restart_istiod(mesh, name)


def _restart_target_proxies(mesh: Mesh, saved: dict[str, Any]) -> None:
    """Istio's fix once cacerts is in place: restart every proxy, the gateways' too, onto the new root."""
    _restart_gateways(mesh, target(mesh.spec))
    _restart_workloads(mesh, target(mesh.spec))


def _remote_secret_holder(spec: MeshSpec) -> str:
    """The cluster that reads ``target`` through a remote secret: ``other`` (a primary), or the external control
    plane's (its istiod watches remote secrets in its own namespace: LOCAL_CLUSTER_SECRET_WATCHER)."""
    return spec.external.name if spec.external is not None else other(spec)


def _drop_remote_secret(mesh: Mesh, saved: dict[str, Any]) -> None:
    holder, name = _remote_secret_holder(mesh.spec), target(mesh.spec)
    _save(mesh, saved, "secret", holder, "Secret", f"istio-remote-secret-{name}", ISTIO_SYSTEM)
    mesh[holder].delete("Secret", f"istio-remote-secret-{name}", ISTIO_SYSTEM)


def _drop_both_remote_secrets(mesh: Mesh, saved: dict[str, Any]) -> None:
    _drop_remote_secret(mesh, saved)
    name, holder = other(mesh.spec), target(mesh.spec)
    _save(mesh, saved, "secret-2", holder, "Secret", f"istio-remote-secret-{name}", ISTIO_SYSTEM)
    mesh[holder].delete("Secret", f"istio-remote-secret-{name}", ISTIO_SYSTEM)


def _restore_remote_secrets(mesh: Mesh, saved: dict[str, Any]) -> None:
    for key in ("secret", "secret-2"):
        if key in saved:
            _restore(mesh, saved, key)


def _loopback_remote_secret(mesh: Mesh, saved: dict[str, Any]) -> None:
    holder, name = _remote_secret_holder(mesh.spec), target(mesh.spec)
    _save(mesh, saved, "secret", holder, "Secret", f"istio-remote-secret-{name}", ISTIO_SYSTEM)
    mesh[holder].apply(manifests.remote_secret(name, manifests.kubeconfig(name, "https://127.0.0.1:6443")))


def _restart_holder_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    _restart_istiod(mesh, _remote_secret_holder(mesh.spec))


def _drop_cross_network_gateway(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[mesh.spec.config_cluster(target(mesh.spec))].delete("Gateway", "cross-network-gateway", ISTIO_SYSTEM)


def _restore_cross_network_gateway(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[mesh.spec.config_cluster(target(mesh.spec))].apply(manifests.cross_network_gateway())


def _cross_network_expect(spec: MeshSpec) -> list[Expect]:
    # The gateway resets the connection; Envoy 1.39+ tells the app only "remote connection failure".
    reset = frozenset({Symptom.CONNECTION_RESET, Symptom.CONNECTION_FAILURE})
    # In primary-remote the primary's Gateway configures both gateways (with an external control plane, the
    # config cluster's): both directions break.
    return _one_way(spec, reset) if spec.topology is Topology.MULTI_PRIMARY else _both(spec, reset)


def _unlabelled(spec: MeshSpec) -> str:
    """Whose network goes missing: in primary-remote the primary's, whose istiod reads the namespace
    label (a remote's pods take their network from the injection path)."""
    return spec.primaries[0].name if spec.topology is Topology.PRIMARY_REMOTE else target(spec)


def _drop_network_label(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[_unlabelled(mesh.spec)].patch("Namespace", ISTIO_SYSTEM, None, {"metadata": {"labels": {NETWORK_LABEL: None}}})


def _drop_pod_network_labels(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The pods lose their own label too, as pods injected without values.global.network have none."""
    cluster = mesh[_unlabelled(mesh.spec)]
    saved["pod-networks"] = {
        p.name: p.labels[NETWORK_LABEL] for p in cluster.pods(TEST_NAMESPACE) if NETWORK_LABEL in p.labels
    }
    for name in saved["pod-networks"]:
        cluster.patch("Pod", name, TEST_NAMESPACE, {"metadata": {"labels": {NETWORK_LABEL: None}}})


def _restore_network_label(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = _unlabelled(mesh.spec)
    labels = {NETWORK_LABEL: mesh.spec.cluster(name).network}
    mesh[name].patch("Namespace", ISTIO_SYSTEM, None, {"metadata": {"labels": labels}})
    for pod, network in saved.get("pod-networks", {}).items():
        if mesh[name].get("Pod", pod, TEST_NAMESPACE) is not None:
            mesh[name].patch("Pod", pod, TEST_NAMESPACE, {"metadata": {"labels": {NETWORK_LABEL: network}}})


def _network_label_expect(spec: MeshSpec) -> list[Expect]:
    """Callers from the other network get the unlabelled cluster's pod addresses and time out."""
    victim = _unlabelled(spec)
    caller = next(name for name in spec.names if name != victim)
    return [Expect(caller, victim, frozenset({Symptom.TIMEOUT})), Expect(victim, caller, OK)]


def _other_trust_domain(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = target(mesh.spec)
    _save(mesh, saved, "mesh", name, "ConfigMap", "istio", ISTIO_SYSTEM)
    config = mesh[name].get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    mesh_config = yaml.safe_load(config["data"]["mesh"]) or {}
    mesh_config["trustDomain"] = f"{name}.example"
    mesh[name].patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    _restart_istiod(mesh, name)
    _restart_workloads(mesh, name)


def _trust_domain_expect(spec: MeshSpec) -> list[Expect]:
    """Each server refuses the other trust domain's clients. The restarted istiod may also name the other
    cluster's workloads in its own trust domain, and then its clients refuse their servers first (a TLS failure):
    its per-cluster mesh watcher falls back to its own mesh config until the remote's ConfigMap is read
    (restrictedConfigAdapter, pkg/config/mesh/watchers.go), endpoints built before that keep the name, and the
    push that follows rebuilds no endpoint (seen on host, CI of 2026-12-06: 331 of 331 calls)."""
    reset = frozenset({Symptom.CONNECTION_RESET})
    return [Expect(other(spec), target(spec), reset), Expect(target(spec), other(spec), reset | TLS_FAILURES)]


def _incomplete_cacerts(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = mesh.spec.control_plane(target(mesh.spec))
    _save(mesh, saved, "cacerts", name, "Secret", "cacerts", ISTIO_SYSTEM)
    mesh[name].patch("Secret", "cacerts", ISTIO_SYSTEM, {"data": {"ca-key.pem": None}})
    for pod in mesh[name].pods(ISTIO_SYSTEM, {"app": "istiod"}):
        mesh[name].delete("Pod", pod.name, ISTIO_SYSTEM)  # its replacement reads the incomplete bundle


def _repair_cacerts(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = mesh.spec.control_plane(target(mesh.spec))
    _restore(mesh, saved, "cacerts")
    _restart_istiod(mesh, name)


def _service_only_where_it_runs(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[other(mesh.spec)].delete("Service", only_in(target(mesh.spec)), TEST_NAMESPACE)


def _restore_service(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[other(mesh.spec)].apply(manifests.service(only_in(target(mesh.spec))))


OUTSIDE = "meshfed-outside"


def _strict_with_outside_caller(mesh: Mesh, saved: dict[str, Any]) -> None:
    name = target(mesh.spec)
    cluster = mesh[name]
    for obj in manifests.client_outside_mesh(name, OUTSIDE, mesh.spec.workload_image):
        cluster.apply(obj)
    cluster.wait_ready(manifests.CLIENT, OUTSIDE, timeout=mesh.convergence_deadline * 10)
    mesh[mesh.spec.config_cluster(name)].apply(manifests.peer_authentication("STRICT"))


def _drop_strict(mesh: Mesh, saved: dict[str, Any]) -> None:
    mesh[mesh.spec.config_cluster(target(mesh.spec))].delete("PeerAuthentication", "default", TEST_NAMESPACE)


def _outside_expect(spec: MeshSpec, symptoms: frozenset[Symptom]) -> list[Expect]:
    return [Expect(target(spec), target(spec), symptoms, namespace=OUTSIDE), Expect(other(spec), target(spec), OK)]


def _cleanup_outside(mesh: Mesh, saved: dict[str, Any]) -> None:
    _drop_strict(mesh, saved)
    mesh[target(mesh.spec)].delete("Namespace", OUTSIDE)


def _drop_expose_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    primary = mesh.spec.config_cluster(target(mesh.spec))
    for obj in manifests.expose_istiod():
        kind, name = obj["kind"], obj["metadata"]["name"]
        _save(mesh, saved, f"expose-{kind}", primary, kind, name, ISTIO_SYSTEM)
        mesh[primary].delete(kind, name, ISTIO_SYSTEM)
    _restart_istiod(mesh, primary)  # every proxy reconnects, as after any istiod rollout


def _restore_expose_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    for key in ("expose-Gateway", "expose-VirtualService"):
        if key in saved:
            _restore(mesh, saved, key)


def _remote_api_server_host(mesh: Mesh, remote: str) -> str:
    """The host of the remote's API server, as its remote secret in the primary names it."""
    primary = mesh.spec.config_cluster(remote)
    secret = mesh[primary].get("Secret", f"istio-remote-secret-{remote}", ISTIO_SYSTEM)
    server = kubeconfig_server(bundle_from_secret(secret).get(remote, b"")) if secret else None
    host = urllib.parse.urlsplit(server or "").hostname
    if not host:
        raise BackendError(f"{primary}: no readable remote secret for {remote}, so no address to misdirect to")
    return host


def _misdirect_remote_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    """As if the remote had been installed with ``remotePilotAddress`` set to its own API server's host
    (an address where nothing serves istiod): its istiod EndpointSlice names that address."""
    remote = target(mesh.spec)
    wrong = _remote_api_server_host(mesh, remote)
    slices = mesh[remote].list("EndpointSlice", ISTIO_SYSTEM, {"kubernetes.io/service-name": "istiod"})
    if not slices:  # e.g. a mesh someone else installed with a DNS name: an ExternalName Service, no slice
        not_supported(
            f"{remote}'s istiod Service has no EndpointSlice to misdirect (a remotePilotAddress that is a DNS name "
            "makes an ExternalName Service instead)"
        )
    for item in slices:
        name = item["metadata"]["name"]
        _save(mesh, saved, f"slice-{name}", remote, "EndpointSlice", name, ISTIO_SYSTEM)
        mesh[remote].patch("EndpointSlice", name, ISTIO_SYSTEM, {"endpoints": [{"addresses": [wrong]}]})
    _restart_istiod(mesh, mesh.spec.config_cluster(remote))  # every proxy reconnects


def _restore_slices(mesh: Mesh, saved: dict[str, Any]) -> None:
    for key in [k for k in saved if k.startswith("slice-")]:
        cluster, obj = saved[key]
        if obj is not None:
            mesh[cluster].patch("EndpointSlice", obj["metadata"]["name"], ISTIO_SYSTEM, {"endpoints": obj["endpoints"]})


def _drop_control_plane_annotation(mesh: Mesh, saved: dict[str, Any]) -> None:
    remote = target(mesh.spec)
    _save(mesh, saved, "namespace", remote, "Namespace", ISTIO_SYSTEM, None)
    patch = {"metadata": {"annotations": {CONTROL_PLANE_CLUSTERS: None}}}
    mesh[remote].patch("Namespace", ISTIO_SYSTEM, None, patch)
    _restart_istiod(mesh, mesh.spec.control_plane(remote))  # istiod decides whom it leads as it adds a cluster


def _restore_control_plane_annotation(mesh: Mesh, saved: dict[str, Any]) -> None:
    remote = target(mesh.spec)
    _restore(mesh, saved, "namespace")
    _restart_istiod(mesh, mesh.spec.control_plane(remote))


def _new_namespace_gets_root_cert(expected: bool) -> Callable[[Mesh], tuple[str, str | None]]:
    """A namespace created in the remote gets ``istio-ca-root-cert`` from the istiod leading it (a healthy
    istiod writes it within a second or two); without it, no pod with a sidecar can start there."""

    def shows(mesh: Mesh) -> tuple[str, str | None]:
        remote = mesh[target(mesh.spec)]
        probe = f"meshfed-probe-{int(time.time() * 1000) % 10**9}"
        remote.apply(manifests.namespace(probe))
        wait = mesh.convergence_deadline if expected else max(2.0, mesh.convergence_deadline / 4)
        start = time.monotonic()
        try:
            # Until it comes (expected) or for the whole window (not expected: it must never come).
            while not (found := remote.get("ConfigMap", "istio-ca-root-cert", probe) is not None):
                if time.monotonic() - start >= wait:
                    break
                time.sleep(0.5)
            waited = time.monotonic() - start
        finally:
            remote.delete("Namespace", probe)
        shown = f"a new namespace of {remote.name} got {'' if found else 'no '}istio-ca-root-cert"
        primary = mesh.spec.control_plane(target(mesh.spec))
        if found == expected:
            return shown, None
        return (
            shown,
            f"{shown} in {waited:.0f} s: istiod of {primary} {'does not lead' if expected else 'still leads'} it",
        )

    return shows


def _drop_external_routes(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The guide's external-istiod-gw.yaml missing: the ingress gateway no longer passes 15012 and 15017 to the
    external istiod; istiod restarted, so every proxy must reconnect (as after any istiod rollout)."""
    external = _external_name(mesh.spec)
    for obj in manifests.external_istiod_routes():
        kind, name = obj["kind"], obj["metadata"]["name"]
        _save(mesh, saved, f"route-{kind}", external, kind, name, ISTIO_SYSTEM)
        mesh[external].delete(kind, name, ISTIO_SYSTEM)
    _restart_istiod(mesh, external)


def _restore_external_routes(mesh: Mesh, saved: dict[str, Any]) -> None:
    for key in ("route-Gateway", "route-VirtualService"):
        if key in saved:
            _restore(mesh, saved, key)


# A name no data-plane cluster dials: the certificate of a gateway set up for the guide's hostname variant.
UNDIALLED_NAME = "external-istiod.mesh.invalid"
GATEWAY_CA = "external-istiod-ca"  # the root the ingress gateway verifies the external istiod by


def _gateway_secrets(mesh: Mesh, names: list[str]) -> list[Obj]:
    """The ingress gateway's ``credentialName`` Secret, a certificate for ``names`` from the external istiod's CA
    (``cacerts``: the proxies verify it against the mesh's root), and the root it verifies the external istiod
    by: the guide's ``external-istiod-dr`` alone makes it check istiod against the system roots, which
    refuse istiod's certificate (seen on host: every proxy then reconnects to an upstream connect error)."""
    external = _external_name(mesh.spec)
    files = bundle_from_secret(mesh[external].get("Secret", "cacerts", ISTIO_SYSTEM) or {})
    if not all(files.get(name) for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem")):
        raise BackendError(
            f"{external}: this entry signs the gateway's certificate with the external istiod's cacerts, which it cannot read"
        )
    roots = load_certs(files["root-cert.pem"], "cacerts root-cert.pem")
    chain = load_certs(files.get("cert-chain.pem") or files["ca-cert.pem"], "cacerts cert-chain.pem")
    ca = PluginCA(
        load_certs(files["ca-cert.pem"], "cacerts ca-cert.pem")[0],
        load_key(files["ca-key.pem"], "cacerts ca-key.pem"),
        tuple(roots),
        tuple(chain),
    )
    key = new_key("ecdsa")
    leaf = ca.sign_server(key.public_key(), names)
    meta = {"namespace": ISTIO_SYSTEM, "labels": dict(manifests.MANAGED_BY)}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": manifests.EXTERNAL_ISTIOD_CREDENTIAL, **meta},
            "data": {"tls.crt": _b64(cert_pem(leaf, *chain)), "tls.key": _b64(key_pem(key))},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": GATEWAY_CA, **meta},
            "data": {"ca.crt": _b64(cert_pem(*roots))},
        },
    ]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _misname_gateway_certificate(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The external cluster's ingress gateway terminating TLS (the guide's hostname variant) with a certificate
    for a name the data-plane clusters do not dial; istiod restarted, so every proxy reconnects through it.
    Seen on host: "x509: cannot validate certificate for <address> because it doesn't contain any IP SANs",
    and the API server's injection call "x509: certificate is valid for <name>, not istiod.external-istiod.svc":
    no new pod is created."""
    external = _external_name(mesh.spec)
    for kind, name in (("Gateway", "external-istiod-gw"), ("VirtualService", "external-istiod-vs")):
        _save(mesh, saved, f"route-{kind}", external, kind, name, ISTIO_SYSTEM)
    gateway_home = mesh[external].istio_system_itself()
    for secret in _gateway_secrets(mesh, [UNDIALLED_NAME]):
        gateway_home.apply(secret)
    mesh[external].delete("VirtualService", "external-istiod-vs", ISTIO_SYSTEM)  # its tls routes become http ones
    for obj in manifests.external_istiod_tls_routes():
        if obj["kind"] == "DestinationRule":
            for port in obj["spec"]["trafficPolicy"]["portLevelSettings"]:
                port["tls"]["credentialName"] = GATEWAY_CA
        mesh[external].apply(obj)
    _restart_istiod(mesh, external)


def _restore_gateway_passthrough(mesh: Mesh, saved: dict[str, Any]) -> None:
    external = _external_name(mesh.spec)
    for obj in manifests.external_istiod_tls_routes():
        mesh[external].delete(obj["kind"], obj["metadata"]["name"], ISTIO_SYSTEM)
    gateway_home = mesh[external].istio_system_itself()
    for name in (manifests.EXTERNAL_ISTIOD_CREDENTIAL, GATEWAY_CA):
        gateway_home.delete("Secret", name, ISTIO_SYSTEM)
    _restore_external_routes(mesh, saved)
    _restart_istiod(mesh, external)


def _external_name(spec: MeshSpec) -> str:
    if spec.external is None:
        raise BackendError("this entry needs an external control plane")
    return spec.external.name


def _drop_config_secret(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The external istiod without its istio-kubeconfig (the config cluster's credentials), its pod replaced as
    a restart or a node loss would. The new istiod still starts: client-go falls back to the in-cluster config
    when KUBECONFIG names no file (the Secret's volume is optional), so it runs against its own cluster, ready
    within seconds (seen on host). It names that cluster after the config cluster (CLUSTER_ID), so the config
    cluster's proxies, whose tokens it cannot review there, are refused and keep their last configuration; a
    remote's proxies, whose remote secret it still loads, are served a mesh read from the wrong cluster."""
    external = _external_name(mesh.spec)
    _save(mesh, saved, "config-secret", external, "Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    mesh[external].delete("Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    old = {pod.name for pod in mesh[external].pods(ISTIO_SYSTEM, {"app": "istiod"})}
    for name in old:
        mesh[external].delete("Pod", name, ISTIO_SYSTEM)
    deadline = time.monotonic() + mesh.convergence_deadline
    while time.monotonic() < deadline:  # until its replacement serves (what the mesh then shows is judged)
        if any(p.ready and p.name not in old for p in mesh[external].pods(ISTIO_SYSTEM, {"app": "istiod"})):
            break
        time.sleep(1)


READER = "istio-reader-service-account"


def _config_secret_as_reader(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The config cluster installed without ``global.configCluster`` has no istiod account, so the operator made
    istio-kubeconfig with istioctl's default, the reader account (``create-remote-secret --type=config`` without
    ``--service-account``); istiod's pod replaced. Seen on host: the new istiod never gets ready ("ingresses is
    forbidden: User system:serviceaccount:external-istiod:istio-reader-service-account cannot list ...")."""
    external = _external_name(mesh.spec)
    config = mesh.spec.config_cluster(target(mesh.spec))
    _save(mesh, saved, "config-secret", external, "Secret", "istio-kubeconfig", ISTIO_SYSTEM)
    secret = saved["config-secret"][1] or {}
    kubeconfig = bundle_from_secret(secret).get("config", b"")
    token = mesh[config].service_account_token(READER, ISTIO_SYSTEM)
    data = {"config": _b64(manifests.with_token(kubeconfig, token).encode())}
    mesh[external].patch("Secret", "istio-kubeconfig", ISTIO_SYSTEM, {"data": data})
    old = {pod.name for pod in mesh[external].pods(ISTIO_SYSTEM, {"app": "istiod"})}
    for name in old:
        mesh[external].delete("Pod", name, ISTIO_SYSTEM)


def _config_secret_expect(spec: MeshSpec) -> list[Expect]:
    """The remote (target) is served the wrong cluster's mesh: no endpoint of the config cluster's services, and
    its east-west gateway without the config cluster's cross-network-gateway (a reset, or Envoy 1.39+'s
    "remote connection failure")."""
    return [
        Expect(other(spec), target(spec), frozenset({Symptom.CONNECTION_RESET, Symptom.CONNECTION_FAILURE})),
        Expect(target(spec), other(spec), frozenset({Symptom.NO_HEALTHY_UPSTREAM})),
    ]


def _restore_config_secret(mesh: Mesh, saved: dict[str, Any]) -> None:
    _restore(mesh, saved, "config-secret")
    _restart_istiod(mesh, _external_name(mesh.spec))


PROBE = "meshfed-probe"


def _misname_injection(mesh: Mesh, saved: dict[str, Any]) -> None:
    """As if the remote had been installed with another cluster's ``injectionPath`` (the config cluster's values
    reused): every injection webhook of the remote that names it names the other cluster and its network."""
    spec = mesh.spec
    remote, wrong = spec.cluster(target(spec)), spec.cluster(other(spec))
    changed = 0
    for configuration in mesh[remote.name].list("MutatingWebhookConfiguration"):
        name = configuration["metadata"]["name"]
        webhooks = configuration.get("webhooks") or []
        if not any(injection_path(w).get("cluster") == remote.name for w in webhooks):
            continue
        _save(mesh, saved, f"webhook-{name}", remote.name, "MutatingWebhookConfiguration", name, None)
        for webhook in webhooks:
            client = webhook.get("clientConfig") or {}
            key, holder = ("url", client) if client.get("url") else ("path", client.get("service") or {})
            holder[key] = str(holder.get(key, "")).replace(
                f"/cluster/{remote.name}/net/{remote.network}", f"/cluster/{wrong.name}/net/{wrong.network}"
            )
        mesh[remote.name].patch("MutatingWebhookConfiguration", name, None, {"webhooks": webhooks})
        changed += 1
    if not changed:
        not_supported(
            f"no injection webhook of {remote.name} names it (/inject/cluster/{remote.name}/net/...): "
            "its injection path cannot be misnamed"
        )


def _restore_webhooks(mesh: Mesh, saved: dict[str, Any]) -> None:
    for key in [k for k in saved if k.startswith("webhook-")]:
        cluster, obj = saved[key]
        if obj is not None:
            mesh[cluster].patch(
                "MutatingWebhookConfiguration", obj["metadata"]["name"], None, {"webhooks": obj["webhooks"]}
            )
    mesh[target(mesh.spec)].delete("Deployment", PROBE, TEST_NAMESPACE)


def _new_remote_pod(
    ready: bool, injected_as: Callable[[MeshSpec], str] = target, *, created: bool = True
) -> Callable[[Mesh], tuple[str, str | None]]:
    """A new pod with a sidecar in the remote (target): injected as ``injected_as`` names (its cluster, or the
    one a wrong injection path names), and ready within the convergence deadline, or never (``ready`` False);
    or, ``created`` False, never created (the API server's call to the injection webhook fails)."""

    def shows(mesh: Mesh) -> tuple[str, str | None]:
        name, claims = target(mesh.spec), injected_as(mesh.spec)
        remote = mesh[name]
        remote.delete("Deployment", PROBE, TEST_NAMESPACE)
        remote.apply(
            manifests.idle_client(PROBE, name, image=mesh.spec.workload_image, account=CLIENT, version="probe")
        )
        start = time.monotonic()
        try:
            got_ready = remote.wait_ready(PROBE, TEST_NAMESPACE, timeout=mesh.convergence_deadline)
            waited = time.monotonic() - start
            pods = [p for p in remote.pods(TEST_NAMESPACE, {"app": PROBE}) if not p.terminating]
        finally:
            remote.delete("Deployment", PROBE, TEST_NAMESPACE)
        if not pods:
            state = "not created"
        elif not pods[0].has_sidecar:
            state = "no sidecar"
        else:
            state = f"injected as {pods[0].proxy_cluster or name}"
        shown = f"a new pod of {name}: {state}{'' if not pods else ', ready' if got_ready else ', not ready'}"
        want_state = f"injected as {claims}" if created else "not created"
        if state == want_state and (not pods or got_ready == ready):
            return shown, None
        want = f"{want_state} and {'ready' if ready else 'never ready'}" if created else "never created"
        return shown, f"{shown} after {waited:.0f} s, expected {want}"

    return shows


def _all_of(*observers: Callable[[Mesh], tuple[str, str | None]]) -> Callable[[Mesh], tuple[str, str | None]]:
    """Every observer's showing, in turn; the problems of those that did not show what they must."""

    def shows(mesh: Mesh) -> tuple[str, str | None]:
        seen = [observer(mesh) for observer in observers]
        problems = [problem for _, problem in seen if problem]
        return "; ".join(shown for shown, _ in seen), "; ".join(problems) or None

    return shows


def _misaddress_external_istiod(mesh: Mesh, saved: dict[str, Any]) -> None:
    """The external istiod's mesh config naming another discovery address than the one the data-plane clusters
    dial (the config cluster's east-west gateway for its ingress gateway), istiod restarted: istiod names its
    serving certificate after that address (``getDNSNames``), so every proxy that reconnects fails to verify it
    ("x509: certificate is valid for <that address>, not <the one dialled>", seen on host), and new pods are
    given that address."""
    external, config = _external_name(mesh.spec), mesh.spec.config_cluster(target(mesh.spec))
    wrong = sorted(ingress_addresses(mesh[config].get("Service", EASTWEST_GATEWAY, ISTIO_SYSTEM)))
    if not wrong:
        raise BackendError(f"{config}: its east-west gateway has no address to misdirect the discovery address to")
    _save(mesh, saved, "mesh", external, "ConfigMap", "istio", ISTIO_SYSTEM)
    config_map = mesh[external].get("ConfigMap", "istio", ISTIO_SYSTEM) or {}
    mesh_config = yaml.safe_load((config_map.get("data") or {}).get("mesh") or "{}") or {}
    mesh_config.setdefault("defaultConfig", {})["discoveryAddress"] = f"{wrong[0]}:15012"
    mesh[external].patch("ConfigMap", "istio", ISTIO_SYSTEM, {"data": {"mesh": yaml.safe_dump(mesh_config)}})
    _restart_istiod(mesh, external)


def _restore_external_mesh_config(mesh: Mesh, saved: dict[str, Any]) -> None:
    _restore(mesh, saved, "mesh")
    _restart_istiod(mesh, _external_name(mesh.spec))


CATALOG: list[Misconfiguration] = [
    Misconfiguration(
        "second-root-ca",
        "one cluster's cacerts holds a different root (istiod, gateways and workloads restarted)",
        [Stage("second root in cacerts", _second_root, lambda s: _both(s, TLS_FAILURES), "root-mismatch")],
        _restored("cacerts"),
        _multi_primary_only(
            "in primary-remote one istiod signs for every cluster: a remote's cacerts is not used",
            "the external istiod alone signs for every cluster: no data-plane cluster has a CA of its own",
        ),
    ),
    Misconfiguration(
        "cacerts-after-install",
        "Istio installed before cacerts: istiod on its self-signed CA; cacerts added later",
        [
            Stage(
                "istiod runs its self-signed CA",
                _install_before_cacerts,
                lambda s: _both(s, TLS_FAILURES),
                "cacerts-missing",
            ),
            Stage(
                "cacerts added, istiod restarted, workloads not",
                _add_cacerts_restart_istiod,
                lambda s: _both(s, TLS_FAILURES),
                "stale-workload-certificate",
            ),
            Stage("gateways and workloads restarted", _restart_target_proxies, lambda s: _both(s, OK), None),
        ],
        _restored("cacerts"),
        _multi_primary_only(
            "in primary-remote every cluster gets its certificates from the one istiod, so they still share its root",
            "every cluster gets its certificates from the one external istiod, so they still share its root",
        ),
    ),
    Misconfiguration(
        "missing-remote-secret",
        "one cluster has no remote secret for the other (one direction)",
        [
            Stage(
                "remote secret deleted",
                _drop_remote_secret,
                lambda s: _one_way(s, frozenset({Symptom.NO_HEALTHY_UPSTREAM})),
                "remote-secret-missing",
            )
        ],
        _restore_remote_secrets,
    ),
    Misconfiguration(
        "missing-remote-secrets",
        "neither cluster has a remote secret for the other (both directions)",
        [
            Stage(
                "both remote secrets deleted",
                _drop_both_remote_secrets,
                lambda s: _both(s, frozenset({Symptom.NO_HEALTHY_UPSTREAM})),
                "remote-secret-missing",
            )
        ],
        _restore_remote_secrets,
        _multi_primary_only(
            "primary-remote has a single remote secret (the remote's, in the primary)",
            "the external istiod alone holds remote secrets (the remotes', in its own cluster)",
        ),
    ),
    Misconfiguration(
        "loopback-remote-secret",
        "a remote secret whose kubeconfig points at https://127.0.0.1 (the classic kind mistake)",
        [
            # Istio keeps the cluster the secret's previous kubeconfig reached until the new one syncs
            # (addRemoteConfig, pkg/kube/multicluster/secretcontroller.go): nothing breaks yet.
            Stage(
                "remote secret replaced by one for 127.0.0.1",
                _loopback_remote_secret,
                lambda s: _both(s, OK),
                "remote-secret-loopback",
                change=Change(
                    (1, 30),
                    "istio/istio#58567: an updated remote secret keeps the old cluster until the new one syncs; "
                    "before, the old one stopped at once",
                    lambda s: _one_way(s, frozenset({Symptom.NO_HEALTHY_UPSTREAM})),
                ),
            ),
            Stage(
                "istiod restarted (it has only the 127.0.0.1 server)",
                _restart_holder_istiod,
                lambda s: _one_way(s, frozenset({Symptom.NO_HEALTHY_UPSTREAM})),
                "remote-secret-loopback",
            ),
        ],
        _restore_remote_secrets,
    ),
    Misconfiguration(
        "no-cross-network-gateway",
        "no cross-network-gateway (expose-services.yaml) for a cluster's east-west gateway",
        [
            Stage(
                "cross-network-gateway deleted",
                _drop_cross_network_gateway,
                _cross_network_expect,
                "cross-network-gateway-missing",
            )
        ],
        _restore_cross_network_gateway,
    ),
    Misconfiguration(
        "missing-network-label",
        "istio-system has no topology.istio.io/network label, and then the pods have none either",
        [
            # istiod reads an endpoint's network from its pod's label first, which the injector writes
            # from values.global.network: the namespace label alone changes nothing (seen on host).
            Stage(
                "istio-system's network label removed",
                _drop_network_label,
                lambda s: _both(s, OK),
                "network-label-missing",
            ),
            Stage(
                "the pods' network labels removed too (as injected without values.global.network)",
                _drop_pod_network_labels,
                _network_label_expect,
                "network-label-missing",
            ),
        ],
        _restore_network_label,
    ),
    Misconfiguration(
        "different-trust-domains",
        "the clusters use different trust domains",
        # Each client expects the server's SPIFFE ID in the server's own trust domain (istiod reads each
        # cluster's mesh config through its remote secret, Istio 1.29 on) and accepts it; the server accepts client
        # certificates only of its own trust domain (prefix match, pilot/pkg/security/model/
        # authentication.go) and closes the connection after the TLS 1.3 handshake: "connection termination".
        [
            Stage(
                "trust domain changed",
                _other_trust_domain,
                _trust_domain_expect,
                "trust-domain-mismatch",
                change=Change(
                    (1, 29),
                    "istio/istio#58455: a remote cluster's pods are named in that cluster's trust domain; before, "
                    "in istiod's own, so each client refused the other cluster's server",
                    lambda s: _both(s, TLS_FAILURES),
                ),
            )
        ],
        _restored("mesh"),
        _multi_primary_only(
            "in primary-remote the one istiod signs every identity in its own trust domain",
            "the one external istiod signs every identity in its own trust domain",
        ),
    ),
    Misconfiguration(
        "incomplete-cacerts",
        "cacerts misses a file (ca-key.pem)",
        [
            Stage(
                "ca-key.pem removed, istiod pod replaced",
                _incomplete_cacerts,
                lambda s: _both(s, OK),
                "cacerts-incomplete",
                istiod_ready=False,
            )
        ],
        _repair_cacerts,
    ),
    Misconfiguration(
        "service-only-where-it-runs",
        "a Service exists only in the cluster where its pods run",
        [
            Stage(
                "Service deleted from the other cluster",
                _service_only_where_it_runs,
                lambda s: [Expect(other(s), target(s), frozenset({Symptom.NAME_RESOLUTION}))],
                "service-missing",
            )
        ],
        _restore_service,
    ),
    Misconfiguration(
        "strict-mtls-outside-caller",
        "PeerAuthentication STRICT with a caller outside the mesh",
        [
            Stage(
                "STRICT, caller without sidecar",
                _strict_with_outside_caller,
                lambda s: _outside_expect(s, frozenset({Symptom.CONNECTION_RESET, Symptom.CONNECTION_REFUSED})),
                "peer-authentication-strict",
            )
        ],
        _cleanup_outside,
    ),
    # Primary-remote's own: the ways a remote's control plane (its primary's istiod) goes missing. A proxy
    # cut off from istiod keeps its last configuration and its certificate, so calls go on; what breaks is
    # every change after (new endpoints, policies, certificate renewal, injection of new pods).
    Misconfiguration(
        "istiod-not-exposed",
        "the primary does not expose istiod through its east-west gateway (no expose-istiod.yaml)",
        [
            Stage(
                "istiod-gateway and istiod-vs deleted, istiod restarted",
                _drop_expose_istiod,
                lambda s: _both(s, OK),
                "istiod-not-exposed",
                shows=_remote_proxies_become(_remotes),  # every remote reaches istiod through that gateway
            )
        ],
        _restore_expose_istiod,
        _primary_remote_only,
        healed=_remote_proxies_become(lambda spec: []),
    ),
    Misconfiguration(
        "wrong-remote-pilot-address",
        "the remote's remotePilotAddress is not the primary's east-west gateway (its istiod EndpointSlice)",
        [
            Stage(
                "the remote's istiod EndpointSlice names another address, istiod restarted",
                _misdirect_remote_istiod,
                lambda s: _both(s, OK),
                "remote-pilot-address-wrong",
                shows=_remote_proxies_become(lambda spec: [target(spec)]),  # the other remotes keep theirs
            )
        ],
        _restore_slices,
        _primary_remote_only,
        healed=_remote_proxies_become(lambda spec: []),
    ),
    Misconfiguration(
        "missing-control-plane-clusters",
        "the remote's istio-system has no topology.istio.io/controlPlaneClusters annotation",
        [
            Stage(
                "annotation removed, istiod restarted",
                _drop_control_plane_annotation,
                lambda s: _both(s, OK),
                "control-plane-clusters-missing",
                shows=_new_namespace_gets_root_cert(expected=False),
            )
        ],
        _restore_control_plane_annotation,
        _led_remotely,
        healed=_new_namespace_gets_root_cert(expected=True),
    ),
]


CATALOG += [
    # A remote's pods injected as another cluster: running pods keep working, no new pod starts.
    Misconfiguration(
        "wrong-injection-path",
        "the remote's injection webhook names another cluster (the config cluster's injectionPath reused)",
        [
            Stage(
                "the remote's webhooks call /inject/cluster/<other>/net/<other's network>",
                _misname_injection,
                lambda s: _both(s, OK),
                "injection-path-wrong",
                shows=_new_remote_pod(ready=False, injected_as=other),
            )
        ],
        _restore_webhooks,
        _led_remotely,
        healed=_new_remote_pod(ready=True),
    ),
]


CATALOG += [
    # An external control plane's own: its istiod unreachable, or unable to read the mesh. As in primary-remote,
    # a proxy cut off keeps its last configuration and certificate: calls go on; every change after breaks.
    Misconfiguration(
        "external-istiod-not-exposed",
        "the external cluster's ingress gateway does not route 15012/15017 to the external istiod (no external-istiod-gw.yaml)",
        [
            Stage(
                "external-istiod-gw and external-istiod-vs deleted, istiod restarted",
                _drop_external_routes,
                lambda s: _both(s, OK),
                "external-istiod-not-exposed",
                shows=_remote_proxies_become(_served),  # every data-plane cluster reaches istiod through it
            )
        ],
        _restore_external_routes,
        _external_only,
        healed=_remote_proxies_become(lambda spec: []),
    ),
    Misconfiguration(
        "wrong-discovery-address",
        "the external istiod's mesh config names another discovery address than the one the data-plane clusters dial",
        [
            Stage(
                "defaultConfig.discoveryAddress names the config cluster's east-west gateway, istiod restarted",
                _misaddress_external_istiod,
                lambda s: _both(s, OK),
                "discovery-address-wrong",
                # Its certificate names the wrong address: every proxy is cut off, no new pod gets ready.
                shows=_all_of(_remote_proxies_become(_served), _new_remote_pod(ready=False)),
            )
        ],
        _restore_external_mesh_config,
        _external_only,
        healed=_all_of(_remote_proxies_become(lambda spec: []), _new_remote_pod(ready=True)),
    ),
    Misconfiguration(
        "gateway-certificate-wrong-name",
        "the external cluster's ingress gateway terminates TLS with a certificate for a name the data-plane clusters do not dial",
        [
            Stage(
                f"external-istiod-gw terminating TLS with a certificate for {UNDIALLED_NAME}, istiod restarted",
                _misname_gateway_certificate,
                lambda s: _both(s, OK),
                "gateway-certificate-wrong-name",
                # Every proxy refuses the gateway's certificate on reconnecting; the API server refuses it too.
                shows=_all_of(_remote_proxies_become(_served), _new_remote_pod(ready=False, created=False)),
            )
        ],
        _restore_gateway_passthrough,
        _external_only,
        healed=_all_of(_remote_proxies_become(lambda spec: []), _new_remote_pod(ready=True)),
    ),
    Misconfiguration(
        "config-cluster-without-configcluster",
        "the config cluster installed without global.configCluster: the external istiod reads it as the reader account",
        [
            Stage(
                f"istio-kubeconfig made for {READER}, istiod's pod replaced",
                _config_secret_as_reader,
                lambda s: _both(s, OK),
                "config-secret-wrong-account",
                # The replacement never gets ready: every proxy is cut off, and no pod can be injected.
                shows=_all_of(_remote_proxies_become(_served), _new_remote_pod(ready=False, created=False)),
            )
        ],
        _restore_config_secret,
        _external_only,
        healed=_all_of(_remote_proxies_become(lambda spec: []), _new_remote_pod(ready=True)),
    ),
    Misconfiguration(
        "missing-config-secret",
        "the external istiod has no istio-kubeconfig Secret (the config cluster's credentials)",
        [
            Stage(
                "istio-kubeconfig deleted, istiod pod replaced",
                _drop_config_secret,
                _config_secret_expect,
                "config-secret-missing",
            )
        ],
        _restore_config_secret,
        _external_only,
    ),
]


def entry(name: str) -> Misconfiguration:
    for item in CATALOG:
        if item.name == name:
            return item
    raise KeyError(f"no misconfiguration {name!r}: use one of {', '.join(m.name for m in CATALOG)}")
