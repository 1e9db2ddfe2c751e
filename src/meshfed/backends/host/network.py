"""The host backend's networks, as kind lays them out with Docker: one shared network, one node per cluster.

A mesh's shared network is a bridge (``meshfed0``, ``10.250.0.0/24`` for the default ``--host-prefix``) in
the host's namespace, like Docker's ``kind`` network: each cluster's node is a network namespace
(``meshfed-<cluster>``) with one address on
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

SUBNETS = ipaddress.IPv4Network("10.250.0.0/16")  # one /24 of it per host mesh (its slot)
LB_ADDRESSES = 16  # per cluster


@dataclass(frozen=True)
class SharedNetwork:
    """One host mesh's shared network: its bridge (``<prefix>0``), its /24 (``10.250.<slot>.0/24``) and the
    prefix of its node namespaces (``<prefix>-``). See :mod:`meshfed.backends.host.instance` for the slot."""

    prefix: str = "meshfed"
    slot: int = 0

    @property
    def bridge(self) -> str:
        return f"{self.prefix}0"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(SUBNETS.network_address) + (self.slot << 8), 24))

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1  # the bridge's own address in the host's namespace

    @property
    def netns_prefix(self) -> str:
        return f"{self.prefix}-"

    @property
    def forward_rule(self) -> tuple[str, ...]:
        # Bridged traffic passes the host's FORWARD chain when br_netfilter is on; Docker's DROP policy would stop it.
        return (
            "FORWARD",
            "-i",
            self.bridge,
            "-o",
            self.bridge,
            "-j",
            "ACCEPT",
            "-m",
            "comment",
            "--comment",
            "meshfed",
        )

    def check_free(self) -> None:
        """Its addresses must not be routed elsewhere on this host (another network, another host mesh)."""
        for route, line in routes():
            if f"dev {self.bridge}" not in line and route.overlaps(self.subnet):
                raise BackendError(
                    f"{self.subnet} (the shared network of host mesh {self.prefix}) is already routed on this host "
                    f"({line}): free it, or give this run another --host-prefix"
                )

    def ensure(self) -> None:
        """The bridge, up, with its address; "already there" is success when it is ours."""
        _ip(["link", "add", self.bridge, "type", "bridge"], f"creating the bridge {self.bridge}", ok_if="File exists")
        details = _ip(["-d", "-o", "link", "show", self.bridge], f"reading {self.bridge}")
        addresses = _ip(["-4", "-o", "addr", "show", "dev", self.bridge], f"reading {self.bridge}'s addresses")
        if " bridge " not in details or (addresses.strip() and f" {self.gateway}/" not in addresses):
            raise BackendError(
                f"this host has an interface {self.bridge} that is not host mesh {self.prefix}'s bridge: give this "
                "run another --host-prefix"
            )
        _ip(
            ["addr", "replace", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge],
            f"addressing {self.bridge}",
        )
        _ip(["link", "set", self.bridge, "up"], f"bringing {self.bridge} up")
        if not _iptables_rule("-C", self.forward_rule):
            _iptables_rule("-I", self.forward_rule)

    def remove(self) -> None:
        """Delete the bridge once no node of this mesh is left on it."""
        if self.node_namespaces():
            return
        _ip(["link", "delete", self.bridge], f"deleting {self.bridge}", ok_if="Cannot find device")
        while _iptables_rule("-D", self.forward_rule):
            pass

    def node_namespaces(self) -> list[str]:
        names = [line.split()[0] for line in _ip(["netns", "list"], "listing network namespaces").splitlines() if line]
        return [name for name in names if name.startswith(self.netns_prefix)]


@dataclass(frozen=True)
class NodeNetwork:
    """Where one cluster's node sits: its namespace, addresses and CIDRs, all derived from its index."""

    cluster: str
    index: int
    shared: SharedNetwork = SharedNetwork()

    @property
    def netns(self) -> str:
        return self.shared.netns_prefix + self.cluster

    @property
    def host_veth(self) -> str:
        return f"{self.shared.prefix}-{self.index}"  # interface names are 15 characters at most

    @property
    def address(self) -> str:
        return str(self.shared.subnet.network_address + 10 + self.index)

    @property
    def pod_cidr(self) -> str:
        # Only its node routes it, so host meshes side by side may use the same ones.
        return f"10.{10 + self.index}.0.0/16"  # as Istio's kind topologies and the kind backend

    @property
    def service_cidr(self) -> str:
        return f"10.255.{10 + self.index}.0/24"

    @property
    def dns_address(self) -> str:
        return f"10.255.{10 + self.index}.10"

    @property
    def lb_addresses(self) -> list[str]:
        first = self.shared.subnet.network_address + 100 + self.index * LB_ADDRESSES
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


def routes() -> list[tuple[ipaddress.IPv4Network, str]]:
    """The host's IPv4 routes but the default one: (destination, the route's line)."""
    found = []
    for line in _ip(["-4", "route", "show"], "reading the host's routes").splitlines():
        fields = line.split()
        if not fields or fields[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            found.append((ipaddress.IPv4Network(fields[0], strict=False), line.strip()))
    return found


def ensure_node(node: NodeNetwork) -> None:
    """The node's namespace on its mesh's shared bridge, with forwarding on and bridged traffic through iptables."""
    existing = set(_ip(["netns", "list"], "listing network namespaces").split())
    if node.netns not in existing:
        _ip(["netns", "add", node.netns], f"creating the network namespace {node.netns}")
    if not _link_exists(node.host_veth, node.netns, "eth0"):
        _ip(["link", "delete", node.host_veth], f"removing a stale {node.host_veth}", ok_if="Cannot find device")
        _ip(
            ["link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns],
            f"connecting {node.netns} to {node.shared.bridge}",
        )
    _ip(["link", "set", node.host_veth, "master", node.shared.bridge, "up"], f"attaching {node.host_veth}")
    inside = ["-n", node.netns]
    _ip(
        [*inside, "addr", "replace", f"{node.address}/{node.shared.subnet.prefixlen}", "dev", "eth0"], "addressing eth0"
    )
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
