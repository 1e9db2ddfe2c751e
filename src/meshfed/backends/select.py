"""The backend the options ask for."""

from __future__ import annotations

from meshfed.backends import tools
from meshfed.backends.base import Backend
from meshfed.backends.embedded.mesh import EmbeddedBackend
from meshfed.backends.existing import ExistingBackend
from meshfed.backends.host.backend import HostBackend
from meshfed.backends.kind import KindBackend
from meshfed.options import SuiteOptions


def backend_for(options: SuiteOptions) -> Backend:
    if options.backend == "kind":
        return KindBackend(
            options.istio_version,
            upgrade_to=options.upgrade_to,
            keep_clusters=options.keep_clusters,
            node_image=options.node_image or tools.NODE_IMAGE,
            istio_hub=options.istio_hub,
            istio_tag=options.istio_tag,
        )
    if options.backend == "existing":
        return existing_backend(options)
    if options.backend == "host":
        return HostBackend(
            options.istio_version,
            bin_dir=options.bin_dir,
            envoy=options.envoy,
            keep_clusters=options.keep_clusters,
            upgrade_to=options.upgrade_to,
            prefix=options.host_prefix,
        )
    return EmbeddedBackend()


def existing_backend(options: SuiteOptions) -> ExistingBackend:
    # The contexts are read from $KUBECONFIG (or ~/.kube/config), as kubectl reads them.
    return ExistingBackend(
        options.contexts,
        control_plane_namespace=options.control_plane_namespace,
        external_context=options.external_context,
        revision=options.revision,
        istioctl=options.istioctl,
        kubectl=options.kubectl,
    )
