"""LoadBalancer addresses for host clusters, as cloud-provider-kind or MetalLB's L2 mode give them on kind.

A small controller per mesh: every half second it lists each cluster's Services of type LoadBalancer;
a Service without an address gets the next free one of its cluster's slice of the shared network
(``status.loadBalancer.ingress``), and the node answers for it (the address on its ``eth0``), where
kube-proxy's rules send it on to the Service's pods. An address stays with its Service for the run.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from meshfed.backends.base import BackendError
from meshfed.backends.host import network
from meshfed.backends.kube import KubeApi

STARTED = "assigning LoadBalancer addresses"


class LoadBalancers:
    def __init__(
        self, apis: Mapping[str, KubeApi], nodes: Mapping[str, network.NodeNetwork], every: float = 0.5
    ) -> None:
        self.apis = dict(apis)
        self.nodes = dict(nodes)
        self.every = every
        self.assigned: dict[tuple[str, str, str], str] = {}  # (cluster, namespace, name) -> address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="meshfed-loadbalancers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def run(self) -> None:
        """Reconcile every ``every`` seconds until stopped (the thread's body, or a process's)."""
        while not self._stop.wait(self.every):
            for cluster in self.apis:
                with contextlib.suppress(BackendError):  # an API server restarting: the next pass tries again
                    self.reconcile(cluster)

    def reconcile(self, cluster: str) -> None:
        api, node = self.apis[cluster], self.nodes[cluster]
        services = (api.request("GET", "/api/v1/services") or {}).get("items") or []
        for service in services:
            if (service.get("spec") or {}).get("type") != "LoadBalancer":
                continue
            meta = service["metadata"]
            key = (cluster, meta["namespace"], meta["name"])
            ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
            address = self.assigned.get(key)
            if address is None:
                taken = {value for (owner, _, _), value in self.assigned.items() if owner == cluster}
                # An address given by an earlier run (a kept cluster) stays with its Service.
                had = [item.get("ip") for item in ingress if item.get("ip") in node.lb_addresses]
                free = [candidate for candidate in had + node.lb_addresses if candidate not in taken]
                if not free:
                    continue  # as MetalLB: the Service stays pending
                address = self.assigned[key] = free[0]
                network.add_lb_address(node, address)
            if [item.get("ip") for item in ingress] != [address]:
                path = f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status"
                body = {"status": {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}}}
                api.request("PATCH", path, body=body, content_type="application/merge-patch+json")


def main(argv: list[str]) -> int:
    """The controller as a process of its own (``meshfed host up``, whose clusters outlive the command):
    ``python -m meshfed.backends.host.loadbalancer PREFIX:SLOT NAME=INDEX=KUBECONFIG ...``, until SIGTERM."""
    apis, nodes = {}, {}
    prefix, slot = argv[0].split(":")
    shared = network.SharedNetwork(prefix, int(slot))
    for arg in argv[1:]:
        name, index, kubeconfig = arg.split("=", 2)
        apis[name] = KubeApi(Path(kubeconfig), None, name)
        nodes[name] = network.NodeNetwork(name, int(index), shared)
    balancers = LoadBalancers(apis, nodes)
    signal.signal(signal.SIGTERM, lambda *_: balancers.stop())
    print(f"{STARTED} for {', '.join(apis)}", flush=True)
    balancers.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
