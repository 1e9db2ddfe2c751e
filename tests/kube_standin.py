"""A local stand-in Kubernetes API server, so the real backends' code paths run in CI without a cluster.

Plain HTTP on 127.0.0.1 (a random port); any resource is stored generically by its REST path; errors
are Status objects as the API server writes them. Controllers run synchronously after each write:
Deployments own ReplicaSets own running Pods, Istio's sidecar injector (``injection=True``), a
LoadBalancer allocator (``lb_pool``, as MetalLB), the token controller (a ``service-account-token`` Secret of an
existing ServiceAccount gets its ``ca.crt``, ``namespace`` and ``token``), and garbage collection by owner and by
namespace.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
import string
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from meshfed.options import DEFAULT_ISTIO_VERSION

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
Path = tuple[str, str, str, str | None, str | None, str | None]  # group, version, plural, namespace, name, subresource

INJECT = "sidecar.istio.io/inject"
NODE_IP = "172.18.0.2"
APPLY, MERGE = "application/apply-patch+yaml", "application/merge-patch+json"
STRATEGIC, JSON_PATCH = "application/strategic-merge-patch+json", "application/json-patch+json"
_KINDS = {"namespaces": "Namespace", "nodes": "Node", "pods": "Pod", "services": "Service", "secrets": "Secret"}
_KINDS |= {"configmaps": "ConfigMap", "serviceaccounts": "ServiceAccount", "deployments": "Deployment"}
# DELETE answers with the object for these (the client parses V1Pod, V1Service...), with a Status otherwise
_DELETE_RETURNS_OBJECT = {"pods", "services", "serviceaccounts", "namespaces", "persistentvolumeclaims"}


SA_TOKEN, SA_NAME = "kubernetes.io/service-account-token", "kubernetes.io/service-account.name"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _compact(obj: Obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _pem(seed: str) -> str:
    """A PEM block of deterministic bytes: what a kind cluster's CA certificate looks like to a client."""
    body = base64.b64encode(b"".join(hashlib.sha256(f"{seed}/{i}".encode()).digest() for i in range(15))).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n"


class _Fail(Exception):
    def __init__(self, code: int, reason: str, message: str, **details: str) -> None:
        super().__init__(message)
        self.status = status_object(code, reason, message, details)


def status_object(code: int, reason: str, message: str, details: Obj | None = None) -> Obj:
    """A failure ``Status`` as the API server writes it."""
    failure = {"status": "Failure", "message": message, "reason": reason, "details": details or {}, "code": code}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, **failure}


def _not_allowed(method: str) -> _Fail:
    return _Fail(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource: {method}")


def _owner(kind: str, obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": kind, "name": meta["name"], "uid": meta["uid"], "controller": True}


def _ingress(obj: Obj) -> list[Obj]:
    return obj.get("status", {}).get("loadBalancer", {}).get("ingress", [])  # type: ignore[no-any-return]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, ``null`` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(doc: Any, ops: list[Obj]) -> Any:
    """RFC 6902 add / replace / remove / test."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        if not parts:
            doc = copy.deepcopy(op["value"])
            continue
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last: Any = parts[-1]
        if isinstance(parent, list):
            last = len(parent) if last == "-" else int(last)
        if op["op"] == "add" and isinstance(parent, list):
            parent.insert(last, copy.deepcopy(op["value"]))
        elif op["op"] == "add" or (op["op"] == "replace" and (isinstance(parent, list) or last in parent)):
            parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[last]
        elif op["op"] != "test" or parent[last] != op["value"]:
            raise ValueError(f"{op['op']} at {op['path']} failed")
    return doc


def labels_match(selector: str, labels: dict[str, str]) -> bool:
    """A label selector: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``, ``a notin (x,y)``."""
    for term in (t.strip() for t in re.split(r",(?![^()]*\))", selector)):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            ok = (labels.get(m[1]) in {v.strip() for v in m[3].split(",")}) == (m[2] == "in")
        elif m := re.fullmatch(r"([^!=\s]+)\s*(!=|==|=)\s*(\S*)", term):
            ok = (labels.get(m[1]) == m[3]) == (m[2] != "!=")
        else:
            ok = not term or (term[1:].strip() not in labels if term.startswith("!") else term in labels)
        if not ok:
            return False
    return True


def fields_match(selector: str, obj: Obj) -> bool:
    """A field selector of dotted paths: ``metadata.name=x``, ``status.phase!=Running``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if not (m := re.fullmatch(r"([^!=]+)(!=|==|=)(.*)", term)):
            raise _Fail(400, "BadRequest", f"invalid field selector: {term}")
        actual: Any = obj
        for part in m[1].split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str("" if actual is None else actual) == m[3]) != (m[2] != "!="):
            return False
    return True


def _parse(path: str) -> Path | None:
    """``/api/v1/namespaces/ns/pods/p`` as ("", "v1", "pods", "ns", "p", None); None if not a resource path."""
    parts = [unquote(p) for p in path.split("?")[0].split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    ns = None
    if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        ns, rest = rest[1], rest[2:]
    if not 1 <= len(rest) <= 3:
        return None
    rest += [None, None]  # type: ignore[list-item]
    return group, version, rest[0], ns, rest[1], rest[2]


class KubeApiStandIn:
    """One cluster's API server: start it, point a kubeconfig at it, read back what the client stored."""

    def __init__(
        self,
        cluster: str,
        *,
        lb_pool: list[str] | None = None,
        version: str = "v1.34.0",
        injection: bool = False,
        lb_requires_pool_object: bool = False,
    ) -> None:
        self.cluster, self.version, self.injection = cluster, version, injection
        self.lb_pool, self.lb_requires_pool_object = list(lb_pool or []), lb_requires_pool_object
        self.requests: list[tuple[str, str, str]] = []  # (method, path with query, content type)
        self.fail_next: dict[str, tuple[int, str, str]] = {}  # path prefix -> (code, reason, message), once
        self.forbidden: set[str] = set()  # paths the user's RBAC does not allow: always 403
        self.url = ""
        self._store: dict[Key, Obj] = {}
        self._lock = threading.RLock()
        self._rv = self._pod_ips = self._cluster_ips = 0
        self._random = random.Random(cluster)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for ns in ("default", "kube-system", "kube-public"):
            self._create(("", "namespaces", "", ns), {"apiVersion": "v1", "kind": "Namespace"}, "v1")
        node = f"{cluster}-control-plane"
        labels = {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "node-role.kubernetes.io/control-plane": "",
        }
        addresses = [{"type": "InternalIP", "address": NODE_IP}, {"type": "Hostname", "address": node}]
        status = {"addresses": addresses, "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}
        self._create(("", "nodes", "", node), {"kind": "Node", "metadata": {"labels": labels}, "status": status}, "v1")

    def start(self) -> KubeApiStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.stand_in = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name=f"kube-{self.cluster}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> KubeApiStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kubeconfig(self, context: str | None = None) -> str:
        """A kubeconfig (YAML) whose cluster, user and current context are all named ``context``."""
        name = context or f"kind-{self.cluster}"
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": name,
                "clusters": [{"name": name, "cluster": {"server": self.url}}],
                "users": [{"name": name, "user": {"token": "stand-in"}}],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
            }
        )

    def object(self, path: str) -> Obj | None:
        """The stored object at an item path, e.g. ``/api/v1/namespaces/istio-system/secrets/cacerts``."""
        group, _, plural, ns, name, _ = _parse(path) or ("", "", "", None, None, None)
        with self._lock:
            return copy.deepcopy(self._store.get((group, plural, ns or "", name or "")))

    def objects(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every stored object of ``kind`` (``Pod``), optionally only those in ``namespace``."""
        with self._lock:
            found = [o for (_, _, ns, _), o in self._store.items() if o.get("kind") == kind and namespace in (None, ns)]
            return copy.deepcopy(found)

    # -- the REST surface -----------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, content_type: str, body: bytes) -> tuple[int, Any]:
        """Answer one request: the status code and the JSON body."""
        with self._lock:
            self.requests.append((method, raw_path, content_type))
            if urlsplit(raw_path).path in self.forbidden:
                message = f'{raw_path} is forbidden: User "reader" cannot get it'
                return 403, status_object(403, "Forbidden", message)
            for prefix in list(self.fail_next):
                if raw_path.startswith(prefix):
                    code, reason, message = self.fail_next.pop(prefix)
                    return code, status_object(code, reason, message)
            url = urlsplit(raw_path)
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            ctype = content_type.split(";")[0].strip()
            try:
                if url.path.rstrip("/") == "/version":  # VersionApi asks for /version/
                    major, minor = self.version.lstrip("v").split(".")[:2]
                    build = {"gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2025-08-27T00:00:00Z"}
                    build |= {"goVersion": "go1.24.6", "compiler": "gc", "platform": "linux/amd64"}
                    return 200, {"major": major, "minor": minor, "gitVersion": self.version, **build}
                if (path := _parse(url.path)) is None:
                    raise _Fail(404, "NotFound", "the server could not find the requested resource")
                try:
                    doc = yaml.safe_load(body) if ctype.endswith("yaml") else json.loads(body) if body else None
                except (ValueError, yaml.YAMLError) as error:
                    raise _Fail(400, "BadRequest", f"the request body could not be decoded: {error}") from None
                if method in ("POST", "PUT") and not isinstance(doc, dict):
                    raise _Fail(400, "BadRequest", "the request body must be an object")
                answer = self._item(method, path, ctype, doc) if path[4] else self._collection(method, path, query, doc)
                if method != "GET":
                    self._reconcile()
                return answer
            except _Fail as failure:
                return failure.status["code"], failure.status
            except Exception as error:  # a stand-in bug or an odd request: answer rather than hang the client
                return 500, status_object(500, "InternalError", f"stand-in failure: {error!r}")

    def _collection(self, method: str, path: Path, query: dict[str, str], doc: Any) -> tuple[int, Obj]:
        group, version, plural, ns, _, _ = path
        api_version = f"{group}/{version}" if group else version
        if method == "GET" and query.get("watch") in ("true", "1"):
            raise _Fail(405, "MethodNotAllowed", "the stand-in does not serve watches")
        if method == "GET":
            labels, fields = query.get("labelSelector", ""), query.get("fieldSelector", "")
            items = [
                copy.deepcopy(o)
                for (g, pl, n, _), o in self._store.items()
                if (g, pl) == (group, plural) and ns in (None, n) and fields_match(fields, o)
                if labels_match(labels, o["metadata"].get("labels", {}))
            ]
            kind = items[0]["kind"] if items else _KINDS.get(plural, plural.rstrip("s").capitalize())
            meta = {"resourceVersion": str(self._rv)}
            return 200, {"apiVersion": api_version, "kind": f"{kind}List", "metadata": meta, "items": items}
        if method != "POST":
            raise _not_allowed(method)
        meta = doc.setdefault("metadata", {})
        if "name" not in meta and "generateName" in meta:
            meta["name"] = meta["generateName"] + "".join(self._random.choices(string.ascii_lowercase, k=5))
        if ns is not None and meta.setdefault("namespace", ns) != ns:
            message = "the namespace of the provided object does not match the namespace sent on the request"
            raise _Fail(400, "BadRequest", message)
        key = (group, plural, ns or "", meta.get("name", ""))
        if key in self._store:
            resource = f"{plural}.{group}" if group else plural
            raise _Fail(
                409, "AlreadyExists", f'{resource} "{key[3]}" already exists', name=key[3], group=group, kind=plural
            )
        return 201, self._create(key, doc, api_version)

    def _item(self, method: str, path: Path, ctype: str, doc: Any) -> tuple[int, Obj]:
        group, version, plural, ns, name, sub = path
        key: Key = (group, plural, ns or "", name or "")
        current, resource = self._store.get(key), f"{plural}.{group}" if group else plural
        if sub == "scale" and plural == "deployments" and current is not None:
            return self._scale(key, current, method, ctype, doc)
        apply = method == "PATCH" and ctype == APPLY
        if apply and not (isinstance(doc, dict) and doc.get("apiVersion") and doc.get("kind")):
            raise _Fail(400, "BadRequest", "an apply patch must be an object with apiVersion and kind")
        if apply and current is None and sub is None:
            return 201, self._create(key, doc or {}, f"{group}/{version}" if group else version)
        if current is None or sub not in (None, "status"):
            raise _Fail(404, "NotFound", f'{resource} "{name}" not found', name=name or "", group=group, kind=plural)
        if method == "GET":
            return 200, copy.deepcopy(current)
        if method == "DELETE":
            self._delete(key)
            if plural in _DELETE_RETURNS_OBJECT:
                return 200, current
            details = {"name": name, "group": group, "kind": plural, "uid": current["metadata"]["uid"]}
            return 200, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}
        if method == "PUT":
            if doc.get("metadata", {}).get("resourceVersion") not in (None, "", current["metadata"]["resourceVersion"]):
                message = f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; please apply your changes to the latest version and try again'
                raise _Fail(409, "Conflict", message, name=name or "", group=group, kind=plural)
            new = doc
        elif method == "PATCH" and ctype in (APPLY, MERGE, STRATEGIC):  # strategic merge: lists replace, as in JSON
            new = merge_patch(current, doc)
        elif method == "PATCH" and ctype == JSON_PATCH:
            try:
                new = json_patch(current, doc or [])
            except (KeyError, IndexError, ValueError, TypeError) as error:
                raise _Fail(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {error}"
                ) from None
        elif method == "PATCH":
            message = f"the body of the request was in an unknown format - accepted media types include: {JSON_PATCH}, {MERGE}, {APPLY}, {STRATEGIC}"
            raise _Fail(415, "UnsupportedMediaType", message)
        else:
            raise _not_allowed(method)
        if sub == "status":  # only the status changes through the status subresource, only it keeps it otherwise
            new = {**current, "status": new.get("status")}
        elif "status" in current:
            new = {**new, "status": current["status"]}
        new.setdefault("metadata", {}).update(name=name, **({"namespace": ns} if ns else {}))
        return 200, self._write(key, new)

    def _scale(self, key: Key, deployment: Obj, method: str, ctype: str, doc: Any) -> tuple[int, Obj]:
        """A Deployment's ``scale`` subresource, an autoscaling/v1 Scale."""
        if method in ("PUT", "PATCH"):
            patch = json_patch if ctype == JSON_PATCH else merge_patch
            scale = doc if method == "PUT" else patch(self._scale_of(deployment), doc)
            self._write(key, merge_patch(deployment, {"spec": {"replicas": scale["spec"]["replicas"]}}))
        elif method != "GET":
            raise _not_allowed(method)
        return 200, self._scale_of(self._store[key])

    @staticmethod
    def _scale_of(deployment: Obj) -> Obj:
        meta = {k: deployment["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")}
        labels = deployment["spec"].get("selector", {}).get("matchLabels", {})
        replicas = deployment["spec"].get("replicas", 1)
        status = {"replicas": replicas, "selector": ",".join(f"{k}={v}" for k, v in labels.items())}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": meta,
            "spec": {"replicas": replicas},
            "status": status,
        }

    # -- storage --------------------------------------------------------------------------------
    def _create(self, key: Key, obj: Obj, api_version: str) -> Obj:
        """Admission (defaults, allocations, injection, the kubelet's status for pods), then store."""
        group, plural, ns, name = key
        if ns and ("", "namespaces", "", ns) not in self._store:
            raise _Fail(404, "NotFound", f'namespaces "{ns}" not found', name=ns, kind="namespaces")
        obj = copy.deepcopy(obj)
        obj.setdefault("apiVersion", api_version)
        obj.setdefault("kind", _KINDS.get(plural, plural.rstrip("s").capitalize()))
        obj.setdefault("metadata", {}).update(name=name, **({"namespace": ns} if ns else {}))
        if (group, plural) == ("", "namespaces"):
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj.setdefault("status", {"phase": "Active"})
        elif (group, plural) == ("apps", "deployments"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)
        elif (group, plural) == ("", "services"):
            spec, _ = obj.setdefault("spec", {}), obj.setdefault("status", {"loadBalancer": {}})
            if spec.get("type") != "ExternalName" and "clusterIP" not in spec:
                self._cluster_ips += 1
                spec["clusterIP"] = f"10.96.{self._cluster_ips // 250}.{self._cluster_ips % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
        elif (group, plural) == ("", "secrets") and obj.get("type") == SA_TOKEN:
            self._token(obj, ns)
        elif (group, plural) == ("", "pods"):
            if self.injection:
                self._inject(obj, self._store[("", "namespaces", "", ns)]["metadata"].get("labels", {}))
            self._run(obj)
        return self._write(key, obj)

    def _write(self, key: Key, obj: Obj) -> Obj:
        """Store ``obj`` with the server's metadata; a write that changes nothing keeps the resourceVersion."""
        obj, old = copy.deepcopy(obj), self._store.get(key)
        meta = obj.setdefault("metadata", {})
        if old is None:
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        else:
            meta.update({k: old["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "resourceVersion")})
            if obj == old:
                return copy.deepcopy(old)
            meta["generation"] += int(obj.get("spec") != old.get("spec"))
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._store[key] = obj
        return copy.deepcopy(obj)

    def _delete(self, key: Key) -> None:
        """Remove an object, what it owns (garbage collection) and, for a namespace, all in it."""
        if (gone := self._store.pop(key, None)) is None:
            return
        for other, obj in list(self._store.items()):
            owned = any(ref.get("uid") == gone["metadata"]["uid"] for ref in obj["metadata"].get("ownerReferences", []))
            if owned or (key[:2] == ("", "namespaces") and other[2] == key[3]):
                self._delete(other)

    # -- controllers ----------------------------------------------------------------------------
    def _owned(self, group: str, plural: str, owner: Obj) -> list[tuple[Key, Obj]]:
        uid = owner["metadata"]["uid"]
        refs = {k: [r.get("uid") for r in o["metadata"].get("ownerReferences", [])] for k, o in self._store.items()}
        return [(k, self._store[k]) for k, uids in refs.items() if k[:2] == (group, plural) and uid in uids]

    def _reconcile(self) -> None:
        """Deployments, ReplicaSets, then LoadBalancer Services, as their controllers would."""
        for key, deploy in [(k, o) for k, o in self._store.items() if k[:2] == ("apps", "deployments")]:
            spec, ns, replicas = deploy["spec"], key[2], deploy["spec"].get("replicas", 1)
            digest = hashlib.sha256(json.dumps(spec.get("template", {}), sort_keys=True).encode())
            template_hash = digest.hexdigest()[:10]
            rs_key = ("apps", "replicasets", ns, f"{key[3]}-{template_hash}")
            for old_key, rs in self._owned("apps", "replicasets", deploy):
                if old_key != rs_key:  # a previous template: scaled to zero, kept as history
                    self._write(old_key, merge_patch(rs, {"spec": {"replicas": 0}}))
            if rs_key not in self._store:
                hashed = {"pod-template-hash": template_hash}
                template = merge_patch(spec.get("template", {}), {"metadata": {"labels": hashed}})
                selector = merge_patch(spec.get("selector", {}), {"matchLabels": hashed})
                meta = {"labels": template["metadata"]["labels"], "ownerReferences": [_owner("Deployment", deploy)]}
                rs_spec = {"selector": selector, "template": template}
                self._create(rs_key, {"kind": "ReplicaSet", "metadata": meta, "spec": rs_spec}, "apps/v1")
            self._write(rs_key, merge_patch(self._store[rs_key], {"spec": {"replicas": replicas}}))
            counts = dict.fromkeys(("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"), replicas)
            progressed = f'ReplicaSet "{rs_key[3]}" has successfully progressed.'
            reasons = [("Available", "MinimumReplicasAvailable", "Deployment has minimum availability.")]
            reasons.append(("Progressing", "NewReplicaSetAvailable", progressed))
            conditions = [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in reasons]
            status = {"observedGeneration": deploy["metadata"]["generation"], **counts, "conditions": conditions}
            self._write(key, {**deploy, "status": {k: v for k, v in status.items() if v != 0}})
        for key, rs in [(k, o) for k, o in self._store.items() if k[:2] == ("apps", "replicasets")]:
            pods, want = self._owned("", "pods", rs), rs["spec"].get("replicas", 1)
            for pod_key, _ in pods[want:]:
                self._delete(pod_key)
            for _ in range(want - len(pods)):
                name = f"{key[3]}-{''.join(self._random.choices(string.ascii_lowercase, k=5))}"
                template = rs["spec"].get("template", {})
                meta = {**template.get("metadata", {}), "ownerReferences": [_owner("ReplicaSet", rs)]}
                pod = {"kind": "Pod", "metadata": meta, "spec": template.get("spec", {})}
                self._create(("", "pods", key[2], name), pod, "v1")
            counts = dict.fromkeys(("replicas", "fullyLabeledReplicas", "readyReplicas", "availableReplicas"), want)
            status = {"observedGeneration": rs["metadata"]["generation"], **counts}
            self._write(key, {**self._store[key], "status": {k: v for k, v in status.items() if v != 0}})
        if self.lb_requires_pool_object and not any(k[:2] == ("metallb.io", "ipaddresspools") for k in self._store):
            return
        used = {ingress.get("ip") for obj in self._store.values() for ingress in _ingress(obj)}
        for key, svc in [(k, o) for k, o in self._store.items() if k[:2] == ("", "services")]:
            free = [address for address in self.lb_pool if address not in used]
            if svc["spec"].get("type") == "LoadBalancer" and free and not _ingress(svc):
                used.add(free[0])
                ingress = [{"ip": free[0], "ipMode": "VIP"}]
                self._write(key, merge_patch(svc, {"status": {"loadBalancer": {"ingress": ingress}}}))

    def _token(self, secret: Obj, ns: str) -> None:
        """The token controller, in outline: a ``service-account-token`` Secret naming an existing ServiceAccount
        gets the cluster's CA, the namespace and a signed token of that account (one naming none stays empty)."""
        meta = secret["metadata"]
        annotations = meta.setdefault("annotations", {})
        account = self._store.get(("", "serviceaccounts", ns, annotations.get(SA_NAME, "")))
        if account is None or (secret.get("data") or {}).get("token"):
            return
        annotations["kubernetes.io/service-account.uid"] = account["metadata"]["uid"]
        claims = {
            "iss": "kubernetes/serviceaccount",
            "kubernetes.io/serviceaccount/namespace": ns,
            "kubernetes.io/serviceaccount/secret.name": meta["name"],
            "kubernetes.io/serviceaccount/service-account.name": annotations[SA_NAME],
            "kubernetes.io/serviceaccount/service-account.uid": account["metadata"]["uid"],
            "sub": f"system:serviceaccount:{ns}:{annotations[SA_NAME]}",
        }
        header = {"alg": "RS256", "kid": hashlib.sha256(self.cluster.encode()).hexdigest()[:43]}
        signature = hashlib.sha512(json.dumps(claims, sort_keys=True).encode()).digest() * 4
        token = ".".join(_b64url(part) for part in (_compact(header), _compact(claims), signature))
        secret["data"] = {
            key: base64.b64encode(value.encode()).decode()
            for key, value in (("ca.crt", _pem(f"{self.cluster}/ca")), ("namespace", ns), ("token", token))
        }

    @staticmethod
    def _inject(pod: Obj, ns_labels: dict[str, str]) -> None:
        """Istio's sidecar injector webhook, in outline: the containers, labels and annotations (Istio 1.30's
        injection template: the revision is the ``istio.io/rev`` annotation, not a label)."""
        meta, spec = pod["metadata"], pod.setdefault("spec", {})
        labels, annotations = meta.setdefault("labels", {}), meta.setdefault("annotations", {})
        mode, rev = ns_labels.get("istio-injection"), ns_labels.get("istio.io/rev") or labels.get("istio.io/rev")
        if "false" in (labels.get(INJECT), annotations.get(INJECT)) or mode == "disabled":
            return
        if mode == "enabled" or (not rev and labels.get(INJECT) == "true"):
            rev = "default"
        if not rev or any(c.get("name") == "istio-proxy" for c in spec.get("containers", [])):
            return
        image = f"docker.io/istio/proxyv2:{DEFAULT_ISTIO_VERSION}"
        spec.setdefault("initContainers", []).append({"name": "istio-init", "image": image, "args": ["istio-iptables"]})
        spec.setdefault("containers", []).append({"name": "istio-proxy", "image": image, "args": ["proxy", "sidecar"]})
        labels["security.istio.io/tlsMode"] = "istio"
        annotations["istio.io/rev"] = rev  # the real injector writes the revision as an annotation
        app = labels.get("app") or labels.get("app.kubernetes.io/name") or meta["name"]
        labels["service.istio.io/canonical-name"] = app
        labels["service.istio.io/canonical-revision"] = labels.get("version", "latest")
        injected = {"initContainers": ["istio-init"], "containers": ["istio-proxy"], "revision": rev}
        annotations["sidecar.istio.io/status"] = json.dumps(injected)

    def _run(self, pod: Obj) -> None:
        """The scheduler and kubelet, in outline: on the node, running and ready, with an address of its own."""
        spec = pod.setdefault("spec", {})
        spec.setdefault("nodeName", f"{self.cluster}-control-plane")
        if pod.get("status", {}).get("phase"):
            return
        self._pod_ips += 1
        ip, now = f"10.244.{self._pod_ips // 250}.{self._pod_ips % 250 + 2}", _now()

        def statuses(containers: list[Obj], state: Obj) -> list[Obj]:
            common = {"imageID": "", "ready": True, "restartCount": 0, "state": state}
            return [{"name": c["name"], "image": c.get("image", ""), **common} for c in containers]

        ready = [{"type": t, "status": "True"} for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]
        pod["status"] = {"phase": "Running", "hostIP": NODE_IP, "podIP": ip, "podIPs": [{"ip": ip}], "startTime": now}
        pod["status"]["conditions"] = ready
        pod["status"]["containerStatuses"] = statuses(spec.get("containers", []), {"running": {"startedAt": now}})
        if spec.get("initContainers"):
            done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
            pod["status"]["initContainerStatuses"] = statuses(spec["initContainers"], done)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as urllib3's pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        stand_in: KubeApiStandIn = self.server.stand_in  # type: ignore[attr-defined]
        code, answer = stand_in.handle(self.command, self.path, self.headers.get("Content-Type", ""), body)
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the stand-in's requests are in ``KubeApiStandIn.requests``."""
