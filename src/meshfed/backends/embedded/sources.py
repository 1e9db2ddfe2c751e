"""Where an istiod reads from: its kube client's cluster, its pod's volumes, the remote-secret watcher's cluster.

A primary's istiod reads everything from the cluster it runs in. An external istiod (Istio's "Install Istio
with an External Control Plane") runs in one cluster and is the control plane of others:

* Its kube client: ``KUBECONFIG=/var/run/secrets/remote/config``, the optional Secret ``istio-kubeconfig``
  (``istioctl create-remote-secret --type=config``) mounted there (``istio-discovery`` chart,
  ``deployment.yaml``). client-go skips a KUBECONFIG file that does not exist and falls back to the in-cluster
  configuration (``ConfigLoadingRules`` in ``pkg/kube/util.go``), so without the Secret istiod reads the
  cluster it runs in under the config cluster's ID. A kubeconfig whose server cannot be reached never syncs:
  istiod does not get ready; nor does one whose token is not the ``istiod`` account's (only that account has
  istiod's ClusterRole there, installed by the remote profile's ``configCluster``: the reader account cannot
  list ingresses, seen on host). That cluster is the one whose ID is ``CLUSTER_ID``: its Services, its Istio
  configuration, its namespaces (``istio-ca-root-cert``), its ``istio`` ConfigMap.
* Its mesh config (``initMeshConfiguration``, ``pilot/pkg/bootstrap/mesh.go``): the file
  ``/etc/istio/config/mesh`` when a ConfigMap is mounted there (the guide's overlay mounts the external
  cluster's ``istio``), else the kube client's ``istio[-<rev>]``; ``SHARED_MESH_CONFIG`` names a ConfigMap
  of the kube client's applied first, the other on top of it.
* Its injection template (``initSidecarInjector``, ``sidecarinjector.go``): the files under
  ``/var/lib/istio/inject`` when mounted, else the kube client's ``istio-sidecar-injector[-<rev>]``; without
  either it serves no injection.
* Its cacerts: the Secret mounted at ``/etc/cacerts``, from the cluster it runs in.
* Remote secrets: watched in its namespace of the kube client's cluster; of the cluster it runs in with
  ``LOCAL_CLUSTER_SECRET_WATCHER`` and ``EXTERNAL_ISTIOD`` (``pkg/kube/multicluster/secretcontroller.go``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from meshfed.backends.embedded.node import MeshServices
from meshfed.backends.embedded.store import ObjectStore
from meshfed.manifests import kubeconfig_server, kubeconfig_token, token_account
from meshfed.pki import bundle_from_secret

MESH_CONFIG_PATH = "/etc/istio/config"
INJECTION_PATH = "/var/lib/istio/inject"
KUBECONFIG_SECRET = "istio-kubeconfig"


class IstiodStartError(Exception):
    """istiod cannot start; the message is what it logs before exiting."""


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").lower() == "true"


def read_mesh_config(store: ObjectStore, namespace: str, name: str) -> dict[str, Any]:
    config_map = store.get("ConfigMap", name, namespace) or {}
    loaded = yaml.safe_load((config_map.get("data") or {}).get("mesh", "") or "{}")
    return loaded if isinstance(loaded, dict) else {}


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` applied over ``base``: maps merge, anything else is replaced (as one mesh config YAML is applied
    over another by ``ApplyMeshConfig``)."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) else value
        )
    return merged


@dataclass(frozen=True)
class Sources:
    home: ObjectStore  # the cluster istiod's pod runs in: its volumes, its in-cluster credentials
    main: ObjectStore  # its kube client's cluster
    main_cluster: str
    namespace: str
    revision: str
    mounts: Mapping[str, str]  # mount path -> the ConfigMap mounted there
    env: Mapping[str, str]

    @classmethod
    def resolve(
        cls,
        mesh: MeshServices,
        home_cluster: str,
        home: ObjectStore,
        namespace: str,
        revision: str,
        mounts: Mapping[str, str],
        env: Mapping[str, str],
    ) -> Sources:
        """istiod's kube client, as it is made at start (later changes to the Secret are read at the next start)."""
        secret = home.get("Secret", KUBECONFIG_SECRET, namespace)
        main, main_cluster = home, home_cluster
        if secret is not None:
            kubeconfig = bundle_from_secret(secret).get("config", b"")
            server = kubeconfig_server(kubeconfig)
            target = mesh.fabric.cluster_of_api_server(server) if server else None
            store = mesh.store_of(target) if target else None
            if store is None or target is None:
                raise IstiodStartError(
                    f"failed to sync the kube client of {namespace}/{KUBECONFIG_SECRET}: "
                    f"{server or 'an unreadable kubeconfig'} cannot be reached"
                )
            account = token_account(kubeconfig_token(kubeconfig))
            if account is not None and account[1] != (f"istiod-{revision}" if revision else "istiod"):
                # Only the istiod account has istiod's ClusterRole there (the remote profile's configCluster);
                # any other (istioctl's default, istio-reader-service-account) cannot list all istiod watches.
                user = f"system:serviceaccount:{account[0]}:{account[1]}"
                raise IstiodStartError(
                    f"watch error in cluster {target}: failed to list *v1.Ingress: ingresses.networking.k8s.io is "
                    f'forbidden: User "{user}" cannot list resource "ingresses" in API group "networking.k8s.io" '
                    "at the cluster scope"
                )
            main, main_cluster = store, target
        return cls(home, main, main_cluster, namespace, revision, dict(mounts), dict(env))

    @property
    def secrets(self) -> ObjectStore:
        """Where the remote-secret watcher looks (in ``namespace``)."""
        local = _flag(self.env, "LOCAL_CLUSTER_SECRET_WATCHER") and _flag(self.env, "EXTERNAL_ISTIOD")
        return self.home if local else self.main

    def _own_name(self, base: str) -> str:
        return f"{base}-{self.revision}" if self.revision else base

    def mesh_config(self) -> dict[str, Any]:
        mounted = self.mounts.get(MESH_CONFIG_PATH)
        if mounted:
            config = read_mesh_config(self.home, self.namespace, mounted)
        else:
            config = read_mesh_config(self.main, self.namespace, self._own_name("istio"))
        shared = self.env.get("SHARED_MESH_CONFIG", "")
        return _merge(read_mesh_config(self.main, self.namespace, shared), config) if shared else config

    def injector_values(self) -> dict[str, Any] | None:
        """The injection template's values; None when istiod has none (it then serves no injection)."""
        mounted = self.mounts.get(INJECTION_PATH)
        store, name = (self.home, mounted) if mounted else (self.main, self._own_name("istio-sidecar-injector"))
        config_map = store.get("ConfigMap", name, self.namespace)
        if config_map is None:
            return None
        loaded = json.loads((config_map.get("data") or {}).get("values") or "{}")
        return loaded if isinstance(loaded, dict) else {}
