"""TLS for the embedded proxies: real OpenSSL (Python's ssl) with the proxies' real certificates.

Peer verification is done by OpenSSL itself against the roots the proxy trusts, as Envoy's BoringSSL
does it; this module only builds the contexts, reads the SNI of a ClientHello without terminating TLS
(what an AUTO_PASSTHROUGH gateway does), and words a failure the way Envoy words it to the app.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import struct
import tempfile
from datetime import datetime
from pathlib import Path

from cryptography import x509

from meshfed.pki.authority import WorkloadCert
from meshfed.pki.certs import PrivateKey, cert_pem, key_pem, write_private
from meshfed.pki.verify import host_sans


class KeyFolder:
    """A private folder (0700) where each proxy's key is its own file (0600), as OpenSSL needs files.

    Every write gets new file names, so a reader never sees one certificate's chain beside another's
    key, or a half-written file; the folder goes at teardown."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="meshfed-keys-"))
        os.chmod(self.path, 0o700)
        self._writes = itertools.count()

    def write(self, name: str, key: PrivateKey, chain_pem: bytes) -> tuple[Path, Path]:
        serial = next(self._writes)
        key_file = self.path / f"{name}.{serial}.key"
        chain_file = self.path / f"{name}.{serial}.crt"
        write_private(key_file, key_pem(key))
        chain_file.write_bytes(chain_pem)
        return chain_file, key_file

    def remove(self) -> None:
        for item in self.path.iterdir():
            item.unlink()
        self.path.rmdir()


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME: validity is judged by the mesh clock instead (see mesh_time_problem),
# because certificates are dated by the mesh clock, which tests move forward.
NO_CHECK_TIME = 0x200000


def mesh_time_problem(cert_der: bytes | None, now: datetime) -> str | None:
    """OpenSSL's words for a peer certificate outside its validity at mesh time ``now``, else None."""
    if not cert_der:
        return None
    cert = x509.load_der_x509_certificate(cert_der)
    if now < cert.not_valid_before_utc:
        return "certificate is not yet valid"
    if now > cert.not_valid_after_utc:
        return "certificate has expired"
    return None


def contexts(folder: KeyFolder, name: str, cert: WorkloadCert) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client, server) contexts presenting ``cert`` and trusting its roots; the server requires a client
    certificate. Chains are verified by OpenSSL; validity periods by the mesh clock (``mesh_time_problem``)."""
    chain_file, key_file = folder.write(name, cert.key, cert_pem(*cert.chain))
    roots = cert_pem(*cert.trusted_roots).decode()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # Istio matches the SPIFFE URI SAN, not a host name
    client.verify_mode = ssl.CERT_REQUIRED
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    for context in (client, server):
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(chain_file, key_file)
        context.load_verify_locations(cadata=roots)
        context.verify_flags |= NO_CHECK_TIME
    return client, server


def trust_only(roots_pem: bytes) -> ssl.SSLContext:
    """A client context that verifies the server against ``roots_pem`` and the name it is dialled by (a DNS
    name, or an IP address against the certificate's IP SANs, as Go's crypto/tls does for pilot-agent), and
    presents no certificate."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=roots_pem.decode())
    client.verify_flags |= NO_CHECK_TIME
    return client


def go_verify_reason(error: ssl.SSLCertVerificationError, peer_der: bytes | None, host: str) -> str:
    """How Go's crypto/tls (pilot-agent, kube-apiserver) words a failed verification of ``peer_der`` dialled as
    ``host``: a name mismatch names what the certificate is valid for, anything else an unknown authority."""
    if error.verify_code not in (62, 64) or not peer_der:  # X509_V_ERR_HOSTNAME_MISMATCH, _IP_ADDRESS_MISMATCH
        return "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    dns, ips = host_sans(x509.load_der_x509_certificate(peer_der))
    if error.verify_code == 64 and not ips:
        return f"tls: failed to verify certificate: x509: cannot validate certificate for {host} because it doesn't contain any IP SANs"
    valid = [str(ip) for ip in ips] if error.verify_code == 64 else list(dns)
    return f"tls: failed to verify certificate: x509: certificate is valid for {', '.join(valid)}, not {host}"


def peer_certificate(sock: socket.socket, host: str) -> bytes | None:
    """The certificate a TLS server on ``sock`` presents, unverified (to word a failed verification)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with context.wrap_socket(sock, server_hostname=host) as conn:
            return conn.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def read_client_hello(sock: socket.socket, limit: int = 16384) -> tuple[str | None, bytes]:
    """The SNI of the ClientHello at the start of ``sock`` and every byte read to find it."""
    data = b""
    while len(data) < 5:
        chunk = sock.recv(5 - len(data))
        if not chunk:
            return None, data
        data += chunk
    if data[0] != 0x16:  # not a TLS handshake record
        return None, data
    length = struct.unpack("!H", data[3:5])[0]
    while len(data) < 5 + length and len(data) < limit:
        chunk = sock.recv(5 + length - len(data))
        if not chunk:
            break
        data += chunk
    return _sni(data[5 : 5 + length]), data


def _sni(hello: bytes) -> str | None:
    try:
        if hello[0] != 0x01:  # ClientHello
            return None
        pos = 4 + 2 + 32  # handshake header, version, random
        pos += 1 + hello[pos]  # session id
        pos += 2 + struct.unpack("!H", hello[pos : pos + 2])[0]  # cipher suites
        pos += 1 + hello[pos]  # compression methods
        end = pos + 2 + struct.unpack("!H", hello[pos : pos + 2])[0]
        pos += 2
        while pos + 4 <= end:
            ext_type, ext_len = struct.unpack("!HH", hello[pos : pos + 4])
            pos += 4
            if ext_type == 0:  # server_name: list length, type (0 = host_name), name length, name
                name_len = struct.unpack("!H", hello[pos + 3 : pos + 5])[0]
                return hello[pos + 5 : pos + 5 + name_len].decode("ascii")
            pos += ext_len
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    return None


# BoringSSL packs errors as (library << 24) | reason; Envoy prints "<code>:SSL routines:OPENSSL_internal:<REASON>".
_SSL_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": 125,
    "SSLV3_ALERT_BAD_CERTIFICATE": 1042,
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": 1045,
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": 1046,
    "TLSV1_ALERT_UNKNOWN_CA": 1048,
    "TLSV1_ALERT_DECRYPT_ERROR": 1051,
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": 1116,
}
_PREFIX = "upstream connect error or disconnect/reset before headers. "


def envoy_reset_text(error: BaseException, retried: bool) -> str:
    """The 503 body Envoy gives the app when the upstream connection or handshake failed. Envoy 1.39 on
    (and 1.38 backports) keeps the transport failure reason out of it (envoyproxy/envoy#44746), as
    real Istio with Envoy 1.40 showed: the reason goes to the access log (``transport_failure_reason``)."""
    head = _PREFIX + ("retried and the latest reset reason: " if retried else "reset reason: ")
    if isinstance(error, TimeoutError | socket.timeout):
        return head + "connection timeout"
    return head + "remote connection failure"


def envoy_termination_text(retried: bool) -> str:
    """The 503 body when the upstream accepted the connection (the client's TLS handshake done) and then
    closed it before answering, e.g. a server that rejected the client's certificate after a TLS 1.3
    handshake. Istio's default retry policy has no ``reset``, so this attempt is not retried."""
    return (
        _PREFIX + ("retried and the latest reset reason: " if retried else "reset reason: ") + "connection termination"
    )


def transport_failure_reason(error: BaseException) -> str:
    """Envoy's ``%UPSTREAM_TRANSPORT_FAILURE_REASON%`` for a failed upstream connection or handshake."""
    if isinstance(error, TimeoutError | socket.timeout):
        return ""
    if isinstance(error, ConnectionRefusedError):
        return "delayed connect error: 111"
    if isinstance(error, ConnectionResetError | ssl.SSLEOFError | BrokenPipeError | ConnectionAbortedError | EOFError):
        return "TLS_error:|33554536:system library:OPENSSL_internal:Connection reset by peer:TLS_error_end"
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = "CERTIFICATE_VERIFY_FAILED"
    elif isinstance(error, ssl.SSLError) and getattr(error, "reason", None) is not None:
        # (an SSLError raised by Python itself, not by OpenSSL, has no reason attribute at all)
        reason = str(error.reason)
    else:
        return str(error)
    code = (16 << 24) | _SSL_REASONS.get(reason, 0)
    return f"TLS_error:|{code}:SSL routines:OPENSSL_internal:{reason}:TLS_error_end"
