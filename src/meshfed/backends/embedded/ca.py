"""istiod's CA, emulated: which CA it signs with, decided at start-up.

* CA choice at start-up (``createIstioCA`` in ``pilot/pkg/bootstrap/istio_ca.go``): the four ``cacerts``
  files (or ``tls.crt``/``tls.key``/``ca.crt``) of the Secret mounted at ``/etc/cacerts`` (from the cluster
  istiod's pod runs in) -> plugged-in CA; none -> a self-signed root kept in Secret ``istio-ca-secret`` of its
  kube client's cluster (created if missing); some -> istiod does not start ("incomplete signing CA bundle
  detected").
* The serving certificate on 15012 and 15017 is signed by that CA (``PluginCA.sign_server``) for the names
  ``getDNSNames`` (``pilot/pkg/bootstrap/server.go``) gives (see istiod.py).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from meshfed.backends.embedded.sources import IstiodStartError
from meshfed.backends.embedded.store import ObjectStore
from meshfed.pki import PluginCA, bundle_from_secret, validate_bundle
from meshfed.pki.authority import CERT_CHAIN, new_root
from meshfed.pki.certs import cert_pem, key_pem, load_certs, load_key

# Problems that make istiod's CA constructor fail (NewVerifiedKeyCertBundleFromFile): it does not start.
_FATAL_BUNDLE_PROBLEMS = {
    "incomplete-bundle",
    "unreadable",
    "key-mismatch",
    "not-signed-by-root",
    "expired",
    "not-yet-valid",
}


@dataclass(frozen=True)
class CAChoice:
    ca: PluginCA
    plugged: bool
    root_bundle: bytes  # root-cert.pem as read, to compare on reload


def choose_ca(home: ObjectStore, main: ObjectStore, namespace: str, trust_domain: str, now: Any) -> CAChoice:
    """istiod's CA at start-up, decided as ``createIstioCA`` decides it: ``home`` holds the mounted cacerts,
    ``main`` (its kube client's cluster) the self-signed root."""
    secret = home.get("Secret", "cacerts", namespace)
    files = bundle_from_secret(secret) if secret else {}
    report = validate_bundle(files, source="cacerts", now=now)
    codes = {finding.code for finding in report.findings}
    if "no-ca-files" in codes:
        return _self_signed(main, namespace, trust_domain, now)
    if "incomplete-bundle" in codes:
        raise IstiodStartError("failed to create an istiod CA: incomplete signing CA bundle detected")
    fatal = [f for f in report.findings if f.code in _FATAL_BUNDLE_PROBLEMS]
    if fatal:
        raise IstiodStartError(f"failed to create an istiod CA: {fatal[0].file}: {fatal[0].problem}")
    assert report.signing_cert is not None and report.key is not None
    ca = PluginCA(report.signing_cert, report.key, report.roots, report.chain)
    return CAChoice(ca, plugged=True, root_bundle=files[report.layout.root])


def _self_signed(store: ObjectStore, namespace: str, trust_domain: str, now: Any) -> CAChoice:
    """The root kept in ``istio-ca-secret`` (created when missing): ``O=<trust domain>``, 10 years."""
    secret = store.get("Secret", "istio-ca-secret", namespace)
    if secret is None:
        root = new_root(key_type="rsa", rsa_bits=2048, organization=trust_domain, common_name="", days=3650, now=now)
        data = {
            "ca-cert.pem": cert_pem(root.cert),
            "ca-key.pem": key_pem(root.key),
            CERT_CHAIN: b"",
            "root-cert.pem": b"",
        }
        store.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "istio-ca-secret", "namespace": namespace},
                "type": "istio.io/ca-root",
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
            }
        )
        cert, key = root.cert, root.key
    else:
        files = bundle_from_secret(secret)
        cert = load_certs(files["ca-cert.pem"], "istio-ca-secret ca-cert.pem")[0]
        key = load_key(files["ca-key.pem"], "istio-ca-secret ca-key.pem")
    return CAChoice(PluginCA(cert, key, (cert,), (cert,)), plugged=False, root_bundle=cert_pem(cert))
