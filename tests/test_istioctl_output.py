"""Real istioctl and Envoy outputs are read correctly (reference files from Istio's own test data)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from meshfed.backends.base import BackendError
from meshfed.backends.istioctl import (
    parse_cluster_identities,
    parse_proxy_status,
    parse_remote_clusters,
    parse_secret_dump,
)
from meshfed.pki.certs import fingerprint
from tests.istio_reference import reference


def _dump() -> str:
    return reference("envoy-secrets-config-dump.json")


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _table_serials() -> dict[str, int]:
    """SERIAL NUMBER per secret, from the table istioctl prints for the same dump."""
    serials = {}
    for row in reference("istioctl-proxy-config-secret.txt").splitlines()[1:]:
        found = re.search(r"\b[0-9a-f]{32}\b", row)
        if found:
            serials[row.split()[0]] = int(found.group(0), 16)
    return serials


@pytest.mark.parametrize("style", ["snake_case (Envoy admin)", "camelCase (istioctl -o json)"])
def test_secret_dump_gives_the_chain_and_the_roots(style: str) -> None:
    # Envoy's /config_dump wraps the SecretsConfigDump in "configs"; istioctl prints it bare, in camelCase.
    text = _dump() if style.startswith("snake") else json.dumps(_camel(json.loads(_dump())["configs"][0]))
    certs = parse_secret_dump(text)
    serials = _table_serials()
    assert certs.chain[0].serial_number == serials["default"]
    assert certs.trusted_roots[0].serial_number == serials["ROOTCA"]
    assert fingerprint(certs.trusted_roots[0]).count(":") == 31


def test_a_proxy_without_secrets_is_explained() -> None:
    with pytest.raises(
        BackendError, match=r"no active default and ROOTCA secrets \(it has: none\): is it connected to istiod"
    ):
        parse_secret_dump(json.dumps({"configs": [{"dynamicActiveSecrets": []}]}))
    with pytest.raises(BackendError, match="printed no JSON"):
        parse_secret_dump("Error: no pod found")


@pytest.mark.parametrize("style", ["snake_case (Envoy admin)", "camelCase (istioctl -o json)"])
def test_cluster_dump_gives_the_identities_a_proxy_expects_of_a_service(style: str) -> None:
    # Envoy's /config_dump has the clusters in "configs"; istioctl proxy-config cluster -o json prints a list.
    dump = json.loads(reference("envoy-clusters-config-dump.json"))
    clusters = [entry["cluster"] for config in dump["configs"] for entry in config.get("dynamic_active_clusters", [])]
    text = json.dumps(dump) if style.startswith("snake") else json.dumps(_camel(clusters))
    expected = {
        "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
        "spiffe://cluster.local/ns/default/sa/default",
    }
    assert parse_cluster_identities(text, "productpage.default.svc.cluster.local") == expected
    with pytest.raises(BackendError, match=r"no outbound cluster for reviews\.default\.svc\.cluster\.local"):
        parse_cluster_identities(text, "reviews.default.svc.cluster.local")


def test_remote_clusters_table() -> None:
    text = (
        "NAME          SECRET                                        STATUS     ISTIOD\n"
        "cluster-a                                                   synced     istiod-7b5c9d8f6-abcde\n"
        "cluster-b     istio-system/istio-remote-secret-cluster-b    Timeout    istiod-7b5c9d8f6-abcde\n"
    )
    statuses = parse_remote_clusters(text)
    assert [(s.name, s.status) for s in statuses] == [("cluster-a", "synced"), ("cluster-b", "timeout")]
    assert statuses[1].secret == "istio-system/istio-remote-secret-cluster-b"
    with pytest.raises(BackendError, match="no NAME SECRET STATUS table"):
        parse_remote_clusters("error: context not found")


def test_proxy_status_table_of_recent_istio() -> None:
    """The table since Istio 1.2x (tabwriter, padding 5): NAME CLUSTER ISTIOD VERSION SUBSCRIBED TYPES."""
    text = (
        "NAME                                                  CLUSTER        ISTIOD                      VERSION     SUBSCRIBED TYPES\n"
        "client-7d4f74889d-mb5dh.meshfed                       cluster-a      istiod-7d4f74889d-xk2lp     1.30.3      4 (CDS,LDS,EDS,RDS)\n"
        "istio-eastwestgateway-b6cd68585-8mnj7.istio-system    cluster-b      istiod-7d4f74889d-xk2lp     1.30.3      4 (CDS,LDS,EDS,RDS)\n"
    )
    proxies = parse_proxy_status(text)
    assert [(p.pod, p.namespace, p.cluster, p.istiod) for p in proxies] == [
        ("client-7d4f74889d-mb5dh", "meshfed", "cluster-a", "istiod-7d4f74889d-xk2lp"),
        ("istio-eastwestgateway-b6cd68585-8mnj7", "istio-system", "cluster-b", "istiod-7d4f74889d-xk2lp"),
    ]


def _tabwriter(rows: list[list[str]]) -> str:
    """What Go's tabwriter prints with istioctl's settings (minwidth 0, padding 5, last cell unpadded)."""
    widths = [max(len(row[i]) for row in rows) + 5 for i in range(len(rows[0]) - 1)]
    return "".join("".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + row[-1] + "\n" for row in rows)


def test_proxy_status_table_with_sync_columns() -> None:
    """The older table, whose cells hold spaces ("NOT SENT", "STALE (Never Acknowledged)")."""
    text = _tabwriter(
        [
            ["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"],
            [
                "echo-5d9c8b7f6-x2x9q.meshfed",
                "Kubernetes",
                "SYNCED",
                "STALE (Never Acknowledged)",
                "SYNCED",
                "NOT SENT",
                "NOT SENT",
                "istiod-6c4f9-abcde",
                "1.19.3",
            ],
            [
                "client-6f7d9-q8w7e.meshfed",
                "",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "SYNCED",
                "NOT SENT",
                "istiod-6c4f9-abcde",
                "1.19.3",
            ],
        ]
    )
    proxies = parse_proxy_status(text)
    assert [(p.pod, p.namespace, p.cluster, p.istiod) for p in proxies] == [
        ("echo-5d9c8b7f6-x2x9q", "meshfed", "Kubernetes", "istiod-6c4f9-abcde"),
        ("client-6f7d9-q8w7e", "meshfed", "", "istiod-6c4f9-abcde"),
    ]
    with pytest.raises(BackendError, match=r"no NAME \.\.\. ISTIOD table"):
        parse_proxy_status('Error: no running Istio pods in "istio-system"')
