"""Real istioctl and Envoy outputs are read correctly (reference files from Istio's own test data)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from meshfed.backends.base import BackendError
from meshfed.backends.istioctl import parse_remote_clusters, parse_secret_dump
from meshfed.pki.certs import fingerprint

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "istio"


def _dump() -> str:
    path = REFERENCE / "envoy-secrets-config-dump.json"
    if not path.exists():
        pytest.skip(f"Istio's reference data is not here ({REFERENCE})")
    return path.read_text()


def _camel(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): _camel(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_camel(v) for v in obj]
    return obj


def _table_serials() -> dict[str, int]:
    """SERIAL NUMBER per secret, from the table istioctl prints for the same dump."""
    serials = {}
    for row in (REFERENCE / "istioctl-proxy-config-secret.txt").read_text().splitlines()[1:]:
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
