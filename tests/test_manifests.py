"""Every object the suite sends is valid Kubernetes, and the Istio objects are Istio's samples.

Kubernetes objects are validated with kubernetes-validate against the schemas of the Kubernetes
versions Istio 1.30 supports (strict: no unknown field). The Istio objects are compared with Istio's
own samples (see :mod:`tests.istio_reference`: the Istio source the host backend builds, else the reference
folder beside the project; skipped with the reason when neither is there, as in a fresh user's clone).
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from meshfed import manifests
from meshfed.install import plan
from meshfed.pki import create_mesh_pki
from meshfed.topology import MeshSpec, Topology
from tests.istio_reference import reference

KUBERNETES_VERSIONS = ["1.33", "1.35"]
CORE_KINDS = {"Namespace", "Secret", "ConfigMap", "ServiceAccount", "Service", "Deployment"}


def every_object(topology: Topology) -> list[dict[str, object]]:
    spec = MeshSpec.default(topology, 3)
    pki = create_mesh_pki(spec.names, key_type="ecdsa")
    objects = [
        obj for step in plan(spec, {n: ca.secret_data() for n, ca in pki.cluster_cas.items()}) for obj in step.objects
    ]
    objects.append(manifests.istio_operator_remote(spec.clusters[1], spec, "127.0.0.1", revision="canary"))
    objects += manifests.client_outside_mesh("cluster-a", "meshfed-outside", "python:3.12.12-slim-bookworm")
    objects.append(manifests.remote_secret("cluster-b", manifests.kubeconfig("cluster-b", "https://172.18.0.3:6443")))
    return objects


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("topology", list(Topology), ids=[t.value for t in Topology])
def test_kubernetes_objects_validate_strictly(topology: Topology, version: str) -> None:
    core = [obj for obj in every_object(topology) if obj["kind"] in CORE_KINDS]
    assert {obj["kind"] for obj in core} == CORE_KINDS
    for obj in core:
        kubernetes_validate.validate(obj, version, strict=True)


def _reference(name: str) -> list[dict[str, object]]:
    return [doc for doc in yaml.safe_load_all(reference(name)) if doc]


def _spec_only(obj: dict[str, object]) -> dict[str, object]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"], "spec": obj["spec"]}  # type: ignore[index]


def test_expose_services_is_istios_sample() -> None:
    [sample] = _reference("expose-services.yaml")
    assert _spec_only(manifests.cross_network_gateway()) == _spec_only(sample)


def test_expose_istiod_is_istios_sample() -> None:
    samples = _reference("expose-istiod.yaml")
    ours = manifests.expose_istiod()
    assert [_spec_only(o)["name"] for o in ours] == [_spec_only(s)["name"] for s in samples]
    assert ours[1]["spec"] == samples[1]["spec"]
    for mine, theirs in zip(ours[0]["spec"]["servers"], samples[0]["spec"]["servers"], strict=True):  # type: ignore[index]
        assert (mine["port"]["number"], mine["tls"], mine["hosts"]) == (
            theirs["port"]["number"],
            theirs["tls"],
            theirs["hosts"],
        )


def test_expose_istiod_for_a_revision_is_istios_template() -> None:
    """``samples/multicluster/expose-istiod-rev.yaml.tmpl``: the one ``*`` Gateway of expose-istiod.yaml, and
    a VirtualService of the revision's own routing both SNIs of its istiod (the template is not in the
    reference folder: it is a Go template)."""
    gateway, route = manifests.expose_istiod("canary")
    assert gateway == manifests.expose_istiod()[0]
    assert route["metadata"]["name"] == "istiod-vs-canary"
    assert route["spec"]["hosts"] == ["*"] and route["spec"]["gateways"] == ["istiod-gateway"]
    sni = ["istiod-canary.istio-system.svc", "istiod-canary.istio-system.svc.cluster.local"]
    assert [(r["match"], r["route"]) for r in route["spec"]["tls"]] == [
        (
            [{"port": port, "sniHosts": sni}],
            [{"destination": {"host": "istiod-canary.istio-system.svc.cluster.local", "port": {"number": target}}}],
        )
        for port, target in ((15012, 15012), (15017, 443))
    ]


@pytest.mark.parametrize(
    ("revision", "sample"),
    [("", "eastwest-gateway-network1.iop.yaml"), ("1-30-3", "eastwest-gateway-network1-rev.iop.yaml")],
)
def test_eastwest_gateway_is_what_gen_eastwest_gateway_prints(revision: str, sample: str) -> None:
    [theirs] = _reference(sample)
    ours = manifests.eastwest_gateway("network1", revision=revision)
    assert ours["spec"] == theirs["spec"]


def test_a_quick_step_is_one_line_of_progress_and_a_long_one_is_said_as_it_starts() -> None:
    import time

    from meshfed.install import timed

    lines: list[str] = []
    with timed("cluster-a: apply", lines.append):
        pass
    assert len(lines) == 1 and lines[0].startswith("cluster-a: apply: done in ")
    lines.clear()
    with timed("cluster-a: istiod", lines.append, every=0.1, quiet=0.05):
        time.sleep(0.3)
    assert lines[0] == "cluster-a: istiod ..."
    assert any(line.startswith("cluster-a: istiod: still running") for line in lines[1:-1])
    assert lines[-1].startswith("cluster-a: istiod: done in ")
