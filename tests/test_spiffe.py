from __future__ import annotations

import re

import pytest

from meshfed.pki import SpiffeId, SpiffeIdError


def test_workload_id_round_trips() -> None:
    identity = SpiffeId.for_workload("cluster.local", "meshfed", "client")
    assert str(identity) == "spiffe://cluster.local/ns/meshfed/sa/client"
    assert SpiffeId.parse(str(identity)) == identity
    assert (identity.namespace, identity.service_account) == ("meshfed", "client")


def test_non_workload_path_has_no_namespace() -> None:
    identity = SpiffeId.parse("spiffe://example.org/some/workload")
    assert identity.namespace is None and identity.service_account is None


def test_trust_domain_only() -> None:
    assert SpiffeId.parse("spiffe://cluster.local") == SpiffeId("cluster.local", "")


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("http://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("spiffe:///ns/a/sa/b", "trust domain is missing"),
        ("spiffe://Cluster.Local/ns/a/sa/b", "may hold only lower-case"),
        ("spiffe://cluster.local:8080/ns/a", "may hold only lower-case"),
        ("spiffe://user@cluster.local/ns/a", "may hold only lower-case"),
        ("spiffe://cluster.local/ns//sa/b", "empty, '.' or '..' segment"),
        ("spiffe://cluster.local/ns/a/sa/b/", "empty, '.' or '..' segment"),
        ("spiffe://cluster.local/ns/../sa/b", "empty, '.' or '..' segment"),
        ("spiffe://cluster.local/ns/a b/sa/c", "may hold only letters"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "query or fragment"),
        ("spiffe://cluster.local/ns/a/sa/b#f", "query or fragment"),
        ("spiffe://cluster.local/" + "a" * 2100, "longer than 2048 bytes"),
    ],
)
def test_invalid_ids_are_refused_with_the_rule(text: str, rule: str) -> None:
    with pytest.raises(SpiffeIdError, match=re.escape(rule)):
        SpiffeId.parse(text)
