"""The network between the embedded clusters: addresses, and which of them a dialer may reach.

Loopback reaches everything, so the fabric refuses what a multi-network mesh cannot do. Each cluster
gets a block of loopback addresses (``127.<base+i>.0.0/16``, the base drawn per mesh so that meshes
of other processes on the machine do not collide): pod addresses, LoadBalancer addresses
and its API server's address. Pod addresses are reachable only from the same network (clusters on
one network share a flat pod network, as Istio's single-network model assumes); LoadBalancer
addresses (the east-west gateways) from every network. A dial to a pod address of another network,
or to any address outside the fabric, is never sent: it fails the way an unroutable address fails,
with a connect timeout (the caller's own timeout; Envoy's default is 10 s). A dial to an address of
the fabric where nothing listens is refused by the kernel, for real.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

AddressKind = Literal["pod", "loadbalancer", "apiserver"]


@dataclass(frozen=True)
class Address:
    ip: str
    kind: AddressKind
    cluster: str
    network: str


class Unroutable(TimeoutError):
    """The destination cannot be reached from the caller's network."""


class Fabric:
    def __init__(self, clusters: int = 26) -> None:
        self._lock = threading.Lock()
        self._probes: list[socket.socket] = []
        self._base = self._reserve(clusters)
        self._clusters: dict[str, tuple[int, str]] = {}  # cluster -> (index, network)
        self._addresses: dict[str, Address] = {}
        self._next_pod: dict[str, int] = {}
        self._next_lb: dict[str, int] = {}

    def _reserve(self, clusters: int) -> int:
        """A base whose blocks no other mesh on this machine uses: each block's API-server address is
        held by a listener for the life of the mesh, so a concurrent mesh picks another base."""
        for _ in range(64):
            base = random.randrange(16, 255 - clusters)
            probes = []
            try:
                for index in range(clusters):
                    probes.append(socket.create_server((f"127.{base + index}.0.1", 6443)))
            except OSError:
                for probe in probes:
                    probe.close()
                continue
            self._probes = probes
            return base
        raise OSError("no free block of loopback addresses for the embedded mesh: too many meshes running")

    def release(self) -> None:
        for probe in self._probes:
            probe.close()
        self._probes = []

    def add_cluster(self, cluster: str, network: str) -> None:
        with self._lock:
            index = len(self._clusters)
            self._clusters[cluster] = (index, network)
            self._next_pod[cluster] = 0
            self._next_lb[cluster] = 10
            api = f"127.{self._base + index}.0.1"
            self._addresses[api] = Address(api, "apiserver", cluster, network)

    def network_of(self, cluster: str) -> str:
        return self._clusters[cluster][1]

    def api_server(self, cluster: str) -> str:
        return f"https://127.{self._base + self._clusters[cluster][0]}.0.1:6443"

    def cluster_of_api_server(self, url: str) -> str | None:
        host = url.split("://", 1)[-1].rsplit(":", 1)[0]
        address = self._addresses.get(host)
        return address.cluster if address and address.kind == "apiserver" else None

    def new_pod_ip(self, cluster: str) -> str:
        with self._lock:
            index, network = self._clusters[cluster]
            n = self._next_pod[cluster]
            self._next_pod[cluster] = n + 1
            ip = f"127.{self._base + index}.{1 + n // 250}.{2 + n % 250}"
            self._addresses[ip] = Address(ip, "pod", cluster, network)
            return ip

    def new_loadbalancer_ip(self, cluster: str) -> str:
        with self._lock:
            index, network = self._clusters[cluster]
            n = self._next_lb[cluster]
            self._next_lb[cluster] = n + 1
            ip = f"127.{self._base + index}.0.{n}"
            self._addresses[ip] = Address(ip, "loadbalancer", cluster, network)
            return ip

    def reachable(self, from_network: str, ip: str) -> bool:
        """The one place that decides routability between networks."""
        address = self._addresses.get(ip)
        if address is None:
            return False
        if address.kind == "pod":
            return address.network == from_network
        return True

    def dial(self, from_network: str, ip: str, port: int, timeout: float) -> socket.socket:
        if not _is_loopback(ip) or not self.reachable(from_network, ip):
            time.sleep(timeout)
            raise Unroutable(f"connect to {ip}:{port} timed out: no route from network {from_network!r}")
        sock = socket.create_connection((ip, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def serve(address: tuple[str, int], handle: Callable[[socket.socket, Any], None], name: str) -> socket.socket:
    """Listen on ``address`` and handle each connection in a thread of its own, until the listener closes."""
    listener = socket.create_server(address)

    def accept() -> None:
        while True:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn, peer), daemon=True, name=name).start()

    threading.Thread(target=accept, daemon=True, name=f"{name}-accept").start()
    return listener


def close_listener(listener: socket.socket) -> None:
    """Close a listening socket so that a thread blocked in accept() wakes up and the port is freed."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    listener.close()


def reset(sock: socket.socket) -> None:
    """Close with RST, as Envoy does when no filter chain or route takes the connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
