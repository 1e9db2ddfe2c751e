"""Reading what ``istioctl`` prints, for the backends that run against real clusters.

* ``istioctl proxy-config secret <pod>.<ns> -o json``: an Envoy SecretsConfigDump, printed bare by
  istioctl in camelCase (``PrintSecretDump``), inside ``configs`` and in snake_case by Envoy's admin
  API; all are read. The proxy's chain is the
  ``default`` secret's ``tlsCertificate.certificateChain.inlineBytes``, its roots the ``ROOTCA``
  secret's ``validationContext.trustedCa.inlineBytes`` (base64 PEM). The private key is never read.
* ``istioctl proxy-config cluster <pod>.<ns> --fqdn <host> -o json``: a list of Envoy clusters (camelCase), or
  Envoy's ``dynamic_active_clusters`` (snake_case); the identities a proxy expects of a service's servers are
  the ``exact`` values of ``matchSubjectAltNames`` in its outbound clusters' TLS contexts.
* ``istioctl proxy-status``: a table with NAME (``<pod>.<namespace>``), CLUSTER and ISTIOD columns.
* ``istioctl remote-clusters``: a table ``NAME SECRET STATUS ISTIOD [REVISION]``; status values are
  lower case in Istio's source (synced, syncing, timeout, closed) and read case-insensitively.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
from collections.abc import Mapping
from typing import Any

from meshfed.backends.base import BackendError, ConnectedProxy, ProxyCerts, RemoteClusterStatus
from meshfed.pki import PemError, load_certs


def _field(obj: Mapping[str, Any], camel: str) -> Any:
    """A field by its camelCase name or its snake_case twin."""
    if camel in obj:
        return obj[camel]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in camel)
    return obj.get(snake)


def _inline_pem(secret: Mapping[str, Any], *path: str) -> bytes:
    node: Any = secret
    for name in path:
        node = _field(node or {}, name)
    if not node:
        raise BackendError(f"the secret dump has no {'.'.join(path)}")
    try:
        return base64.b64decode(str(node), validate=True)
    except binascii.Error:
        raise BackendError(f"the secret dump's {'.'.join(path)} is not base64") from None


def parse_secret_dump(text: str) -> ProxyCerts:
    """The certificates an Envoy holds, from ``istioctl proxy-config secret -o json``."""
    try:
        dump = json.loads(text)
    except ValueError as error:
        raise BackendError(f"istioctl proxy-config secret printed no JSON ({error})") from None
    secrets: dict[str, Mapping[str, Any]] = {}
    # istioctl prints the SecretsConfigDump itself; Envoy's /config_dump wraps it in "configs".
    dumps = dump.get("configs") or [dump] if isinstance(dump, dict) else []
    for config in dumps:
        for entry in _field(config, "dynamicActiveSecrets") or []:
            secrets[str(entry.get("name"))] = entry.get("secret") or {}
    if "default" not in secrets or "ROOTCA" not in secrets:
        found = ", ".join(sorted(secrets)) or "none"
        raise BackendError(
            f"the proxy has no active default and ROOTCA secrets (it has: {found}): is it connected to istiod?"
        )
    try:
        chain = load_certs(
            _inline_pem(secrets["default"], "tlsCertificate", "certificateChain", "inlineBytes"), "default"
        )
        roots = load_certs(_inline_pem(secrets["ROOTCA"], "validationContext", "trustedCa", "inlineBytes"), "ROOTCA")
    except PemError as error:
        raise BackendError(f"the proxy's certificates cannot be read: {error}") from None
    return ProxyCerts(tuple(chain), tuple(roots))


def _subject_alt_names(node: Any) -> list[str]:
    """Every ``exact`` SAN matcher in a cluster's configuration, wherever its TLS contexts put them."""
    if isinstance(node, list):
        return [name for item in node for name in _subject_alt_names(item)]
    if not isinstance(node, dict):
        return []
    found = [
        str(m["exact"]) for m in _field(node, "matchSubjectAltNames") or [] if isinstance(m, dict) and "exact" in m
    ]
    return found + [name for value in node.values() for name in _subject_alt_names(value)]


def parse_cluster_identities(text: str, fqdn: str) -> frozenset[str]:
    """The SPIFFE IDs a proxy accepts from the servers of ``fqdn``, from ``istioctl proxy-config cluster -o json``."""
    try:
        dump = json.loads(text)
    except ValueError as error:
        raise BackendError(f"istioctl proxy-config cluster printed no JSON ({error})") from None
    clusters = dump if isinstance(dump, list) else []
    for config in (dump.get("configs") or []) if isinstance(dump, dict) else []:
        clusters += [entry.get("cluster") or {} for entry in _field(config, "dynamicActiveClusters") or []]
    outbound = [c for c in clusters if isinstance(c, dict) and str(c.get("name", "")).startswith("outbound|")]
    mine = [c for c in outbound if str(c.get("name", "")).split("|")[-1] == fqdn]
    if not mine:
        raise BackendError(f"the proxy has no outbound cluster for {fqdn}: is it connected to istiod?")
    return frozenset(name for cluster in mine for name in _subject_alt_names(cluster))


def parse_remote_clusters(text: str) -> list[RemoteClusterStatus]:
    """The rows of ``istioctl remote-clusters``."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].split()[:4] != ["NAME", "SECRET", "STATUS", "ISTIOD"]:
        raise BackendError("istioctl remote-clusters printed no NAME SECRET STATUS table")
    header = lines[0]
    starts = [header.index(column) for column in ("NAME", "SECRET", "STATUS", "ISTIOD")]
    statuses = []
    for line in lines[1:]:
        # Cells are read by column position: the config cluster's own row has an empty SECRET.
        name, secret, status = (line[start:end].strip() for start, end in itertools.pairwise(starts))
        statuses.append(RemoteClusterStatus(name, secret, status.lower()))
    return statuses


def parse_proxy_status(text: str) -> list[ConnectedProxy]:
    """The rows of ``istioctl proxy-status``: ``NAME CLUSTER ISTIOD VERSION SUBSCRIBED TYPES`` since 1.2x,
    ``NAME CLUSTER CDS LDS EDS RDS ECDS ISTIOD VERSION`` before; NAME is ``<pod>.<namespace>``. Cells
    are read by the header's column positions (a cell may hold spaces, e.g. ``NOT SENT``)."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = next((line for line in lines if line.split()[:1] == ["NAME"] and " ISTIOD " in f" {line} "), None)
    if header is None:
        raise BackendError("istioctl proxy-status printed no NAME ... ISTIOD table")
    columns = header.split()
    starts = {name: header.index(name) for name in ("NAME", "CLUSTER", "ISTIOD") if name in columns}
    order = sorted(header.index(name) for name in columns if name != "TYPES")  # "SUBSCRIBED TYPES" is one

    def cell(line: str, name: str) -> str:
        if name not in starts:
            return ""
        start = starts[name]
        end = next((o for o in order if o > start), len(line))
        return line[start:end].strip()

    proxies = []
    for line in lines[lines.index(header) + 1 :]:
        pod, _, namespace = cell(line, "NAME").rpartition(".")
        if pod:
            proxies.append(ConnectedProxy(pod, namespace, cell(line, "CLUSTER"), cell(line, "ISTIOD")))
    return proxies
