"""A cluster's object store: what the embedded mesh has instead of an API server and etcd.

It keeps plain dicts by kind, namespace and name; applies, merges (JSON merge patch, RFC 7386),
lists by label, deletes (a Namespace takes its objects with it) and tells watchers of every change.
It knows the kinds the suite uses and refuses any other with a sentence naming it.
"""

from __future__ import annotations

import copy
import itertools
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from meshfed.manifests import Obj

# kind -> (accepted apiVersions, namespaced)
KINDS: dict[str, tuple[tuple[str, ...], bool]] = {
    "Namespace": (("v1",), False),
    "Secret": (("v1",), True),
    "ConfigMap": (("v1",), True),
    "ServiceAccount": (("v1",), True),
    "Service": (("v1",), True),
    "EndpointSlice": (("discovery.k8s.io/v1",), True),
    "Pod": (("v1",), True),
    "Deployment": (("apps/v1",), True),
    "Gateway": (("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"), True),
    "VirtualService": (("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"), True),
    "DestinationRule": (
        ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"),
        True,
    ),
    "PeerAuthentication": (("security.istio.io/v1", "security.istio.io/v1beta1"), True),
    "AuthorizationPolicy": (("security.istio.io/v1", "security.istio.io/v1beta1"), True),
    "IstioOperator": (("install.istio.io/v1alpha1",), True),
    "MutatingWebhookConfiguration": (("admissionregistration.k8s.io/v1",), False),
}

Event = str  # "ADDED" | "MODIFIED" | "DELETED"
Watcher = Callable[[Event, Obj], None]


class StoreError(Exception):
    """An object the store cannot take; the message says which and why, as kubectl would."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge, ``None`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def matches(labels: Mapping[str, str] | None, selector: Mapping[str, str] | None) -> bool:
    if not selector:
        return True
    labels = labels or {}
    return all(labels.get(key) == value for key, value in selector.items())


class ObjectStore:
    def __init__(self, cluster: str) -> None:
        self.cluster = cluster
        self._objects: dict[tuple[str, str, str], Obj] = {}
        self._lock = threading.RLock()
        self._watchers: list[Watcher] = []
        self._versions = itertools.count(1)

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def unwatch(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)

    def _notify(self, event: Event, obj: Obj) -> None:
        for watcher in list(self._watchers):
            watcher(event, obj)

    def _key(self, kind: str, name: str, namespace: str | None) -> tuple[str, str, str]:
        if kind not in KINDS:
            known = ", ".join(sorted(KINDS))
            raise StoreError(f"the embedded mesh cannot interpret kind {kind!r}; it knows {known}")
        namespaced = KINDS[kind][1]
        if namespaced and not namespace:
            raise StoreError(f"{kind} {name!r} needs a namespace")
        return kind, (namespace or "") if namespaced else "", name

    def _check(self, obj: Obj) -> tuple[str, str, str]:
        kind = obj.get("kind", "")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise StoreError(f"a {kind or 'object'} without metadata.name cannot be applied")
        key = self._key(kind, name, meta.get("namespace"))
        versions = KINDS[kind][0]
        if obj.get("apiVersion") not in versions:
            raise StoreError(f"{kind} {name!r} has apiVersion {obj.get('apiVersion')!r}; use {versions[0]}")
        if key[1] and kind != "Namespace" and ("Namespace", "", key[1]) not in self._objects:
            raise StoreError(f'namespaces "{key[1]}" not found (creating {kind} {name!r})')
        return key

    def apply(self, obj: Obj) -> Obj:
        """Create or update (``kubectl apply``); returns the stored object."""
        with self._lock:
            key = self._check(obj)
            old = self._objects.get(key)
            new = copy.deepcopy(obj)
            meta = new.setdefault("metadata", {})
            if old is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                meta["generation"] = 1
            else:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                changed = {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
                    k: v for k, v in old.items() if k not in ("metadata", "status")
                }
                meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
                if "status" not in new and "status" in old:
                    new["status"] = old["status"]
            meta["resourceVersion"] = str(next(self._versions))
            self._objects[key] = new
            result = copy.deepcopy(new)
        self._notify("ADDED" if old is None else "MODIFIED", result)
        return result

    def set_status(self, kind: str, name: str, namespace: str | None, status: Obj) -> None:
        """What a controller writes (pod IPs, readiness, load balancer addresses)."""
        with self._lock:
            key = self._key(kind, name, namespace)
            obj = self._objects.get(key)
            if obj is None:
                return
            obj["status"] = copy.deepcopy(status)
            obj["metadata"]["resourceVersion"] = str(next(self._versions))
            result = copy.deepcopy(obj)
        self._notify("MODIFIED", result)

    def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        with self._lock:
            obj = self._objects.get(self._key(kind, name, namespace))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, kind: str, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> list[Obj]:
        self._key(kind, "-", namespace or "-")
        with self._lock:
            found = [
                copy.deepcopy(obj)
                for (k, ns, _), obj in sorted(self._objects.items())
                if k == kind
                and (namespace is None or ns == namespace)
                and matches(obj["metadata"].get("labels"), labels)
            ]
        return found

    def patch(self, kind: str, name: str, namespace: str | None, patch: Obj) -> Obj:
        current = self.get(kind, name, namespace)
        if current is None:
            raise StoreError(f'{kind} "{name}" not found in {namespace or "the cluster"}')
        merged = merge_patch(current, patch)
        merged["metadata"]["name"], merged["kind"] = name, kind
        if namespace:
            merged["metadata"]["namespace"] = namespace
        # Watchers run outside the lock: they may make calls whose servers read this store.
        return self.apply(merged)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        with self._lock:
            key = self._key(kind, name, namespace)
            obj = self._objects.pop(key, None)
            if obj is None:
                return False
            doomed = []
            if kind == "Namespace":
                doomed = [k for k in self._objects if k[1] == name]
            removed = [self._objects.pop(k) for k in doomed]
        for child in removed:
            self._notify("DELETED", child)
        self._notify("DELETED", obj)
        return True
