"""Host-level evidence from real clusters, read with testinfra.

* ``docker://<node container>``: the kind node runs its kubelet (``systemctl is-active kubelet``).
* ``kubectl://<pod>?container=istio-proxy``: the proxy's PID 1 is pilot-agent, and its network
  namespace listens where Istio's proxies do: 15006 (a sidecar's inbound capture) and 15443 (the
  east-west gateway's SNI passthrough). Listening ports are read from ``/proc/net/tcp{,6}``, which
  every image has (``ss`` and ``ps`` are not in Istio's distroless images; neither is a shell, so on
  those the evidence says it is unavailable instead of guessing).
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import testinfra

from meshfed.backends.base import Evidence

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
SIDECAR_INBOUND = 15006
EASTWEST_PASSTHROUGH = 15443


def listening_ports(proc_net_tcp: str) -> set[int]:
    """The ports in LISTEN state in ``/proc/net/tcp`` (or tcp6) text."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 3 and ":" in fields[1] and fields[3] == LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def kubectl_url(pod: str, namespace: str, container: str, kubeconfig: Path | None, context: str | None) -> str:
    query = {"container": container, "namespace": namespace}
    if kubeconfig:
        query["kubeconfig"] = str(kubeconfig)
    if context:
        query["context"] = context
    return f"kubectl://{pod}?{urllib.parse.urlencode(query)}"


def node(container: str) -> Evidence:
    try:
        result = testinfra.get_host(f"docker://{container}").run("systemctl is-active kubelet")
    except Exception as error:
        return Evidence("kubelet-not-running", None, f"{container}: cannot read the node ({error})")
    state = result.stdout.strip() or result.stderr.strip()
    if state == "active":
        return Evidence("kubelet-not-running", True, f"{container}: kubelet is active")
    return Evidence(
        "kubelet-not-running",
        False,
        f"{container}: kubelet is {state or 'not running'}",
        f"docker exec {container} journalctl -u kubelet --no-pager | tail",
    )


def proxy(url: str, what: str, port: int) -> list[Evidence]:
    """``what`` (e.g. "cluster-a/istio-eastwestgateway-...") runs pilot-agent and listens on ``port``."""
    host = testinfra.get_host(url)
    try:
        # host.run only: testinfra's modules first probe the OS with commands a proxy image lacks.
        cmdline = host.run("cat /proc/1/cmdline").stdout.replace("\0", " ").strip()
        tables = host.run("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null")
    except Exception as error:
        return [Evidence("proxy-unreadable", None, f"{what}: cannot read the istio-proxy container ({error})")]
    if tables.rc not in (0, 1) or not tables.stdout.strip():
        reason = tables.stderr.strip() or "no shell in the image?"
        return [Evidence("proxy-unreadable", None, f"{what}: /proc/net/tcp is not readable ({reason})")]
    check = "eastwest-not-listening" if port == EASTWEST_PASSTHROUGH else "sidecar-not-intercepting"
    found = []
    agent = cmdline.split(" ")[0].endswith("pilot-agent")
    found.append(
        Evidence(
            "pilot-agent-not-running",
            agent,
            f"{what}: PID 1 is {cmdline.split(' ')[0] or 'unknown'}",
            "" if agent else "the istio-proxy container does not run pilot-agent: check the proxy image",
        )
    )
    ports = listening_ports(tables.stdout)
    listening = port in ports
    found.append(
        Evidence(
            check,
            listening,
            f"{what}: {'listens' if listening else 'does not listen'} on {port} "
            f"(listening: {', '.join(map(str, sorted(ports))) or 'nothing'})",
            "" if listening else "the proxy has no listener there: see `istioctl proxy-config listener` for the pod",
        )
    )
    return found
