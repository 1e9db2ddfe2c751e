"""The east-west gateway, emulated: it routes by SNI and never terminates TLS.

On 15443 a Gateway server with ``tls.mode: AUTO_PASSTHROUGH`` whose hosts cover the service (Istio's
``expose-services.yaml``: ``*.local``) lets the gateway read the SNI ``outbound_.<port>_._.<fqdn>``
and forward the bytes to an endpoint of that service in its own network
(``ISTIO_META_REQUESTED_NETWORK_VIEW``); the handshake stays end to end between the two sidecars.
On 15012/15017 a PASSTHROUGH server plus a VirtualService TLS route (``expose-istiod.yaml``) sends
the bytes to istiod. Without a matching server or route, or without an endpoint, the connection is
closed at once: the caller's sidecar sees a reset during its handshake.

The same proxy is the external control plane's ingress gateway (``istio-ingressgateway`` in the external
cluster, configured by its own helper istiod): the guide's ``external-istiod-gw``/``external-istiod-vs``
(IP-address variant) pass 15012 and 15017 through, by any SNI, to the external istiod. In the hostname variant
a ``tls.mode: SIMPLE`` server terminates TLS with the certificate of its ``credentialName`` Secret (in the
gateway's own namespace), an http route by port picks istiod, and TLS is opened to it again as the
DestinationRule's port settings say: ``SIMPLE`` verifies istiod against the ``ca.crt`` of the rule's
``credentialName``, else against the system roots (``file-root:system``, as Istio configures Envoy), which do
not hold the mesh's root: the connection is closed (seen on host).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from meshfed.backends.embedded import xds
from meshfed.backends.embedded.agent import ProxyAgent
from meshfed.backends.embedded.fabric import close_listener, reset, serve
from meshfed.backends.embedded.node import Node
from meshfed.backends.embedded.tls import NO_CHECK_TIME, read_client_hello
from meshfed.pki import bundle_from_secret
from meshfed.pki.certs import load_key

PORTS = (15443, 15012, 15017)


def pipe(a: socket.socket, b: socket.socket, cut: Callable[[], bool] | None = None) -> None:
    """Copy bytes both ways until either side closes. ``cut`` (a fault injected on purpose) is asked before
    each chunk from ``a`` is passed on: True resets both connections instead, as a packet answered with a TCP
    reset on the way does."""

    def copy(source: socket.socket, sink: socket.socket, cut: Callable[[], bool] | None) -> None:
        try:
            while data := source.recv(65536):
                if cut is not None and cut():
                    for sock in (source, sink):
                        reset(sock)
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    for sock in (a, b):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    other = threading.Thread(target=copy, args=(b, a, None), daemon=True)
    other.start()
    copy(a, b, cut)
    other.join(timeout=30)
    a.close()
    b.close()


def parse_outbound_sni(sni: str) -> tuple[str, int] | None:
    """``outbound_.8080_._.echo.ns.svc.cluster.local`` -> (fqdn, port)."""
    parts = sni.split("_.", 3)
    if len(parts) != 4 or parts[0] != "outbound" or not parts[1].isdigit():
        return None
    return parts[3], int(parts[1])


class EastWestGateway:
    def __init__(self, runtime: Node, agent: ProxyAgent, pod_ip: str) -> None:
        self.runtime = runtime
        self.agent = agent
        self.pod_ip = pod_ip
        self._listeners: list[socket.socket] = []
        self._turns = itertools.count()
        self._contexts: dict[tuple[str, str, str], ssl.SSLContext] = {}

    @property
    def ready(self) -> bool:
        return self.agent.config is not None

    def start(self) -> None:
        for port in PORTS:
            handle = functools.partial(self._forward, port=port)
            self._listeners.append(serve((self.pod_ip, port), handle, f"gateway-{self.agent.pod}"))

    def stop(self) -> None:
        for listener in self._listeners:
            close_listener(listener)
        self.agent.detach()

    def route(self, port: int, sni: str | None) -> xds.Endpoint | None:
        """The one place that decides where a connection goes; None closes it."""
        config = self.agent.config
        if config is None:
            return None
        servers = [s for s in config.gateway_servers if s.port == port]
        if port == 15443:
            target = parse_outbound_sni(sni) if sni is not None else None
            if target is None:
                return None
            fqdn, service_port = target
            if not any(s.mode == "AUTO_PASSTHROUGH" and xds.host_matches(fqdn, s.hosts) for s in servers):
                return None
        else:
            # A ClientHello without SNI (a client that dialled an IP address) matches only where the hosts are
            # "*": Istio drops SNI matching from a filter chain whose sniHosts hold "*" (toFilterChainMatch in
            # pilot/pkg/networking/core/filterchain_options.go), so that chain takes any connection.
            name = sni or ""
            if not any(s.mode == "PASSTHROUGH" and xds.host_matches(name, s.hosts) for s in servers):
                return None
            routes = [r for r in config.tls_routes if r.port == port and xds.host_matches(name, r.sni_hosts)]
            routes.sort(key=lambda r: name not in r.sni_hosts)  # an exact SNI host before a wildcard
            if not routes:
                return None
            fqdn, service_port = routes[0].host, routes[0].target_port
        view = config.service(fqdn, service_port)
        local = [e for e in view.endpoints if not e.via_gateway] if view else []
        return local[next(self._turns) % len(local)] if local else None

    def _terminating(self, port: int) -> xds.GatewayServer | None:
        """A server on ``port`` that terminates TLS (any SNI: its hosts are matched only where they are not "*",
        which the hostname variant's servers are not here)."""
        config = self.agent.config
        servers = [s for s in config.gateway_servers if s.port == port and s.mode == "SIMPLE"] if config else []
        return servers[0] if servers else None

    def _secret_context(self, name: str, server: bool) -> ssl.SSLContext | None:
        """A server context presenting the certificate of Secret ``name`` (``tls.crt``/``tls.key``, or
        ``cert``/``key``), or a client context trusting its ``ca.crt`` (or the Secret ``<name>-cacert``'s), as
        Istio's SDS reads a credential; None when the Secret holds none. Made anew when the Secret changes."""
        namespace = self.agent.namespace
        names = (name,) if server else (name, f"{name}-cacert")
        for candidate in names:
            secret = self.runtime.store.get("Secret", candidate, namespace)
            if secret is None:
                continue
            key = (candidate, str(secret["metadata"].get("resourceVersion", "")), "server" if server else "client")
            if key in self._contexts:
                return self._contexts[key]
            files = bundle_from_secret(secret)
            if server:
                chain, private = files.get("tls.crt") or files.get("cert"), files.get("tls.key") or files.get("key")
                if not chain or not private:
                    continue
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                chain_file, key_file = self.runtime.mesh.keys.write(
                    f"gateway-{self.agent.pod}-{candidate}", load_key(private, f"Secret {candidate}"), chain
                )
                context.load_cert_chain(chain_file, key_file)
            else:
                roots = files.get("ca.crt") or files.get("cacert")
                if not roots:
                    continue
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False  # tls SIMPLE without subjectAltNames: the chain alone is verified
                context.load_verify_locations(cadata=roots.decode())
                context.verify_flags |= NO_CHECK_TIME
            self._contexts[key] = context
            return context
        return None

    def _upstream_tls(self, view: xds.ServiceView, port: int) -> ssl.SSLContext | None:
        """The TLS the DestinationRule's port settings open to the upstream (None: plain TCP)."""
        for setting in view.traffic_policy.get("portLevelSettings") or []:
            if int((setting.get("port") or {}).get("number", 0)) != port:
                continue
            tls = setting.get("tls") or {}
            if str(tls.get("mode", "")).upper() != "SIMPLE":
                return None
            credential = str(tls.get("credentialName") or "")
            context = self._secret_context(credential, server=False) if credential else None
            if context is None:  # Istio's "system" root: the OS bundle, which holds no mesh root
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.load_default_certs()
            return context
        return None

    def _terminate(self, conn: socket.socket, port: int, server: xds.GatewayServer) -> None:
        """Terminate the client's TLS with the server's credential, then open the routed upstream."""
        config = self.agent.config
        routes = [r for r in config.tls_routes if r.terminated and r.port == port] if config else []
        context = self._secret_context(server.credential, server=True) if server.credential else None
        view = config.service(routes[0].host, routes[0].target_port) if config and routes else None
        local = [e for e in view.endpoints if not e.via_gateway] if view else []
        if context is None or view is None or not local:
            reset(conn)
            return
        try:
            downstream = context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):  # the client refused the certificate (or went away)
            conn.close()
            return
        endpoint = local[next(self._turns) % len(local)]
        try:
            upstream = self.runtime.mesh.fabric.dial(self.agent.node_network, endpoint.address, endpoint.port, 2.0)
            tls = self._upstream_tls(view, routes[0].target_port)
            if tls is not None:
                upstream = tls.wrap_socket(upstream)
        except (OSError, ssl.SSLError):  # Envoy: "upstream connect error or disconnect/reset before headers"
            downstream.close()
            return
        downstream.settimeout(None)
        upstream.settimeout(None)
        pipe(downstream, upstream)

    def _forward(self, conn: socket.socket, _peer: Any, *, port: int) -> None:
        try:
            conn.settimeout(10)
            server = self._terminating(port) if port != 15443 else None
            if server is not None:
                self._terminate(conn, port, server)
                return
            sni, hello = read_client_hello(conn)
            endpoint = self.route(port, sni)
            if endpoint is None:
                reset(conn)
                return
            upstream = self.runtime.mesh.fabric.dial(self.agent.node_network, endpoint.address, endpoint.port, 2.0)
            upstream.sendall(hello)
            conn.settimeout(None)  # the connect timeouts must not become idle timeouts
            upstream.settimeout(None)
            pipe(conn, upstream)
        except OSError:
            conn.close()
