"""The sidecar, emulated: Envoy's outbound and inbound paths for one pod, over real mutual TLS.

Outbound (what iptables capture sends to Envoy's 15001): the app's plain HTTP request; the endpoint
is chosen round-robin from istiod's last push (locality-aware with failover when the DestinationRule
asks for it); the connection is mTLS with SNI ``outbound_.<port>_._.<fqdn>``; OpenSSL verifies the
server's chain against the roots the proxy trusts, then the server's SPIFFE ID must be one of the
service's accounts (Istio's secure naming). Failures become the 503 bodies Envoy writes; connection
failures (TLS included) and 503 answers are retried twice on other hosts (Istio's default retry
policy: ``connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes``, 2 attempts).

Inbound (Envoy's 15006): the sidecar owns the pod's address on the app's port. A TLS connection must
present a client certificate that verifies against the proxy's own trusted roots; plaintext is
accepted only under PeerAuthentication PERMISSIVE (under STRICT the connection is reset).
AuthorizationPolicy (DENY first, then ALLOW) is judged on the caller's principal; a denial is
``403 RBAC: access denied``. ``X-Forwarded-Client-Cert`` is appended as Istio's sidecars do:
``By=<own ID>;Hash=<sha256 of the peer certificate>;Subject="";URI=<caller ID>``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import http.client
import itertools
import select
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meshfed.backends.embedded import xds
from meshfed.backends.embedded.agent import ProxyAgent
from meshfed.backends.embedded.fabric import close_listener, reset, serve
from meshfed.backends.embedded.lb import choose
from meshfed.backends.embedded.node import Node
from meshfed.backends.embedded.tls import (
    contexts,
    envoy_reset_text,
    envoy_termination_text,
    mesh_time_problem,
    transport_failure_reason,
)
from meshfed.pki import WorkloadCert
from meshfed.pki.verify import uri_sans

CONNECT_TIMEOUT = 1.0  # Envoy's connect timeout is 10 s in Istio; shorter here so unroutable calls fail fast
_HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class UpstreamError(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class UpstreamTerminated(UpstreamError):
    """A new upstream connection, its handshake done, closed before the answer (Envoy: "connection
    termination"; a server that refuses the client's certificate does this under TLS 1.3)."""


def principal_of(cert_der: bytes | None) -> str:
    if not cert_der:
        return ""
    uris = uri_sans(x509.load_der_x509_certificate(cert_der))
    return uris[0] if uris else ""


def _rule_matches(rule: Mapping[str, Any], principal: str) -> bool:
    """An AuthorizationPolicy rule's ``from`` (principals, namespaces); a rule without ``from`` matches all."""
    sources = rule.get("from") or []
    if not sources:
        return True
    bare = principal.removeprefix("spiffe://")
    namespace = bare.split("/ns/", 1)[1].split("/", 1)[0] if "/ns/" in bare else ""
    for entry in sources:
        source = entry.get("source") or {}
        checks = [
            ("principals", bare, True),
            ("notPrincipals", bare, False),
            ("namespaces", namespace, True),
            ("notNamespaces", namespace, False),
        ]
        if all(
            field not in source
            or (_value_matches(value, source[field]) if positive else not _value_matches(value, source[field]))
            for field, value, positive in checks
        ):
            return True
    return False


def _value_matches(value: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" and value:
            return True
        if pattern.endswith("*") and value.startswith(pattern[:-1]) and value:
            return True
        if pattern.startswith("*") and value.endswith(pattern[1:]) and value:
            return True
        if pattern == value:
            return True
    return False


def authorize(policies: tuple[xds.AuthzPolicy, ...], principal: str) -> bool:
    """Istio's order: any matching DENY denies; then, if ALLOW policies exist, one must match."""
    if any(p.action == "DENY" and any(_rule_matches(r, principal) for r in p.rules) for p in policies):
        return False
    allows = [p for p in policies if p.action == "ALLOW"]
    return not allows or any(_rule_matches(r, principal) for p in allows for r in p.rules)


class Sidecar:
    def __init__(self, runtime: Node, agent: ProxyAgent, pod_ip: str, app_ports: Mapping[int, int]) -> None:
        self.runtime = runtime
        self.agent = agent
        self.pod_ip = pod_ip
        self.app_ports = dict(app_ports)  # service-facing port -> the app's local port
        self.client_context: ssl.SSLContext | None = None
        self.server_context: ssl.SSLContext | None = None
        self._counters: dict[tuple[str, int], itertools.count[int]] = {}
        self._listeners: list[socket.socket] = []
        self._outbound: ThreadingHTTPServer | None = None
        self._pool: dict[tuple[str, int, str], list[http.client.HTTPConnection]] = {}
        self._pool_lock = threading.Lock()
        self._pool_version: tuple[int, int] = (-1, 0)
        self._outliers: dict[tuple[str, int, str, str], tuple[int, float]] = {}
        # Failed upstream calls as Envoy's access log shows them: status, flags, service and
        # %UPSTREAM_TRANSPORT_FAILURE_REASON% (which Envoy 1.39+ keeps out of the 503 body).
        self.access_log: collections.deque[str] = collections.deque(maxlen=200)
        # Envoy's drain (a terminating pod): inbound answers carry "Connection: close", so callers stop reusing
        # their connections; at exit every inbound connection is closed, none is left to answer for a gone app.
        self.draining = False
        self._inbound_streams: set[socket.socket] = set()
        self._inbound_lock = threading.Lock()
        agent.on_certificate = self._use
        if agent.cert is not None:
            self._use(agent.cert)

    def _use(self, cert: WorkloadCert) -> None:
        name = f"{self.runtime.name}-{self.agent.namespace}-{self.agent.pod}"
        self.client_context, self.server_context = contexts(self.runtime.mesh.keys, name, cert)

    @property
    def ready(self) -> bool:
        return self.agent.cert is not None and self.agent.config is not None

    def start(self) -> None:
        self._outbound = ThreadingHTTPServer(("127.0.0.1", 0), _outbound_handler(self))
        self._outbound.daemon_threads = True
        threading.Thread(target=self._outbound.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        for port in self.app_ports:
            handle = functools.partial(self._inbound, port=port)
            self._listeners.append(serve((self.pod_ip, port), handle, f"inbound-{self.agent.pod}"))

    @property
    def outbound_address(self) -> tuple[str, int]:
        assert self._outbound is not None
        return ("127.0.0.1", self._outbound.server_address[1])

    def stop(self) -> None:
        with self._pool_lock:
            for connections in self._pool.values():
                for connection in connections:
                    connection.close()
            self._pool.clear()
        if self._outbound is not None:
            self._outbound.shutdown()
            self._outbound.server_close()
        for listener in self._listeners:
            close_listener(listener)
        with self._inbound_lock:
            streams, self._inbound_streams = list(self._inbound_streams), set()
        for stream in streams:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(stream, socket.SHUT_RDWR)
        self.agent.detach()

    # -- inbound --------------------------------------------------------------------------------
    def _inbound(self, conn: socket.socket, peer: Any, *, port: int) -> None:
        stream: socket.socket = conn
        with self._inbound_lock:
            self._inbound_streams.add(conn)
        try:
            conn.settimeout(10)
            first = conn.recv(1, socket.MSG_PEEK)
            config = self.agent.config
            mode = config.mtls_mode if config else "PERMISSIVE"
            principal, digest = "", ""
            if first == b"\x16" and self.server_context is not None:
                tls = self.server_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
                stream = tls
                try:
                    tls.do_handshake()
                except ssl.SSLError:
                    _linger_close(tls)  # the alert OpenSSL sent reaches the caller before the close
                    return
                der = tls.getpeercert(binary_form=True)
                principal = principal_of(der)
                if mesh_time_problem(der, self.runtime.clock.now()) or (config and not config.trusts_domain(principal)):
                    _linger_close(tls)
                    return
                digest = hashlib.sha256(der).hexdigest() if der else ""
            elif mode == "STRICT" or not first:
                reset(conn)
                return
            handler = _inbound_handler(self, port, principal, digest)
            handler(stream, peer, None)  # type: ignore[arg-type]
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self._inbound_lock:
                self._inbound_streams.discard(conn)
            stream.close()

    # -- outbound -------------------------------------------------------------------------------
    def pick(self, view: xds.ServiceView, exclude: list[xds.Endpoint]) -> xds.Endpoint | None:
        counter = self._counters.setdefault((view.fqdn, view.port), itertools.count())
        ejected = self._ejected(view)
        return choose(view, exclude, next(counter), self.runtime.spec.region, self.runtime.spec.zone, ejected)

    # -- outlier detection --------------------------------------------------------------------------
    # Envoy's consecutive-5xx detection as Istio configures it from a DestinationRule's outlierDetection:
    # 5xx answers and connection failures count; at consecutive5xxErrors (default 5) the host is ejected
    # for baseEjectionTime (default 30 s), unless that would put more than maxEjectionPercent (default 10)
    # of the cluster's hosts out: Envoy (1.31 on) counts the host being ejected, and Istio does not set
    # always_eject_one_host, so a cluster of fewer than 10 hosts ejects none without maxEjectionPercent.
    # Seen on real Istio (LocalityFailover on the host backend): a 2-host cluster never ejected its
    # failing local endpoint until the DestinationRule said maxEjectionPercent: 100.
    def _ejected(self, view: xds.ServiceView) -> list[xds.Endpoint]:
        now = time.monotonic()
        return [
            e for e in view.endpoints if self._outliers.get((view.fqdn, view.port, e.address, e.pod), (0, 0.0))[1] > now
        ]

    def record(self, view: xds.ServiceView, endpoint: xds.Endpoint, failed: bool) -> None:
        detection = view.traffic_policy.get("outlierDetection")
        if not detection:
            return
        key = (view.fqdn, view.port, endpoint.address, endpoint.pod)
        count, until = self._outliers.get(key, (0, 0.0))
        count = count + 1 if failed else 0
        if count >= int(detection.get("consecutive5xxErrors", 5)):
            ejected = len(self._ejected(view))
            if 100 * (ejected + 1) <= len(view.endpoints) * int(detection.get("maxEjectionPercent", 10)):
                until = (
                    time.monotonic() + xds.go_duration(str(detection.get("baseEjectionTime", "30s"))).total_seconds()
                )
            count = 0
        self._outliers[key] = (count, until)

    def _pooled(self, key: tuple[str, int, str]) -> http.client.HTTPConnection | None:
        """An idle upstream connection, as Envoy's connection pool keeps them. The pool is emptied
        whenever the proxy's configuration or certificate changes, so a change is always met by new
        handshakes."""
        with self._pool_lock:
            version = (self.agent.config_version, id(self.client_context))
            if self._pool_version != version:
                for connections in self._pool.values():
                    for connection in connections:
                        connection.close()
                self._pool.clear()
                self._pool_version = version
            idle = self._pool.get(key) or []
            while idle:
                connection = idle.pop()
                if _open(connection):
                    return connection
                connection.close()  # the peer closed it while it was idle: Envoy drops such a connection too
            return None

    def _release(self, key: tuple[str, int, str], connection: http.client.HTTPConnection) -> None:
        with self._pool_lock:
            self._pool.setdefault(key, []).append(connection)

    def upstream(
        self,
        view: xds.ServiceView,
        endpoint: xds.Endpoint,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout: float,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        sni = f"outbound_.{view.port}_._.{view.fqdn}"
        key = (endpoint.address, endpoint.port, sni)
        # A request sent on a connection (pooled or new) that closes before the answer is not retried: Envoy's
        # "connection termination" (access log UC), which Istio's default retry policy does not cover.
        connection = self._pooled(key) or self._connect(view, endpoint, sni, timeout)
        try:
            return self._exchange(key, connection, method, path, headers, body)
        except UpstreamError as error:
            raise UpstreamTerminated(error.cause) from None

    def _connect(
        self, view: xds.ServiceView, endpoint: xds.Endpoint, sni: str, timeout: float
    ) -> http.client.HTTPConnection:
        if self.client_context is None and endpoint.mtls:
            raise UpstreamError(ssl.SSLError("no certificate"))
        try:
            raw = self.runtime.mesh.fabric.dial(
                self.agent.node_network, endpoint.address, endpoint.port, CONNECT_TIMEOUT
            )
        except OSError as error:
            raise UpstreamError(error) from None
        if not endpoint.mtls:  # auto mTLS: an endpoint without a sidecar is called in plaintext
            plain = http.client.HTTPConnection(view.fqdn, view.port, timeout=timeout)
            raw.settimeout(timeout)
            plain.sock = raw
            return plain
        assert self.client_context is not None
        try:
            tls = self.client_context.wrap_socket(raw, server_hostname=sni)
            tls.settimeout(timeout)
            der = tls.getpeercert(binary_form=True)
            problem = mesh_time_problem(der, self.runtime.clock.now())
            if problem:
                tls.close()
                raise ssl.SSLCertVerificationError(1, f"certificate verify failed: {problem}")
            peer = principal_of(der)
            if view.accounts and peer not in view.accounts:
                tls.close()
                raise ssl.SSLCertVerificationError(
                    1, f"certificate verify failed: SAN {peer} is not one of {sorted(view.accounts)}"
                )
        except (OSError, ssl.SSLError) as error:
            raw.close()
            raise UpstreamError(error) from None
        connection = http.client.HTTPConnection(view.fqdn, view.port, timeout=timeout)
        connection.sock = tls
        return connection

    def _exchange(
        self,
        key: tuple[str, int, str],
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            connection.request(method, path, body=body or None, headers=dict(headers))
            response = connection.getresponse()
            data = response.read()
        except (OSError, ssl.SSLError, http.client.HTTPException) as error:
            connection.close()
            raise UpstreamError(error) from None
        if response.will_close:
            connection.close()
        else:
            self._release(key, connection)
        return response.status, list(response.getheaders()), data


def _open(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle pooled connection is still open: nothing may arrive on it while it is idle, so a
    readable socket means the peer closed it (or reset it)."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _linger_close(tls: ssl.SSLSocket) -> None:
    """End a refused TLS connection gently: stop sending, read what the peer still sends, then close,
    so the peer reads OpenSSL's alert rather than a reset. The caller closes as soon as it has read the
    alert; the wait is long because on a loaded machine a short one let the close overtake the alert."""
    try:
        socket.socket.shutdown(tls, socket.SHUT_WR)
        tls.settimeout(5)
        while socket.socket.recv(tls, 4096):
            pass
    except OSError:
        pass


def _relay(handler: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    handler.send_response(status)
    for name, value in headers:
        if name.lower() not in _HOP_HEADERS and name.lower() != "content-length":
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _text(handler: BaseHTTPRequestHandler, status: int, text: str) -> None:
    _relay(handler, status, [("content-type", "text/plain"), ("server", "envoy")], text.encode())


def _request_parts(handler: BaseHTTPRequestHandler) -> tuple[list[tuple[str, str]], bytes]:
    length = int(handler.headers.get("Content-Length") or 0)
    body = handler.rfile.read(length) if length else b""
    headers = [(k, v) for k, v in handler.headers.items() if k.lower() not in _HOP_HEADERS]
    return headers, body


def _outbound_handler(sidecar: Sidecar) -> type[BaseHTTPRequestHandler]:
    class Outbound(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _handle(self) -> None:
            host, _, port_text = (self.headers.get("Host") or "").partition(":")
            port = int(port_text or 80)
            fqdn = sidecar.runtime.fqdn(host, sidecar.agent.namespace)
            config = sidecar.agent.config
            view = config.service(fqdn, port) if config and fqdn else None
            headers, body = _request_parts(self)
            if view is None or not view.endpoints:
                _text(self, 503, "no healthy upstream")
                return
            # Istio's default retry policy: connect-failure,refused-stream,unavailable,cancelled and
            # retriable-status-codes with no code listed, 2 retries, other hosts first (previous_hosts
            # with 5 selection attempts, so a lone host is tried again). An upstream's answer,
            # a 503 included, goes to the app as it is.
            tried: list[xds.Endpoint] = []
            last: BaseException | None = None
            for _ in range(3):
                endpoint = sidecar.pick(view, tried) or sidecar.pick(view, [])
                if endpoint is None:
                    break
                tried.append(endpoint)
                try:
                    status, reply_headers, reply = sidecar.upstream(
                        view, endpoint, self.command, self.path, headers, body, 10.0
                    )
                except UpstreamTerminated:
                    sidecar.record(view, endpoint, failed=True)
                    sidecar.access_log.append(f"503 UC {view.fqdn}")
                    _text(self, 503, envoy_termination_text(retried=len(tried) > 1))
                    return
                except UpstreamError as error:
                    last = error.cause
                    sidecar.record(view, endpoint, failed=True)
                    continue
                sidecar.record(view, endpoint, failed=status >= 500)
                _relay(self, status, reply_headers, reply)
                return
            if last is None:
                _text(self, 503, "no healthy upstream")
            else:
                sidecar.access_log.append(f"503 UF {view.fqdn} {transport_failure_reason(last)}")
                _text(self, 503, envoy_reset_text(last, retried=len(tried) > 1))

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Outbound


def _inbound_handler(sidecar: Sidecar, port: int, principal: str, digest: str) -> type[BaseHTTPRequestHandler]:
    class Inbound(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def end_headers(self) -> None:
            if sidecar.draining:  # the caller closes this connection after the answer
                self.send_header("Connection", "close")
            super().end_headers()

        def _handle(self) -> None:
            config = sidecar.agent.config
            headers, body = _request_parts(self)
            if config is not None and not authorize(config.authz, principal):
                _text(self, 403, "RBAC: access denied")
                return
            # APPEND_FORWARD: without mTLS there is no client certificate to vouch for, and a caller's own
            # header is not forwarded either.
            headers = [(k, v) for k, v in headers if principal or k.lower() != "x-forwarded-client-cert"]
            if principal:
                own = principal_of(sidecar.agent.cert.leaf.public_bytes(Encoding.DER)) if sidecar.agent.cert else ""
                element = f'By={own};Hash={digest};Subject="";URI={principal}'
                previous = [v for k, v in headers if k.lower() == "x-forwarded-client-cert"]
                headers = [(k, v) for k, v in headers if k.lower() != "x-forwarded-client-cert"]
                headers.append(("X-Forwarded-Client-Cert", ",".join([*previous, element])))
            app = http.client.HTTPConnection("127.0.0.1", sidecar.app_ports[port], timeout=10)
            try:
                app.request(self.command, self.path, body=body or None, headers=dict(headers))
                response = app.getresponse()
                _relay(self, response.status, list(response.getheaders()), response.read())
            except (OSError, http.client.HTTPException):
                _text(
                    self,
                    503,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                )
            finally:
                app.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    return Inbound
