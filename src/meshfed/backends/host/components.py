"""What runs on a host cluster's node, as pure functions of the cluster's folder, network and binaries.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler (flags as envtest and kubeadm set
them), then containerd (its own root, state, socket and CNI folder), the kubelet (its own root and
cgroup root; cgroup v1 accepted; no swap check; oom_score_adj left as it is, since this host cannot
lower it) and kube-proxy (iptables mode). The files they read are rendered here too.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from meshfed.backends.host.binaries import Binaries
from meshfed.backends.host.network import NodeNetwork
from meshfed.backends.host.supervisor import Component, HttpProbe

PAUSE_IMAGE = "meshfed.local/pause:3.10"


@dataclass(frozen=True)
class ClusterFiles:
    """A cluster's folder (``<cache>/host/meshes/<prefix>/clusters/<cluster>``) and what is kept in it."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    def kubeconfig(self, user: str) -> Path:
        return self.root / f"kubeconfig-{user}"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"


def _flags(**values: object) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in values.items()]


def _serving(files: ClusterFiles) -> dict[str, object]:
    """The API server's certificate (it names 127.0.0.1) serves the health endpoints of the controller
    manager and the scheduler too, so their probes verify it against the cluster's CA."""
    return {"tls_cert_file": files.pki / "apiserver.crt", "tls_private_key_file": files.pki / "apiserver.key"}


def etcd(files: ClusterFiles, node: NodeNetwork, bins: Binaries) -> Component:
    return Component(
        "etcd",
        (
            str(bins["etcd"]),
            *_flags(
                name=node.cluster,
                data_dir=files.root / "etcd",
                listen_client_urls="http://127.0.0.1:2379",
                advertise_client_urls="http://127.0.0.1:2379",
                listen_peer_urls="http://127.0.0.1:2380",
                initial_advertise_peer_urls="http://127.0.0.1:2380",
                initial_cluster=f"{node.cluster}=http://127.0.0.1:2380",
                listen_metrics_urls="http://127.0.0.1:2381",
                unsafe_no_fsync="true",  # a test cluster: speed over durability
                log_level="warn",
            ),
        ),
        files.log("etcd"),
        HttpProbe("http://127.0.0.1:2381/health", netns=node.netns),
    )


def api_service_address(node: NodeNetwork) -> str:
    return str(ipaddress.ip_network(node.service_cidr).network_address + 1)


def kube_apiserver(files: ClusterFiles, node: NodeNetwork, bins: Binaries) -> Component:
    pki = files.pki
    return Component(
        "kube-apiserver",
        (
            str(bins["kube-apiserver"]),
            *_flags(
                advertise_address=node.address,
                bind_address="0.0.0.0",
                secure_port=6443,
                etcd_servers="http://127.0.0.1:2379",
                service_cluster_ip_range=node.service_cidr,
                client_ca_file=pki / "ca.crt",
                tls_cert_file=pki / "apiserver.crt",
                tls_private_key_file=pki / "apiserver.key",
                service_account_issuer="https://kubernetes.default.svc.cluster.local",
                service_account_key_file=pki / "sa.pub",
                service_account_signing_key_file=pki / "sa.key",
                kubelet_client_certificate=pki / "apiserver-kubelet-client.crt",
                kubelet_client_key=pki / "apiserver-kubelet-client.key",
                kubelet_preferred_address_types="InternalIP",
                authorization_mode="Node,RBAC",
                allow_privileged="true",
                enable_aggregator_routing="true",  # webhooks reach istiod's pod, not a ClusterIP
                profiling="false",
                v=1,
            ),
        ),
        files.log("kube-apiserver"),
        HttpProbe(f"https://{node.address}:6443/readyz", ca_file=str(pki / "ca.crt")),
        start_timeout=90,
    )


def kube_controller_manager(files: ClusterFiles, node: NodeNetwork, bins: Binaries) -> Component:
    kubeconfig = files.kubeconfig("kube-controller-manager")
    return Component(
        "kube-controller-manager",
        (
            str(bins["kube-controller-manager"]),
            *_flags(
                kubeconfig=kubeconfig,
                authentication_kubeconfig=kubeconfig,
                authorization_kubeconfig=kubeconfig,
                service_account_private_key_file=files.pki / "sa.key",
                root_ca_file=files.pki / "ca.crt",
                cluster_signing_cert_file=files.pki / "ca.crt",
                cluster_signing_key_file=files.pki / "ca.key",
                use_service_account_credentials="true",
                service_cluster_ip_range=node.service_cidr,
                cluster_cidr=node.pod_cidr,
                leader_elect="false",
                bind_address="127.0.0.1",
                **_serving(files),
            ),
        ),
        files.log("kube-controller-manager"),
    )


def kube_scheduler(files: ClusterFiles, node: NodeNetwork, bins: Binaries) -> Component:
    kubeconfig = files.kubeconfig("kube-scheduler")
    return Component(
        "kube-scheduler",
        (
            str(bins["kube-scheduler"]),
            *_flags(
                kubeconfig=kubeconfig,
                authentication_kubeconfig=kubeconfig,
                authorization_kubeconfig=kubeconfig,
                leader_elect="false",
                bind_address="127.0.0.1",
                **_serving(files),
            ),
        ),
        files.log("kube-scheduler"),
        HttpProbe("https://127.0.0.1:10259/healthz", netns=node.netns, ca_file=str(files.pki / "ca.crt")),
    )


def containerd_config(files: ClusterFiles) -> str:
    """containerd 1.6's CRI, its own root/state/socket; oom_score_adj restricted (this host cannot lower it)."""
    base = files.root / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            "[grpc]",
            f'  address = "{files.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{base / "containerd.sock.ttrpc"}"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base / "opt"}"',
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_IMAGE}"',
            "  restrict_oom_score_adj = true",
            "  netns_mounts_under_state_dir = true",
            "  enable_selinux = false",
            f"[{cri}.cni]",
            '  bin_dir = "/usr/lib/cni"',
            f'  conf_dir = "{files.root / "cni"}"',
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            "",
        ]
    )


def cni_config(node: NodeNetwork) -> str:
    """The node's pod network: a bridge, addresses from the cluster's pod CIDR, NAT when leaving the node."""
    return json.dumps(
        {
            "cniVersion": "0.4.0",
            "name": "meshfed",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": True,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": node.pod_cidr}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
        indent=2,
    )


def containerd(files: ClusterFiles, node: NodeNetwork) -> Component:
    return Component(
        "containerd",
        ("containerd", "--config", str(files.root / "containerd" / "config.toml")),
        files.log("containerd"),
        stop_grace=10,
    )


def kubelet_config(files: ClusterFiles, node: NodeNetwork) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(files.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{node.netns}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "oomScoreAdj": 0,
            "clusterDNS": [node.dns_address],
            "clusterDomain": "cluster.local",
            "containerRuntimeEndpoint": f"unix://{files.containerd_socket}",
            "podLogsDir": str(files.root / "pod-logs"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "resolvConf": "",
            "serializeImagePulls": False,
            "imageGCHighThresholdPercent": 100,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "makeIPTablesUtilChains": False,
            "localStorageCapacityIsolation": False,
            "protectKernelDefaults": False,
            "maxPods": 110,
        },
        sort_keys=False,
    )


def kubelet(files: ClusterFiles, node: NodeNetwork, bins: Binaries, region: str, zone: str) -> Component:
    return Component(
        "kubelet",
        (
            str(bins["kubelet"]),
            *_flags(
                config=files.root / "kubelet.yaml",
                kubeconfig=files.kubeconfig("node"),
                root_dir=files.root / "kubelet",
                hostname_override=node.cluster,
                node_ip=node.address,
                node_labels=f"topology.kubernetes.io/region={region},topology.kubernetes.io/zone={zone}",
                v=1,
            ),
        ),
        files.log("kubelet"),
        HttpProbe("http://127.0.0.1:10248/healthz", netns=node.netns),
        start_timeout=60,
    )


def kube_proxy_config(files: ClusterFiles, node: NodeNetwork) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(files.kubeconfig("kube-proxy"))},
            "mode": "iptables",
            "clusterCIDR": node.pod_cidr,
            "hostnameOverride": node.cluster,
            # Service traffic is masqueraded, so a reply from a pod on the same bridge comes back through the node.
            "iptables": {"masqueradeAll": True},
            # The conntrack tables are the host's: leave their sizes and timeouts alone.
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        },
        sort_keys=False,
    )


def kube_proxy(files: ClusterFiles, node: NodeNetwork, bins: Binaries) -> Component:
    return Component(
        "kube-proxy",
        (str(bins["kube-proxy"]), f"--config={files.root / 'kube-proxy.yaml'}"),
        files.log("kube-proxy"),
        HttpProbe("http://127.0.0.1:10256/healthz", netns=node.netns),
    )
