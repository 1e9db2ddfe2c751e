"""The host backend's networks, as kind lays them out with Docker: one shared network, one node per cluster.

The shared network is a bridge (``meshfed0``, ``10.250.0.0/24``) in the host's namespace, like Docker's
``kind`` network: each cluster's node is a network namespace (``meshfed-<cluster>``) with one address on
it, where the cluster's control plane, container runtime, kubelet and kube-proxy run. A node's pods sit
on its own bridge (the CNI ``bridge`` plugin) with addresses from the cluster's pod CIDR, which no other
node routes: pod addresses are unroutable from other clusters. LoadBalancer Services get addresses from
the cluster's slice of the shared network (see :mod:`meshfed.backends.host.loadbalancer`), so the
east-west gateways are the only way between clusters, as on kind with MetalLB.
"""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from meshfed.backends.base import BackendError

BRIDGE = "meshfed0"
SHARED = ipaddress.IPv4Network("10.250.0.0/24")
GATEWAY = SHARED.network_address + 1  # the bridge's own address in the host's namespace
LB_ADDRESSES = 16  # per cluster
NETNS_PREFIX = "meshfed-"


@dataclass(frozen=True)
class NodeNetwork:
    """Where one cluster's node sits: its namespace, addresses and CIDRs, all derived from its index."""

    cluster: str
    index: int

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.cluster

    @property
    def host_veth(self) -> str:
        return f"mf{self.index}h"  # interface names are 15 characters at most

    @property
    def address(self) -> str:
        return str(SHARED.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        return f"10.{10 + self.index}.0.0/16"  # as Istio's kind topologies and the kind backend

    @property
    def service_cidr(self) -> str:
        return f"10.255.{10 + self.index}.0/24"

    @property
    def dns_address(self) -> str:
        return f"10.255.{10 + self.index}.10"

    @property
    def lb_addresses(self) -> list[str]:
        first = SHARED.network_address + 100 + self.index * LB_ADDRESSES
        return [str(first + offset) for offset in range(LB_ADDRESSES)]

    def nsenter(self) -> list[str]:
        """The prefix that runs a command in this node's network namespace (and nothing else of it)."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns}"]


def _ip(args: Sequence[str], what: str, *, ok_if: str = "") -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0 and not (ok_if and ok_if in done.stderr):
        raise BackendError(f"{what} failed (`ip {' '.join(args)}`): {done.stderr.strip() or 'no output'}")
    return done.stdout


def _sysctl(node: NodeNetwork | None, key: str, value: str) -> None:
    prefix = node.nsenter() if node else []
    done = subprocess.run([*prefix, "sysctl", "-qw", f"{key}={value}"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BackendError(f"cannot set {key}={value}: {done.stderr.strip()}: the host backend needs root on Linux")


def _iptables_rule(action: str, rule: Sequence[str]) -> bool:
    done = subprocess.run(["iptables", "-w", action, *rule], capture_output=True, text=True, check=False)
    return done.returncode == 0


# Bridged traffic passes the host's FORWARD chain when br_netfilter is on; Docker's DROP policy would stop it.
_FORWARD_RULE = ("FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", "-m", "comment", "--comment", "meshfed")


def check_free() -> None:
    """The shared network's addresses must not be in use on this host (a route to them elsewhere)."""
    for line in _ip(["-4", "route", "show"], "reading the host's routes").splitlines():
        fields = line.split()
        if not fields or fields[0] == "default" or f"dev {BRIDGE}" in line:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(fields[0], strict=False).overlaps(SHARED):
                raise BackendError(
                    f"{SHARED} (the host backend's shared network) is already routed on this host ({line.strip()}): "
                    "free it, or run where that network is unused"
                )


def ensure_shared() -> None:
    """The shared bridge, up, with its address; "already there" is success."""
    _ip(["link", "add", BRIDGE, "type", "bridge"], f"creating the bridge {BRIDGE}", ok_if="File exists")
    _ip(["addr", "replace", f"{GATEWAY}/{SHARED.prefixlen}", "dev", BRIDGE], f"addressing {BRIDGE}")
    _ip(["link", "set", BRIDGE, "up"], f"bringing {BRIDGE} up")
    if not _iptables_rule("-C", _FORWARD_RULE):
        _iptables_rule("-I", _FORWARD_RULE)


def ensure_node(node: NodeNetwork) -> None:
    """The node's namespace on the shared bridge, with forwarding on and bridged traffic through iptables."""
    existing = set(_ip(["netns", "list"], "listing network namespaces").split())
    if node.netns not in existing:
        _ip(["netns", "add", node.netns], f"creating the network namespace {node.netns}")
    if not _link_exists(node.host_veth, node.netns, "eth0"):
        _ip(["link", "delete", node.host_veth], f"removing a stale {node.host_veth}", ok_if="Cannot find device")
        _ip(
            ["link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns],
            f"connecting {node.netns} to {BRIDGE}",
        )
    _ip(["link", "set", node.host_veth, "master", BRIDGE, "up"], f"attaching {node.host_veth}")
    inside = ["-n", node.netns]
    _ip([*inside, "addr", "replace", f"{node.address}/{SHARED.prefixlen}", "dev", "eth0"], "addressing eth0")
    _ip([*inside, "link", "set", "eth0", "up"], "bringing eth0 up")
    _ip([*inside, "link", "set", "lo", "up"], "bringing lo up")
    _sysctl(node, "net.ipv4.ip_forward", "1")
    _sysctl(node, "net.bridge.bridge-nf-call-iptables", "1")
    _sysctl(node, "net.ipv4.conf.all.route_localnet", "1")


def add_lb_address(node: NodeNetwork, address: str) -> None:
    """Answer for a LoadBalancer address on the shared network (as MetalLB's L2 mode makes a node do)."""
    _ip(["-n", node.netns, "addr", "replace", f"{address}/32", "dev", "eth0"], f"adding {address} to {node.netns}")


def _link_exists(host_side: str, netns: str, inside: str) -> bool:
    """Both ends of a node's veth are there (a namespace deleted a moment ago may leave its peer behind)."""
    there = subprocess.run(["ip", "link", "show", host_side], capture_output=True, check=False).returncode == 0
    peer = subprocess.run(["ip", "-n", netns, "link", "show", inside], capture_output=True, check=False)
    return there and peer.returncode == 0


def remove_node(node: NodeNetwork) -> None:
    """Delete a node's namespace and wait until its veth is gone with it; a missing one is fine."""
    _ip(["netns", "delete", node.netns], f"deleting {node.netns}", ok_if="No such file")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if subprocess.run(["ip", "link", "show", node.host_veth], capture_output=True, check=False).returncode != 0:
            return
        time.sleep(0.1)
    _ip(["link", "delete", node.host_veth], f"removing {node.host_veth}", ok_if="Cannot find device")


def remove_shared() -> None:
    """Delete the shared bridge once no node is left on it."""
    if any(name.startswith(NETNS_PREFIX) for name in node_namespaces()):
        return
    _ip(["link", "delete", BRIDGE], f"deleting {BRIDGE}", ok_if="Cannot find device")
    while _iptables_rule("-D", _FORWARD_RULE):
        pass


def node_namespaces() -> list[str]:
    names = [line.split()[0] for line in _ip(["netns", "list"], "listing network namespaces").splitlines() if line]
    return [name for name in names if name.startswith(NETNS_PREFIX)]
