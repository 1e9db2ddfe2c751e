"""A host cluster's certificates and kubeconfigs, made with meshfed's PKI code (as envtest's TinyCA does).

One CA per cluster; the API server's serving certificate (for the node's address, the Service's first
address and the usual names); a service-account signing key; a client certificate per component,
its user and groups in the subject (CN, O) as Kubernetes reads them; one kubeconfig per user. Keys are
written mode 0600 and never printed.
"""

from __future__ import annotations

import base64
import ipaddress
from datetime import timedelta
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshfed.pki.authority import CertAndKey, new_root
from meshfed.pki.certs import cert_pem, key_pem, new_key, signature_hash, utcnow, write_private, write_public

DAYS = 365
# kubeconfig-<name> -> the user it authenticates as and its groups (kubeadm's names); {cluster} is the node's.
KUBECONFIGS = {
    "admin": ("admin", ("system:masters",)),
    "kube-controller-manager": ("system:kube-controller-manager", ()),
    "kube-scheduler": ("system:kube-scheduler", ()),
    "node": ("system:node:{cluster}", ("system:nodes",)),
    "kube-proxy": ("system:kube-proxy", ()),
}


def _leaf(
    ca: CertAndKey, common_name: str, groups: tuple[str, ...], *, server_names: tuple[str, ...] = ()
) -> CertAndKey:
    key = new_key("ecdsa")
    now = utcnow()
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    subject += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, group) for group in groups]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server_names:
        usage.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names: list[x509.GeneralName] = []
        for name in server_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return CertAndKey(builder.sign(ca.key, signature_hash(ca.key)), key)


def _write_pair(folder: Path, name: str, pair: CertAndKey) -> None:
    write_public(folder / f"{name}.crt", cert_pem(pair.cert))
    write_private(folder / f"{name}.key", key_pem(pair.key))


def kubeconfig(cluster: str, server: str, ca_pem: bytes, cert: CertAndKey, user: str) -> str:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
            "users": [
                {
                    # Each cluster's user has its own name: merged with KUBECONFIG=a:b, kubectl keeps the first of
                    # two users of one name, and the second context would authenticate as the first cluster's.
                    "name": f"{cluster}-{user}",
                    "user": {
                        "client-certificate-data": b64(cert_pem(cert.cert)),
                        "client-key-data": b64(key_pem(cert.key)),
                    },
                }
            ],
            "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": f"{cluster}-{user}"}}],
            "current-context": cluster,
        },
        sort_keys=False,
    )


def make(folder: Path, cluster: str, node_address: str, api_service_address: str) -> None:
    """Write ``folder/pki`` and ``folder/kubeconfig-<user>``; an existing set is kept (a kept cluster)."""
    pki = folder / "pki"
    if (pki / "ca.crt").is_file():
        return
    pki.mkdir(parents=True, exist_ok=True)
    ca = new_root(key_type="ecdsa", organization="meshfed", common_name=f"{cluster} kubernetes CA", days=DAYS)
    _write_pair(pki, "ca", ca)
    names = (
        node_address,
        api_service_address,
        "127.0.0.1",
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    )
    _write_pair(pki, "apiserver", _leaf(ca, "kube-apiserver", (), server_names=names))
    signer = new_key("ecdsa")
    write_private(pki / "sa.key", key_pem(signer))
    public = signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_public(pki / "sa.pub", public)
    server = f"https://{node_address}:6443"
    # The API server calls kubelets (exec, port-forward, logs) as a member of system:masters.
    _write_pair(pki, "apiserver-kubelet-client", _leaf(ca, "kube-apiserver-kubelet-client", ("system:masters",)))
    for name, (user, groups) in KUBECONFIGS.items():
        user = user.format(cluster=cluster)
        config = kubeconfig(cluster, server, cert_pem(ca.cert), _leaf(ca, user, groups), user)
        write_private(folder / f"kubeconfig-{name}", config.encode())
