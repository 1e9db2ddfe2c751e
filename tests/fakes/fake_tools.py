"""Fake ``kind``, ``docker``, ``istioctl`` and ``kubectl`` for tests: record every call, answer as the real tools do.

``tests/fakes/bin/<tool>`` runs ``python fake_tools.py <tool> ARGS...``. Stdlib and PyYAML only.

Environment protocol (all optional except where a test needs the behaviour):

* ``MESHFED_FAKE_LOG``: JSON-lines file; each call appends ``{"tool", "argv", "stdin", "time"}`` (``stdin`` is
  the text read for commands that read stdin, else null; ``kind create cluster`` adds ``"config"``: the
  config file's content; ``istioctl install`` adds ``"operator"``: the IstioOperator its files and ``--set``
  make). Appends hold an ``fcntl`` lock.
* ``MESHFED_FAKE_STATE``: folder for the fakes' state (``state.json`` under an ``fcntl`` lock): kind
  clusters, their nodes and node IPs. Without it, a ``meshfed-fakes`` folder in the temp dir.
* ``MESHFED_FAKE_APISERVERS``: JSON ``{kind-cluster-name: "http://127.0.0.1:PORT"}``: the API server each
  kind cluster has; kubeconfigs written by ``kind`` point there, and ``istioctl``/``kubectl`` talk
  plain-HTTP Kubernetes REST to the server of the kubeconfig context they are given.
* ``MESHFED_FAKE_FAIL``: if the joined argv contains this substring, the call fails as the real tool does.
* ``MESHFED_FAKE_DOCKER_DOWN=1``: every docker call fails like a stopped daemon.
* ``MESHFED_FAKE_DOCKER_MEM`` (bytes, default 16 GiB), ``MESHFED_FAKE_DOCKER_NCPU`` (default 8),
  ``MESHFED_FAKE_DOCKER_CGROUP`` (``docker info``'s CgroupVersion, default 2), ``MESHFED_FAKE_DOCKER_IMAGES``
  (comma-separated images ``docker image inspect`` finds in the local Docker; default none).
* ``MESHFED_FAKE_KIND_NETWORK=1``: the docker network ``kind`` exists before any cluster was created.
* ``MESHFED_FAKE_ISTIO_VERSION`` (default 1.30.3), ``MESHFED_FAKE_PROXY_SECRET`` (a file printed by
  ``istioctl proxy-config secret ... -o json``), ``MESHFED_FAKE_REMOTE_CLUSTER_STATUS`` (default synced).
* ``MESHFED_FAKE_ANALYZE``: a file ``istioctl analyze -o json`` prints (default ``[]``).
* ``MESHFED_FAKE_PROXY_STATUS_MISSING``: comma-separated name fragments; ``istioctl proxy-status`` leaves
  out the proxies whose ``pod.namespace`` holds one (proxies that lost their xDS stream).
* ``MESHFED_FAKE_CALL_STATUS``: what ``kubectl exec ... echo.py call`` reports: an HTTP status (503 gives
  Envoy's upstream-connect-error body), ``timeout`` or ``refused``. ``MESHFED_FAKE_CALL_REPLY``: a JSON
  object (or list of objects, used in turn) overriding fields of each echo reply.

Kubeconfig lookup (kubectl, istioctl): ``--kubeconfig``, else ``$KUBECONFIG`` (colon list), else
``<state>/kubeconfig``: the fakes never read or write the real ``~/.kube``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

KIND_VERSION = "0.31.0"
KIND_IMAGE = "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
KUBECTL_VERSION = {"major": "1", "minor": "34", "gitVersion": "v1.34.1"}
DOCKER_VERSION = "28.5.1"
ISTIO_NAMESPACE = "istio-system"
INJECT_LABEL = "sidecar.istio.io/inject"
READER_SA = "istio-reader-service-account"  # the base chart's, what create-remote-secret reads a cluster as
CONFIG_SA = "istiod"  # create-remote-secret --type=config's default: the remote istiod's own, on a config cluster
KIND_SUBNET_V4 = "172.18.0.0/16"
KIND_SUBNET_V6 = "fc00:f853:ccd:e793::/64"

Obj = dict[str, Any]


class ToolExit(Exception):
    """Ends the call: ``stderr`` text (without a final newline) and the exit code."""

    def __init__(self, stderr: str, code: int = 1) -> None:
        super().__init__(stderr)
        self.stderr = stderr
        self.code = code


class ApiError(Exception):
    def __init__(self, status: int, body: Obj | None, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.body = body or {}

    @property
    def reason(self) -> str:
        return str(self.body.get("reason") or {404: "NotFound", 409: "AlreadyExists"}.get(self.status, "InternalError"))

    @property
    def message(self) -> str:
        return str(self.body.get("message") or self.args[0])


class ConnectError(Exception):
    def __init__(self, server: str, error: Exception) -> None:
        super().__init__(f"{server}: {error}")
        self.server = server
        self.hostport = urllib.parse.urlsplit(server).netloc


# ---------------------------------------------------------------- environment, log, state


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def state_dir() -> Path:
    path = Path(_env("MESHFED_FAKE_STATE") or Path(tempfile.gettempdir()) / "meshfed-fakes")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_call(entry: Obj) -> None:
    path = _env("MESHFED_FAKE_LOG")
    if not path:
        return
    line = json.dumps(entry, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.write(line)
            handle.flush()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _empty_state() -> Obj:
    return {"clusters": [], "nextIp": 2, "kindNetwork": False}


@contextlib.contextmanager
def state(write: bool = False) -> Iterator[Obj]:
    folder = state_dir()
    path = folder / "state.json"
    with _locked(folder / "state.lock"):
        data = json.loads(path.read_text()) if path.exists() and path.stat().st_size else _empty_state()
        yield data
        if write:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2))
            tmp.replace(path)


def apiservers() -> dict[str, str]:
    text = _env("MESHFED_FAKE_APISERVERS")
    return json.loads(text) if text else {}


def injected_failure(argv: list[str]) -> bool:
    needle = _env("MESHFED_FAKE_FAIL")
    return bool(needle) and needle in " ".join(argv)


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str = "") -> None:
    sys.stderr.write(text + "\n")


def _hex(seed: str, length: int = 64) -> str:
    digest = ""
    counter = 0
    while len(digest) < length:
        digest += hashlib.sha256(f"{seed}/{counter}".encode()).hexdigest()
        counter += 1
    return digest[:length]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- cobra-style flags


@dataclass
class FlagSpec:
    """Flags a tool knows: value flags (``--f v``, ``--f=v``, ``-f v``, ``-fv``), booleans, optional values."""

    values: set[str]
    bools: set[str]
    optional: set[str] = field(default_factory=set)  # NoOptDefVal flags: value only with ``=``
    aliases: dict[str, str] = field(default_factory=dict)  # short or alternate name -> canonical

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)


@dataclass
class Parsed:
    args: list[str]
    flags: dict[str, list[str]]
    after_dash: list[str] | None  # the words after ``--``

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self.flags.get(name)
        return values[-1] if values else default

    def all(self, name: str) -> list[str]:
        return self.flags.get(name, [])

    def bool(self, name: str) -> bool:
        value = self.get(name)
        return value is not None and value.lower() not in ("false", "0", "f")


class FlagError(Exception):
    pass


def parse_flags(argv: list[str], spec: FlagSpec, interspersed: bool = True) -> Parsed:
    args: list[str] = []
    flags: dict[str, list[str]] = {}
    after_dash: list[str] | None = None
    i = 0

    def put(name: str, value: str) -> None:
        flags.setdefault(spec.canonical(name), []).append(value)

    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            after_dash = argv[i:]
            break
        if not interspersed and args:
            args.append(word)
            continue
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word[2:].partition("=")
            canon = spec.canonical(name)
            if canon in spec.values:
                if not eq:
                    if i >= len(argv):
                        raise FlagError(f"flag needs an argument: --{name}")
                    value = argv[i]
                    i += 1
                put(name, value)
            elif canon in spec.bools or canon in spec.optional:
                put(name, value if eq else "true")
            else:
                raise FlagError(f"unknown flag: --{name}")
        elif word.startswith("-") and len(word) > 1 and word != "-":
            letters = word[1:]
            while letters:
                letter, letters = letters[0], letters[1:]
                canon = spec.canonical(letter)
                if canon in spec.values:
                    value = letters[1:] if letters.startswith("=") else letters
                    if not letters:
                        if i >= len(argv):
                            raise FlagError(f"flag needs an argument: '{letter}' in -{letter}")
                        value = argv[i]
                        i += 1
                    put(letter, value)
                    letters = ""
                elif canon in spec.bools or canon in spec.optional:
                    if letters.startswith("="):
                        put(letter, letters[1:])
                        letters = ""
                    else:
                        put(letter, "true")
                else:
                    raise FlagError(f"unknown shorthand flag: '{letter}' in {word}")
        else:
            args.append(word)
    return Parsed(args, flags, after_dash)


# ---------------------------------------------------------------- kubeconfig and the Kubernetes API


def kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    env = _env("KUBECONFIG")
    if env:
        return [Path(p) for p in env.split(os.pathsep) if p]
    return [state_dir() / "kubeconfig"]


def load_kubeconfig(explicit: str | None) -> Obj:
    merged: Obj = {"clusters": [], "contexts": [], "users": [], "current-context": ""}
    for path in kubeconfig_paths(explicit):
        if not path.exists():
            if explicit:
                raise ToolExit(f"error: stat {path}: no such file or directory")
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for key in ("clusters", "contexts", "users"):
            known = {item["name"] for item in merged[key]}
            merged[key] += [item for item in data.get(key) or [] if item.get("name") not in known]
        merged["current-context"] = merged["current-context"] or data.get("current-context", "")
    return merged


@dataclass
class Target:
    context: str
    cluster: str
    server: str
    namespace: str
    config: Obj


def resolve_target(context: str | None, kubeconfig: str | None, error_prefix: str = "error") -> Target:
    config = load_kubeconfig(kubeconfig)
    name = context or config.get("current-context") or ""
    if not name:
        raise ToolExit(f"{error_prefix}: current-context is not set")
    found = next((c for c in config["contexts"] if c.get("name") == name), None)
    if found is None:
        raise ToolExit(f'{error_prefix}: context "{name}" does not exist')
    ctx = found.get("context") or {}
    cluster = next((c for c in config["clusters"] if c.get("name") == ctx.get("cluster")), None)
    if cluster is None:
        raise ToolExit(f'{error_prefix}: cluster "{ctx.get("cluster")}" does not exist')
    server = str((cluster.get("cluster") or {}).get("server", ""))
    return Target(name, str(ctx.get("cluster")), server, str(ctx.get("namespace") or "default"), config)


def api(server: str, method: str, path: str, body: Obj | None = None, content_type: str = "application/json") -> Obj:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(server.rstrip("/") + path, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as error:
        text = error.read().decode(errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        raise ApiError(error.code, parsed if isinstance(parsed, dict) else None, text or str(error)) from None
    except (urllib.error.URLError, OSError) as error:
        raise ConnectError(server, error) from None
    return json.loads(text) if text.strip() else {}


CLUSTER_SCOPED = {
    "Namespace",
    "Node",
    "PersistentVolume",
    "StorageClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "PriorityClass",
    "APIService",
    "IngressClass",
    "GatewayClass",
}
IRREGULAR_PLURALS = {"Endpoints": "endpoints"}


def plural_of(kind: str) -> str:
    if kind in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[kind]
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "ch", "sh")):
        return lower + "es"
    return lower + "s"


def collection_path(api_version: str, plural: str, namespace: str | None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


def object_path(obj: Obj, default_namespace: str) -> tuple[str, str | None]:
    kind = obj.get("kind", "")
    namespace = None if kind in CLUSTER_SCOPED else ((obj.get("metadata") or {}).get("namespace") or default_namespace)
    name = (obj.get("metadata") or {}).get("name", "")
    return f"{collection_path(obj.get('apiVersion', 'v1'), plural_of(kind), namespace)}/{name}", namespace


def resource_ref(obj: Obj) -> str:
    """``deployment.apps/name``, ``service/name``: how kubectl names an object in its output."""
    group = obj.get("apiVersion", "v1").rpartition("/")[0]
    kind = obj.get("kind", "").lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


def apply_object(server: str, obj: Obj, namespace: str, manager: str, force: bool) -> Obj:
    path, ns = object_path(obj, namespace)
    body = copy.deepcopy(obj)
    if ns:
        body.setdefault("metadata", {})["namespace"] = ns
    query = urllib.parse.urlencode({"fieldManager": manager, **({"force": "true"} if force else {})})
    return api(server, "PATCH", f"{path}?{query}", body, "application/apply-patch+yaml")


def exists(server: str, path: str) -> bool:
    try:
        api(server, "GET", path)
    except ApiError as error:
        if error.status == 404:
            return False
        raise
    return True


def list_items(server: str, path: str, selector: str | None = None) -> list[Obj]:
    query = "?" + urllib.parse.urlencode({"labelSelector": selector}) if selector else ""
    try:
        return list(api(server, "GET", path + query).get("items") or [])
    except ApiError as error:
        if error.status == 404:
            return []
        raise


def matches(labels: dict[str, str] | None, selector: str) -> bool:
    labels = labels or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def fake_pem(kind: str, seed: str) -> str:
    body = base64.b64encode(bytes.fromhex(_hex(seed, 480))).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {kind}-----\n" + "\n".join(lines) + f"\n-----END {kind}-----\n"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def load_documents(text: str) -> list[Obj]:
    docs: list[Obj] = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if doc.get("kind") == "List" or (doc.get("kind", "").endswith("List") and "items" in doc):
            docs += [item for item in doc.get("items") or [] if item]
        else:
            docs.append(doc)
    return docs


# ---------------------------------------------------------------- kind


KIND_FLAGS = FlagSpec(
    values={"name", "config", "image", "kubeconfig", "wait", "verbosity", "nodes"},
    bools={"retain", "quiet", "internal", "all", "help"},
    aliases={"n": "name", "q": "quiet", "v": "verbosity", "A": "all", "h": "help"},
)


def kind_kubeconfig(name: str, internal: bool = False) -> Obj:
    key = f"kind-{name}"
    server = f"https://{name}-control-plane:6443" if internal else apiservers().get(name)
    if not server:
        server = f"https://127.0.0.1:{40000 + int(_hex(name, 4), 16) % 20000}"
    return {
        "apiVersion": "v1",
        "clusters": [
            {
                "cluster": {"certificate-authority-data": b64(fake_pem("CERTIFICATE", name + "/ca")), "server": server},
                "name": key,
            }
        ],
        "contexts": [{"context": {"cluster": key, "user": key}, "name": key}],
        "current-context": key,
        "kind": "Config",
        "preferences": {},
        "users": [
            {
                "name": key,
                "user": {
                    "client-certificate-data": b64(fake_pem("CERTIFICATE", name + "/admin")),
                    "client-key-data": b64(fake_pem("RSA PRIVATE KEY", name + "/admin-key")),
                },
            }
        ],
    }


def _kind_kubeconfig_target(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    env = _env("KUBECONFIG")
    if env:
        return Path(env.split(os.pathsep)[0])
    return state_dir() / "kubeconfig"


def _dump_kubeconfig(config: Obj) -> str:
    order = ["apiVersion", "clusters", "contexts", "current-context", "kind", "preferences", "users"]
    ordered = {k: config[k] for k in order if k in config} | {k: v for k, v in config.items() if k not in order}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False)


def _kubeconfig_lock(path: Path) -> Path:
    """A lock per kubeconfig file, kept in the state folder (not beside the file)."""
    return state_dir() / f"kubeconfig-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}.lock"


def merge_kubeconfig(path: Path, name: str) -> None:
    with _locked(_kubeconfig_lock(path)):
        existing = (yaml.safe_load(path.read_text()) if path.exists() else None) or {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
        }
        fresh = kind_kubeconfig(name)
        for key in ("clusters", "contexts", "users"):
            items = [i for i in existing.get(key) or [] if i.get("name") != f"kind-{name}"]
            existing[key] = items + fresh[key]
        existing["current-context"] = f"kind-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_dump_kubeconfig(existing))


def remove_from_kubeconfig(path: Path, name: str) -> None:
    if not path.exists():
        return
    with _locked(_kubeconfig_lock(path)):
        config = yaml.safe_load(path.read_text()) or {}
        for key in ("clusters", "contexts", "users"):
            config[key] = [i for i in config.get(key) or [] if i.get("name") != f"kind-{name}"]
        if config.get("current-context") == f"kind-{name}":
            config["current-context"] = ""
        path.write_text(_dump_kubeconfig(config))


def _kind_nodes(config: Obj | None, name: str) -> list[Obj]:
    roles = [n.get("role", "control-plane") for n in (config or {}).get("nodes") or []] or ["control-plane"]
    nodes, counts = [], {"control-plane": 0, "worker": 0}
    for role in sorted(roles, key=lambda r: r != "control-plane"):
        counts[role] = counts.get(role, 0) + 1
        suffix = "" if counts[role] == 1 else str(counts[role])
        nodes.append({"name": f"{name}-{role}{suffix}", "role": role})
    return nodes


def kind_main(argv: list[str], entry: Obj) -> int:
    try:
        parsed = parse_flags(argv, KIND_FLAGS)
    except FlagError as error:
        raise ToolExit(f"ERROR: {error}") from None
    args = parsed.args
    command = " ".join(args[:2])
    default_name = _env("KIND_CLUSTER_NAME") or "kind"
    if args[:1] == ["version"]:
        out(f"kind v{KIND_VERSION} go1.25.5 linux/amd64")
        return 0
    if command == "get clusters":
        with state() as data:
            names = sorted(c["name"] for c in data["clusters"])
        if not names:
            err("No kind clusters found.")
        for name in names:
            out(name)
        return 0
    if command == "create cluster":
        return kind_create(parsed, entry, default_name, argv)
    if command in ("delete cluster", "delete clusters"):
        return kind_delete(parsed, args, default_name)
    if command in ("get kubeconfig", "export kubeconfig", "get nodes", "load docker-image"):
        name = parsed.get("name") or default_name
        with state() as data:
            cluster = next((c for c in data["clusters"] if c["name"] == name), None)
        if command == "get nodes":
            if cluster is None:
                err(f'No kind nodes found for cluster "{name}".')
            for node in (cluster or {}).get("nodes", []):
                out(node["name"])
            return 0
        if command == "load docker-image":
            if injected_failure(argv):
                raise ToolExit(f'ERROR: image: "{args[2] if len(args) > 2 else ""}" not present locally')
            if len(args) < 3:
                raise ToolExit("ERROR: a list of image names is required")
            if cluster is None:
                raise ToolExit(f'ERROR: no nodes found for cluster "{name}"')
            for image in args[2:]:
                digest = "sha256:" + _hex(image)
                for node in cluster["nodes"]:
                    err(f'Image: "{image}" with ID "{digest}" not yet present on node "{node["name"]}", loading...')
            return 0
        if cluster is None:
            raise ToolExit(
                f"ERROR: could not locate any control plane nodes for cluster named '{name}'. "
                "Use the --name option to select a different cluster"
            )
        if command == "get kubeconfig":
            sys.stdout.write(_dump_kubeconfig(kind_kubeconfig(name, parsed.bool("internal"))))
            return 0
        merge_kubeconfig(_kind_kubeconfig_target(parsed.get("kubeconfig")), name)
        err(f'Set kubectl context to "kind-{name}"')
        return 0
    word = args[0] if args else ""
    if word in ("build", "completion", "create", "delete", "export", "get", "load", "help"):
        raise ToolExit(f"fake kind: {' '.join(args)!r} is not simulated")
    if not args:
        out("kind creates and manages local Kubernetes clusters using Docker container 'nodes'")
        return 0
    raise ToolExit(f'ERROR: unknown command "{word}" for "kind"')


def _format_duration(text: str) -> str:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text or "")
    if not match or not any(match.groups()):
        return text
    h, m, s = (int(g or 0) for g in match.groups())
    total = h * 3600 + m * 60 + s
    return (f"{total // 3600}h" if total >= 3600 else "") + f"{total % 3600 // 60}m{total % 60}s"


def kind_create(parsed: Parsed, entry: Obj, default_name: str, argv: list[str]) -> int:
    config_text = None
    config: Obj | None = None
    path = parsed.get("config")
    if path == "-":
        config_text = sys.stdin.read()
        entry["stdin"] = config_text
    elif path:
        try:
            config_text = Path(path).read_text()
        except OSError as error:
            raise ToolExit(f"ERROR: failed to create cluster: error reading file: {error}") from None
    if config_text is not None:
        entry["config"] = config_text
        config = yaml.safe_load(config_text) or {}
    name = parsed.get("name") or (config or {}).get("name") or default_name
    image = parsed.get("image") or KIND_IMAGE
    friendly = image.split("@")[0]
    nodes = _kind_nodes(config, name)
    with state(write=True) as data:
        if any(c["name"] == name for c in data["clusters"]):
            raise ToolExit(
                f'ERROR: failed to create cluster: node(s) already exist for a cluster with the name "{name}"'
            )
        failing = injected_failure(argv)
        if not failing:
            for node in nodes:
                node["ip"] = data["nextIp"]
                data["nextIp"] += 1
            data["clusters"].append({"name": name, "image": image, "nodes": nodes, "created": time.time()})
            data["kindNetwork"] = True
    err(f'Creating cluster "{name}" ...')
    steps = [f"Ensuring node image ({friendly}) 🖼", "Preparing nodes " + "📦 " * len(nodes)]
    if sum(n["role"] == "control-plane" for n in nodes) > 1:
        steps.append("Configuring the external load balancer ⚖️")
    steps += ["Writing configuration 📜", "Starting control-plane 🕹️"]
    if not ((config or {}).get("networking") or {}).get("disableDefaultCNI"):
        steps.append("Installing CNI 🔌")
    steps.append("Installing StorageClass 💾")
    if any(n["role"] == "worker" for n in nodes):
        steps.append("Joining worker nodes 🚜")
    wait = parsed.get("wait")
    if wait and wait not in ("0", "0s"):
        steps.append(f"Waiting ≤ {_format_duration(wait)} for control-plane = Ready ⏳")
    for step in steps:
        err(f" • {step}  ...")
        if failing and step.startswith("Starting control-plane"):
            err(f" ✗ {step}")
            if not parsed.bool("retain"):
                err(f"Deleted nodes: {json.dumps([n['name'] for n in nodes])}")
            raise ToolExit(
                "ERROR: failed to create cluster: failed to init node with kubeadm: command "
                f'"docker exec --privileged {name}-control-plane kubeadm init --config=/kind/kubeadm.conf '
                '--skip-token-print --v=6" failed with error: exit status 1'
            )
        err(f" ✓ {step}")
    if wait and wait not in ("0", "0s"):
        err(" • Ready after 12s 💚")
    target = _kind_kubeconfig_target(parsed.get("kubeconfig"))
    merge_kubeconfig(target, name)
    with state(write=True) as data:
        for cluster in data["clusters"]:
            if cluster["name"] == name:
                cluster["kubeconfig"] = str(target)
    sample = f"kubectl cluster-info --context kind-{name}"
    if parsed.get("kubeconfig"):
        sample += " --kubeconfig " + shlex.quote(str(parsed.get("kubeconfig")))
    err(f'Set kubectl context to "kind-{name}"')
    err(f"You can now use your cluster with:\n\n{sample}\n")
    err("Have a nice day! 👋")
    return 0


def kind_delete(parsed: Parsed, args: list[str], default_name: str) -> int:
    with state(write=True) as data:
        if args[1] == "clusters":
            names = [c["name"] for c in data["clusters"]] if parsed.bool("all") else args[2:]
        else:
            names = [parsed.get("name") or default_name]
        removed = [c for c in data["clusters"] if c["name"] in names]
        data["clusters"] = [c for c in data["clusters"] if c["name"] not in names]
    for name in names:
        cluster = next((c for c in removed if c["name"] == name), None)
        if args[1] == "cluster":
            err(f'Deleting cluster "{name}" ...')
        remove_from_kubeconfig(_kind_kubeconfig_target(parsed.get("kubeconfig")), name)
        if cluster:
            err(f"Deleted nodes: {json.dumps([n['name'] for n in cluster['nodes']])}")
    if args[1] == "clusters":
        err(f"Deleted clusters: {json.dumps([c['name'] for c in removed])}")
    return 0


# ---------------------------------------------------------------- docker


DOCKER_DOWN = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
DOCKER_FLAGS = FlagSpec(
    values={"format", "filter", "type", "context", "host", "log-level", "config"},
    bools={"all", "quiet", "no-trunc", "size", "latest", "verbose", "debug", "help"},
    aliases={
        "f": "format",
        "a": "all",
        "q": "quiet",
        "s": "size",
        "l": "latest",
        "v": "verbose",
        "D": "debug",
        "H": "host",
    },
)


def go_template(template: str, data: Any) -> str:
    """The bits of Go's text/template docker formats use: ``{{.A.B}}``, ``{{json .X}}``, ``{{range .X}}..{{end}}``,
    ``{{index .X "k"}}``."""
    tokens = re.split(r"({{.*?}})", template)

    def lookup(expr: str, dot: Any) -> Any:
        expr = expr.strip()
        if expr == ".":
            return dot
        value = dot
        for part in expr.lstrip(".").split("."):
            if isinstance(value, dict):
                value = value.get(part)
            else:
                return None
        return value

    def show(value: Any) -> str:
        if value is None:
            return "<no value>"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, dict):
            return "map[" + " ".join(f"{k}:{show(v)}" for k, v in sorted(value.items())) + "]"
        if isinstance(value, list):
            return "[" + " ".join(show(v) for v in value) + "]"
        return str(value)

    def render(pos: int, dot: Any) -> tuple[str, int]:
        result = ""
        while pos < len(tokens):
            token = tokens[pos]
            pos += 1
            if not token.startswith("{{"):
                result += token
                continue
            action = token[2:-2].strip().strip("-").strip()
            if action == "end":
                return result, pos
            if action.startswith("range "):
                items = lookup(action[6:], dot)
                seq = list(items.values()) if isinstance(items, dict) else list(items or [])
                end = pos
                if not seq:
                    _, end = render(pos, None)
                for item in seq:
                    text, end = render(pos, item)
                    result += text
                pos = end
            elif action.startswith("json "):
                result += json.dumps(lookup(action[5:], dot), separators=(",", ":"))
            elif action.startswith("index "):
                words = shlex.split(action[6:])
                value = lookup(words[0], dot)
                for key in words[1:]:
                    value = value.get(key) if isinstance(value, dict) else None
                result += show(value)
            elif action.startswith(("upper ", "lower ")):
                text = show(lookup(action[6:], dot))
                result += text.upper() if action.startswith("upper") else text.lower()
            else:
                result += show(lookup(action, dot))
        return result, pos

    return render(0, data)[0]


def docker_info() -> Obj:
    mem = int(_env("MESHFED_FAKE_DOCKER_MEM") or 16 * 1024**3)
    with state() as data:
        containers = sum(len(c["nodes"]) for c in data["clusters"])
    return {
        "ID": "6f1c6e88-3b1e-4d5c-9a52-0f1f3b1f2e7a",
        "Containers": containers,
        "ContainersRunning": containers,
        "ContainersPaused": 0,
        "ContainersStopped": 0,
        "Images": 3 + containers,
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"], ["Using metacopy", "false"]],
        "Plugins": {
            "Volume": ["local"],
            "Network": ["bridge", "host", "ipvlan", "macvlan", "null", "overlay"],
            "Log": ["awslogs", "fluentd", "gcplogs", "gelf", "journald", "json-file", "local", "splunk", "syslog"],
        },
        "MemoryLimit": True,
        "SwapLimit": True,
        "CpuCfsPeriod": True,
        "CpuCfsQuota": True,
        "CPUShares": True,
        "CPUSet": True,
        "PidsLimit": True,
        "IPv4Forwarding": True,
        "Debug": False,
        "NFd": 35,
        "OomKillDisable": False,
        "NGoroutines": 52,
        "SystemTime": datetime.now(UTC).isoformat(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "systemd",
        "CgroupVersion": _env("MESHFED_FAKE_DOCKER_CGROUP") or "2",
        "NEventsListener": 0,
        "KernelVersion": "6.8.0-85-generic",
        "OperatingSystem": "Ubuntu 24.04.3 LTS",
        "OSVersion": "24.04",
        "OSType": "linux",
        "Architecture": "x86_64",
        "IndexServerAddress": "https://index.docker.io/v1/",
        "NCPU": int(_env("MESHFED_FAKE_DOCKER_NCPU") or 8),
        "MemTotal": mem,
        "DockerRootDir": "/var/lib/docker",
        "HttpProxy": "",
        "HttpsProxy": "",
        "NoProxy": "",
        "Name": "fakehost",
        "Labels": [],
        "ExperimentalBuild": False,
        "ServerVersion": DOCKER_VERSION,
        "Runtimes": {"io.containerd.runc.v2": {"path": "runc"}, "runc": {"path": "runc"}},
        "DefaultRuntime": "runc",
        "Swarm": {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive", "ControlAvailable": False, "Error": ""},
        "LiveRestoreEnabled": False,
        "Isolation": "",
        "InitBinary": "docker-init",
        "ContainerdCommit": {"ID": "b98a3aace656320842a23f4a392a33f46af97866"},
        "RuncCommit": {"ID": "v1.3.0-0-g4ca628d1"},
        "InitCommit": {"ID": "de40ad0"},
        "SecurityOptions": ["name=apparmor", "name=seccomp,profile=builtin", "name=cgroupns"],
        "Warnings": None,
        "ClientInfo": {
            "Debug": False,
            "Version": DOCKER_VERSION,
            "Context": "default",
            "Plugins": [],
            "Warnings": None,
        },
    }


def docker_version() -> Obj:
    return {
        "Client": {
            "Platform": {"Name": ""},
            "Version": DOCKER_VERSION,
            "ApiVersion": "1.51",
            "DefaultAPIVersion": "1.51",
            "GitCommit": "e180ab8",
            "GoVersion": "go1.24.8",
            "Os": "linux",
            "Arch": "amd64",
            "BuildTime": "Wed Oct  8 12:17:24 2025",
            "Context": "default",
        },
        "Server": {
            "Platform": {"Name": "Docker Engine - Community"},
            "Version": DOCKER_VERSION,
            "ApiVersion": "1.51",
            "MinAPIVersion": "1.24",
            "Os": "linux",
            "Arch": "amd64",
            "GitCommit": "f8215cc",
            "GoVersion": "go1.24.8",
            "KernelVersion": "6.8.0-85-generic",
            "BuildTime": "2025-10-08T12:17:24.000000000+00:00",
        },
    }


def _node_containers(data: Obj) -> list[Obj]:
    containers = []
    for cluster in data["clusters"]:
        for node in cluster["nodes"]:
            ip = f"172.18.0.{node['ip']}"
            ipv6 = f"fc00:f853:ccd:e793::{node['ip']:x}"
            cid = _hex(node["name"])
            port = 40000 + int(_hex(cluster["name"], 4), 16) % 20000
            api_port = urllib.parse.urlsplit(apiservers().get(cluster["name"], "")).port or port
            containers.append(
                {
                    "Id": cid,
                    "Created": datetime.fromtimestamp(cluster["created"], UTC).isoformat(),
                    "Name": "/" + node["name"],
                    "Image": "sha256:" + _hex(cluster["image"]),
                    "State": {"Status": "running", "Running": True, "Paused": False, "Pid": 4242, "ExitCode": 0},
                    "Config": {
                        "Hostname": node["name"],
                        "Image": cluster["image"],
                        "Labels": {"io.x-k8s.kind.cluster": cluster["name"], "io.x-k8s.kind.role": node["role"]},
                    },
                    "NetworkSettings": {
                        "Ports": {"6443/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(api_port)}]}
                        if node["role"] == "control-plane"
                        else {},
                        "Networks": {
                            "kind": {
                                "IPAMConfig": None,
                                "Links": None,
                                "Aliases": None,
                                "MacAddress": f"02:42:ac:12:00:{node['ip']:02x}",
                                "NetworkID": _hex("network/kind"),
                                "EndpointID": _hex("endpoint/" + node["name"]),
                                "Gateway": "172.18.0.1",
                                "IPAddress": ip,
                                "IPPrefixLen": 16,
                                "IPv6Gateway": "fc00:f853:ccd:e793::1",
                                "GlobalIPv6Address": ipv6,
                                "GlobalIPv6PrefixLen": 64,
                                "DNSNames": [node["name"], cid[:12]],
                            }
                        },
                    },
                }
            )
    return containers


def docker_network(data: Obj) -> Obj:
    return {
        "Name": "kind",
        "Id": _hex("network/kind"),
        "Created": "2025-11-03T09:12:44.193828514Z",
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv4": True,
        "EnableIPv6": True,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{"Subnet": KIND_SUBNET_V6}, {"Subnet": KIND_SUBNET_V4, "Gateway": "172.18.0.1"}],
        },
        "Internal": False,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {
            c["Id"]: {
                "Name": c["Name"].lstrip("/"),
                "EndpointID": c["NetworkSettings"]["Networks"]["kind"]["EndpointID"],
                "MacAddress": c["NetworkSettings"]["Networks"]["kind"]["MacAddress"],
                "IPv4Address": c["NetworkSettings"]["Networks"]["kind"]["IPAddress"] + "/16",
                "IPv6Address": c["NetworkSettings"]["Networks"]["kind"]["GlobalIPv6Address"] + "/64",
            }
            for c in _node_containers(data)
        },
        "Options": {"com.docker.network.bridge.enable_ip_masquerade": "true", "com.docker.network.driver.mtu": "1500"},
        "Labels": {},
    }


def docker_exec(argv: list[str]) -> int:
    """``docker exec NODE /bin/sh -c CMD`` (testinfra's docker:// transport) on a kind node: only
    ``systemctl is-active kubelet`` is simulated (``MESHFED_FAKE_KUBELET`` gives another state)."""
    container, command = argv[1], argv[2:]
    with state() as data:
        nodes = {c["Name"].lstrip("/") for c in _node_containers(data)}
    if container not in nodes:
        raise ToolExit(f"Error response from daemon: No such container: {container}")
    if command[:2] == ["/bin/sh", "-c"] and command[2:] == ["systemctl is-active kubelet"]:
        kubelet = _env("MESHFED_FAKE_KUBELET") or "active"
        out(kubelet)
        return 0 if kubelet == "active" else 3
    raise ToolExit(f"fake docker: exec of {' '.join(command)!r} is not simulated")


def docker_main(argv: list[str], entry: Obj) -> int:
    if argv[:1] == ["exec"] and len(argv) > 2 and _env("MESHFED_FAKE_DOCKER_DOWN") != "1":
        return docker_exec(argv)
    try:
        parsed = parse_flags(argv, DOCKER_FLAGS)
    except FlagError as error:
        raise ToolExit(f"{error}\nSee 'docker --help'.", 125) from None
    if _env("MESHFED_FAKE_DOCKER_DOWN") == "1":
        raise ToolExit(DOCKER_DOWN)
    args = parsed.args
    word = args[0] if args else ""
    fmt = parsed.get("format")
    if injected_failure(argv):
        raise ToolExit(f"Error response from daemon: {word or 'docker'} failed (injected by MESHFED_FAKE_FAIL)")
    if word == "info":
        info = docker_info()
        if fmt:
            out(go_template(fmt, info))
        else:
            out(
                f"Client: Docker Engine - Community\n Version:    {DOCKER_VERSION}\n Context:    default\n Debug Mode: false\n"
            )
            out(
                f"Server:\n Containers: {info['Containers']}\n  Running: {info['ContainersRunning']}\n  Paused: 0\n  Stopped: 0\n"
                f" Images: {info['Images']}\n Server Version: {DOCKER_VERSION}\n Storage Driver: overlay2\n"
                f" Cgroup Driver: systemd\n Cgroup Version: 2\n Security Options:\n  apparmor\n  seccomp\n   Profile: builtin\n  cgroupns\n"
                f" Kernel Version: {info['KernelVersion']}\n Operating System: {info['OperatingSystem']}\n OSType: linux\n"
                f" Architecture: x86_64\n CPUs: {info['NCPU']}\n Total Memory: {info['MemTotal'] / 1024**3:.2f}GiB\n"
                f" Name: {info['Name']}\n Docker Root Dir: /var/lib/docker\n Debug Mode: false\n Experimental: false\n"
                " Live Restore Enabled: false\n"
            )
        return 0
    if word == "version":
        version = docker_version()
        if fmt:
            out(go_template(fmt, version))
        else:
            client, server = version["Client"], version["Server"]
            out(
                f"Client: Docker Engine - Community\n Version:           {client['Version']}\n API version:       {client['ApiVersion']}\n"
                f" Go version:        {client['GoVersion']}\n Git commit:        {client['GitCommit']}\n Built:             {client['BuildTime']}\n"
                f" OS/Arch:           linux/amd64\n Context:           default\n\nServer: Docker Engine - Community\n Engine:\n"
                f"  Version:          {server['Version']}\n  API version:      {server['ApiVersion']} (minimum version 1.24)\n"
                f"  Go version:       {server['GoVersion']}\n  Git commit:       {server['GitCommit']}\n  OS/Arch:          linux/amd64"
            )
        return 0
    with state() as data:
        containers = _node_containers(data)
        network_exists = data.get("kindNetwork") or _env("MESHFED_FAKE_KIND_NETWORK") == "1"
        network = docker_network(data)
    if word == "network" and args[1:2] == ["inspect"]:
        names = args[2:]
        if not names:
            raise ToolExit(
                "\"docker network inspect\" requires at least 1 argument.\nSee 'docker network inspect --help'."
            )
        missing = [n for n in names if n != "kind" or not network_exists]
        found = [network for n in names if n not in missing]
        if fmt:
            for item in found:
                out(go_template(fmt, item))
        else:
            out(json.dumps(found, indent=4))
        if missing:
            raise ToolExit("\n".join(f"Error: No such network: {n}" for n in missing))
        return 0
    if word == "network" and args[1:2] in (["ls"], ["list"]):
        nets = [("bridge", "bridge"), ("host", "host"), ("none", "null")] + (
            [("kind", "bridge")] if network_exists else []
        )
        out(f"{'NETWORK ID':<15}{'NAME':<10}{'DRIVER':<9}SCOPE")
        for name, driver in nets:
            out(f"{_hex('network/' + name)[:12]:<15}{name:<10}{driver:<9}local")
        return 0
    if word == "image" and args[1:2] == ["inspect"]:
        present = {image for image in (_env("MESHFED_FAKE_DOCKER_IMAGES") or "").split(",") if image}
        names = args[2:]
        missing = [n for n in names if n not in present]
        out(json.dumps([{"Id": "sha256:" + _hex(n), "RepoTags": [n]} for n in names if n in present], indent=4))
        if missing:
            raise ToolExit("\n".join(f"Error response from daemon: No such image: {n}" for n in missing))
        return 0
    if word in ("inspect", "container") and (word == "inspect" or args[1:2] == ["inspect"]):
        names = args[1:] if word == "inspect" else args[2:]
        by_name = {c["Name"].lstrip("/"): c for c in containers} | {c["Id"][:12]: c for c in containers}
        found = [by_name[n] for n in names if n in by_name]
        if fmt:
            for item in found:
                out(go_template(fmt, item))
        else:
            out(json.dumps(found, indent=4))
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ToolExit("\n".join(f"Error: No such object: {n}" for n in missing))
        return 0
    if word == "ps":
        rows = []
        for c in containers:
            labels = c["Config"]["Labels"]
            row = {
                "ID": c["Id"][:12],
                "Image": c["Config"]["Image"],
                "Command": '"/usr/local/bin/entr…"',
                "CreatedAt": c["Created"],
                "RunningFor": "5 minutes ago",
                "Ports": "127.0.0.1:{}->6443/tcp".format(c["NetworkSettings"]["Ports"]["6443/tcp"][0]["HostPort"])
                if c["NetworkSettings"]["Ports"]
                else "",
                "State": "running",
                "Status": "Up 5 minutes",
                "Names": c["Name"].lstrip("/"),
                "Labels": ",".join(f"{k}={v}" for k, v in labels.items()),
                "Networks": "kind",
                "_labels": labels,
            }
            keep = True
            for term in parsed.all("filter"):
                key, _, value = term.partition("=")
                if key == "label":
                    lk, eq, lv = value.partition("=")
                    keep &= lk in labels and (not eq or labels[lk] == lv)
                elif key == "name":
                    keep &= value in row["Names"]
                elif key == "status":
                    keep &= value == "running"
            if keep:
                rows.append(row)
        if parsed.bool("quiet"):
            for row in rows:
                out(row["ID"])
        elif fmt:
            for row in rows:
                out(go_template(fmt[6:] if fmt.startswith("table ") else fmt, row))
        else:
            out("CONTAINER ID   IMAGE     COMMAND   CREATED   STATUS    PORTS     NAMES")
            for row in rows:
                out(
                    f"{row['ID']}   {row['Image']}   {row['Command']}   {row['RunningFor']}   {row['Status']}   {row['Ports']}   {row['Names']}"
                )
        return 0
    known = {
        "build",
        "exec",
        "images",
        "image",
        "kill",
        "logs",
        "network",
        "pull",
        "push",
        "rm",
        "run",
        "start",
        "stop",
        "system",
        "container",
        "volume",
    }
    if word in known:
        raise ToolExit(f"fake docker: {' '.join(args)!r} is not simulated")
    if not word:
        out("Usage:  docker [OPTIONS] COMMAND")
        return 0
    raise ToolExit(f"docker: unknown command: docker {word}\n\nRun 'docker --help' for more information")


# ---------------------------------------------------------------- istioctl


ISTIOCTL_FLAGS = FlagSpec(
    values={
        "context",
        "kubeconfig",
        "istioNamespace",
        "namespace",
        "filename",
        "set",
        "revision",
        "output",
        "name",
        "server",
        "readiness-timeout",
        "manifests",
        "service-account",
        "secret-name",
        "auth-type",
        "auth-plugin-name",
        "auth-plugin-config",
        "type",
        "tls-server-name",
        "vklog",
        "log_output_level",
        "file",
        "port",
        "cluster",
        "output-threshold",
        "failure-threshold",
    },
    bools={
        "skip-confirmation",
        "purge",
        "remote",
        "short",
        "create-service-account",
        "dry-run",
        "force",
        "verify",
        "verbose",
        "all-namespaces",
        "help",
        "skip-install",
    },
    aliases={
        "c": "kubeconfig",
        "i": "istioNamespace",
        "n": "namespace",
        "f": "filename",
        "s": "set",
        "r": "revision",
        "o": "output",
        "y": "skip-confirmation",
        "d": "manifests",
        "h": "help",
        "A": "all-namespaces",
    },
)
ISTIOCTL_VERSION_FLAGS = FlagSpec(
    values=ISTIOCTL_FLAGS.values - {"set"},
    bools=ISTIOCTL_FLAGS.bools,
    aliases={**ISTIOCTL_FLAGS.aliases, "s": "short"},
)


def istio_version() -> str:
    return _env("MESHFED_FAKE_ISTIO_VERSION") or "1.30.3"


def _build_info(version: str) -> Obj:
    return {
        "version": version,
        "revision": _hex("istio/" + version, 40),
        "golang_version": "go1.25.5",
        "status": "Clean",
        "tag": version,
    }


def _set_path(spec: Obj, path: str, value: str) -> None:
    parsed: Any = yaml.safe_load(value) if value not in ("",) else ""
    if path in ("revision", "profile", "hub", "tag", "namespace"):
        path = f"spec.{path}"
    if not path.startswith("spec.") and not path.startswith("metadata."):
        path = "spec." + path
    parts = path.split(".")
    node = spec
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = parsed


def read_operator(files: list[str], sets: list[str]) -> Obj:
    operator: Obj = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "metadata": {}, "spec": {}}
    for file in files:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as error:
            raise ToolExit(f"Error: generate config: could not read values from file {file}: {error}") from None
        docs = [d for d in yaml.safe_load_all(text) if d]
        for doc in docs:
            if doc.get("kind") != "IstioOperator":
                raise ToolExit(f"Error: generate config: file {file} does not contain an IstioOperator")
            operator = _merge(operator, doc)
    for item in sets:
        key, _, value = item.partition("=")
        _set_path(operator, key, value)
    return operator


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        merged = dict(base)
        for key, value in over.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return over


def _labels(component: str, owner: str, revision: str) -> dict[str, str]:
    return {
        "operator.istio.io/component": component,
        "install.operator.istio.io/owning-resource": owner or "unknown",
        "istio.io/rev": revision or "default",
    }


def _is_ip(address: str) -> bool:
    """The remote-istiod charts' test of ``remotePilotAddress``: an IPv4 or IPv6 literal (else a DNS name)."""
    return bool(re.fullmatch(r"([0-9]*\.){3}[0-9]*", address) or re.fullmatch(r"([0-9a-fA-F]*:)+[0-9a-fA-F]*", address))


def _injector_webhooks(revision: str, namespace: str, remote: Obj) -> list[Obj]:
    """The webhooks of istio-discovery's ``mutatingwebhook.yaml``: by revision label (namespace, object), and for
    the default revision by ``istio-injection`` and ``sidecar.istio.io/inject``; each calls ``injectionURL``, or
    istiod's Service at ``injectionPath`` (the remote profile: the Service standing for the remote istiod)."""
    url = remote.get("injectionURL") or ""
    service = {
        "name": f"istiod-{revision}" if revision else "istiod",
        "namespace": namespace,
        "path": remote.get("injectionPath") or "/inject",
        "port": 443,
    }
    client = {"url": url} if url else {"service": service}
    rev = revision or "default"

    def absent(*keys: str) -> list[Obj]:
        return [{"key": key, "operator": "DoesNotExist"} for key in keys]

    not_disabled = {"matchExpressions": [{"key": INJECT_LABEL, "operator": "NotIn", "values": ["false"]}]}
    selectors = [
        (
            "rev.namespace.",
            {
                "matchExpressions": [
                    {"key": "istio.io/rev", "operator": "In", "values": [rev]},
                    *absent("istio-injection"),
                ]
            },
            not_disabled,
        ),
        (
            "rev.object.",
            {"matchExpressions": absent("istio.io/rev", "istio-injection")},
            {
                "matchExpressions": [
                    *not_disabled["matchExpressions"],
                    {"key": "istio.io/rev", "operator": "In", "values": [rev]},
                ]
            },
        ),
    ]
    if not revision:
        selectors += [
            (
                "namespace.",
                {"matchExpressions": [{"key": "istio-injection", "operator": "In", "values": ["enabled"]}]},
                not_disabled,
            ),
            (
                "object.",
                {"matchExpressions": absent("istio-injection", "istio.io/rev")},
                {
                    "matchExpressions": [
                        {"key": INJECT_LABEL, "operator": "In", "values": ["true"]},
                        *absent("istio.io/rev"),
                    ]
                },
            ),
        ]
    return [
        {
            "name": f"{prefix}sidecar-injector.istio.io",
            "clientConfig": copy.deepcopy(client),
            "sideEffects": "None",
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "admissionReviewVersions": ["v1"],
            "namespaceSelector": namespaces,
            "objectSelector": objects,
        }
        for prefix, namespaces, objects in selectors
    ]


def istio_objects(operator: Obj, version: str) -> list[tuple[str, list[Obj]]]:
    """(component, objects) that ``istioctl install`` creates for this IstioOperator, simplified (no CRDs, RBAC,
    validation webhooks, injector ConfigMap; the default profile's ``istio-ingressgateway`` only when listed).

    As istioctl's ``render.GenerateManifest``: every profile is laid over ``default``, which sets
    ``values.global.istioNamespace: istio-system``; that value then becomes ``metadata.namespace``, the namespace of
    every component (a gateway's own ``namespace`` aside), so a file's ``metadata.namespace`` alone moves nothing.
    The ``remote`` profile (``istiodRemote.enabled``) renders no istiod: the injection webhook pointed at the remote
    istiod, a selector-less ``istiod`` Service with an EndpointSlice of ``global.remotePilotAddress`` (an
    ExternalName Service for a DNS name), and, on a config cluster (``global.configCluster``), istiod's
    ServiceAccount (what ``create-remote-secret --type=config`` reads) and, with ``pilot.configMap``, the
    ``istio`` mesh ConfigMap. ``global.operatorManageWebhooks`` leaves the injection webhook out."""
    spec = operator.get("spec") or {}
    values = spec.get("values") or {}
    global_values = values.get("global") or {}
    pilot_values = values.get("pilot") or {}
    namespace = global_values.get("istioNamespace") or ISTIO_NAMESPACE
    revision = spec.get("revision") or ""
    suffix = f"-{revision}" if revision else ""
    owner = (operator.get("metadata") or {}).get("name", "")
    profile = spec.get("profile") or "default"
    components = spec.get("components") or {}
    rev_label = {"istio.io/rev": revision or "default"}
    remote: Obj = {"enabled": profile == "remote", **(values.get("istiodRemote") or {})}
    istiod_remote = bool(remote["enabled"])
    # spec.hub/spec.tag become global.hub/global.tag (istioctl's translateIstioOperatorToHelm).
    hub = global_values.get("hub") or spec.get("hub") or "docker.io/istio"
    tag = str(global_values.get("tag") or spec.get("tag") or version)
    base_enabled = (components.get("base") or {}).get("enabled", profile in ("default", "minimal", "demo", "remote"))
    pilot_enabled = (components.get("pilot") or {}).get("enabled", profile in ("default", "minimal", "demo", "remote"))
    cluster_id = (global_values.get("multiCluster") or {}).get("clusterName") or "Kubernetes"
    result: list[tuple[str, list[Obj]]] = []
    meta = lambda name, component, extra=None: {  # noqa: E731
        "name": name,
        "namespace": namespace,
        "labels": {**_labels(component, owner, revision), **(extra or {})},
    }
    if base_enabled:
        reader = {"app": "istio-reader", "app.kubernetes.io/name": "istio-reader"}
        reader_sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(READER_SA, "Base", reader)}
        result.append(("Base", [reader_sa]))
    if pilot_enabled:
        objects: list[Obj] = []
        if not istiod_remote or pilot_values.get("configMap", not istiod_remote):
            mesh = dict(spec.get("meshConfig") or {})
            mesh.setdefault("trustDomain", "cluster.local")
            if global_values.get("meshID"):
                mesh.setdefault("defaultConfig", {})["meshId"] = global_values["meshID"]
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": meta(f"istio{suffix}", "Pilot"),
                    "data": {"mesh": yaml.safe_dump(mesh, sort_keys=False), "meshNetworks": "networks: {}"},
                }
            )
        if not istiod_remote or global_values.get("configCluster"):
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": meta(f"istiod{suffix}", "Pilot", {"app": "istiod"}),
                }
            )
        if not global_values.get("operatorManageWebhooks"):
            injector = f"istio-sidecar-injector{suffix}" + ("" if namespace == ISTIO_NAMESPACE else f"-{namespace}")
            webhook_labels = {**_labels("Pilot", owner, revision), "app": "sidecar-injector"}
            objects.append(
                {
                    "apiVersion": "admissionregistration.k8s.io/v1",
                    "kind": "MutatingWebhookConfiguration",
                    "metadata": {"name": injector, "labels": webhook_labels},
                    "webhooks": _injector_webhooks(revision, namespace, remote),
                }
            )
        address = str(global_values.get("remotePilotAddress") or "")
        if istiod_remote and address:
            remote_labels = {**rev_label, "app.kubernetes.io/name": "istiod"}
            service: Obj = {
                "ports": [
                    {"port": 15012, "name": "tcp-istiod", "protocol": "TCP"},
                    {"port": 443, "targetPort": 15017, "name": "tcp-webhook", "protocol": "TCP"},
                ]
            }
            if not _is_ip(address):
                service |= {"type": "ExternalName", "externalName": address}
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": meta(f"istiod{suffix}", "Pilot", remote_labels),
                    "spec": service,
                }
            )
            if _is_ip(address):
                slice_labels = {**remote_labels, "kubernetes.io/service-name": f"istiod{suffix}"}
                objects.append(
                    {
                        "apiVersion": "discovery.k8s.io/v1",
                        "kind": "EndpointSlice",
                        "metadata": meta(f"istiod{suffix}", "Pilot", slice_labels),
                        "addressType": "IPv4" if "." in address else "IPv6",
                        "endpoints": [{"addresses": [address]}],
                        "ports": [
                            {"port": 15012, "name": "tcp-istiod", "protocol": "TCP"},
                            {"port": 15017, "name": "tcp-webhook", "protocol": "TCP"},
                        ],
                    }
                )
        if not istiod_remote:
            # The chart's env, then the values' pilot.env, then components.pilot.k8s.env (a patch: same name replaces).
            env_values: dict[str, str] = {"CLUSTER_ID": cluster_id, "REVISION": revision or "default"}
            env_values |= {k: str(v) for k, v in (pilot_values.get("env") or {}).items()}
            env_values |= {
                e["name"]: str(e.get("value", ""))
                for e in ((components.get("pilot") or {}).get("k8s") or {}).get("env") or []
            }
            env = [{"name": k, "value": v} for k, v in env_values.items()]
            labels = {"app": "istiod", "istio": "pilot", **rev_label}
            selector = {"app": "istiod", **rev_label}
            objects += [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": meta(f"istiod{suffix}", "Pilot", labels),
                    "spec": {
                        "selector": selector,
                        "ports": [
                            {"name": "grpc-xds", "port": 15010, "protocol": "TCP"},
                            {"name": "https-dns", "port": 15012, "protocol": "TCP"},
                            {"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"},
                            {"name": "http-monitoring", "port": 15014, "protocol": "TCP"},
                        ],
                    },
                },
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": meta(f"istiod{suffix}", "Pilot", labels),
                    "spec": {
                        "replicas": 1,
                        "selector": {"matchLabels": selector},
                        "template": {
                            "metadata": {"labels": {**labels, "sidecar.istio.io/inject": "false"}},
                            "spec": {
                                "serviceAccountName": f"istiod{suffix}",
                                "containers": [
                                    {
                                        "name": "discovery",
                                        "image": f"{hub}/pilot:{tag}",
                                        "args": [
                                            "discovery",
                                            "--monitoringAddr=:15014",
                                            "--log_output_level=default:info",
                                        ],
                                        "ports": [
                                            {"containerPort": 8080, "protocol": "TCP"},
                                            {"containerPort": 15010, "protocol": "TCP"},
                                            {"containerPort": 15017, "protocol": "TCP"},
                                        ],
                                        "env": env,
                                    }
                                ],
                            },
                        },
                    },
                },
            ]
        result.append(("Pilot", objects))
    gateways: list[Obj] = []
    for gateway in components.get("ingressGateways") or []:
        if not gateway.get("enabled", False):
            continue
        name = gateway["name"]
        gw_ns = gateway.get("namespace") or namespace
        labels = {**{"app": name, "istio": "ingressgateway"}, **dict(gateway.get("label") or {}), **rev_label}
        selector = {k: v for k, v in labels.items() if k in ("app", "istio")}
        k8s = gateway.get("k8s") or {}
        ports = [
            {
                "name": p.get("name", str(p["port"])),
                "port": int(p["port"]),
                "targetPort": int(p.get("targetPort", p["port"])),
                "protocol": p.get("protocol", "TCP"),
            }
            for p in (k8s.get("service") or {}).get("ports") or []
        ]
        gmeta = lambda name=name, gw_ns=gw_ns, labels=labels: {  # noqa: E731
            "name": name,
            "namespace": gw_ns,
            "labels": {**labels, **_labels("IngressGateways", owner, revision)},
        }
        env = [
            {
                "name": "ISTIO_META_CLUSTER_ID",
                "value": (global_values.get("multiCluster") or {}).get("clusterName") or "Kubernetes",
            }
        ]
        env += list(k8s.get("env") or [])
        gateways += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**gmeta(), "name": f"{name}-service-account"}},
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": gmeta(),
                "spec": {
                    "type": (k8s.get("service") or {}).get("type", "LoadBalancer"),
                    "selector": selector,
                    "ports": ports,
                },
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": gmeta(),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {
                            "labels": {**labels, "sidecar.istio.io/inject": "true"},
                            "annotations": {"inject.istio.io/templates": "gateway"},
                        },
                        "spec": {
                            "serviceAccountName": f"{name}-service-account",
                            "containers": [
                                {
                                    "name": "istio-proxy",
                                    "image": f"{hub}/proxyv2:{tag}",
                                    "args": ["proxy", "router"],
                                    "ports": [{"containerPort": p["targetPort"], "protocol": "TCP"} for p in ports],
                                    "env": env,
                                }
                            ],
                        },
                    },
                },
            },
        ]
    if gateways:
        result.append(("IngressGateways", gateways))
    return result


COMPONENT_LINES = {
    "Base": "✔ Istio core installed ⛵️",
    "Pilot": "✔ Istiod installed 🧠",
    "IngressGateways": "✔ Ingress gateways installed 🛬",
}
COMPONENT_NAMES = {"Base": "Istio core", "Pilot": "Istiod", "IngressGateways": "Ingress gateways"}


def _istio_target(parsed: Parsed) -> Target:
    return resolve_target(parsed.get("context"), parsed.get("kubeconfig"), "Error")


def _istiod_pods(target: Target, namespace: str) -> list[Obj]:
    """Running istiod pods; from Deployments (pod names derived) when the API server keeps no pods."""
    base = collection_path("v1", "pods", namespace)
    pods = [
        p for p in list_items(target.server, base, "app=istiod") if matches(p["metadata"].get("labels"), "app=istiod")
    ]
    if pods:
        return pods
    deployments = list_items(target.server, collection_path("apps/v1", "deployments", namespace), "app=istiod")
    derived = []
    for deployment in deployments:
        if not matches(deployment["metadata"].get("labels"), "app=istiod"):
            continue
        name = deployment["metadata"]["name"]
        derived.append(
            {
                "metadata": {
                    "name": f"{name}-{_hex(name, 10)[:9].replace('0', 'b')}-{_hex(name + '/pod', 5)}",
                    "namespace": namespace,
                    "labels": deployment["spec"]["template"]["metadata"].get("labels", {}),
                },
                "spec": deployment["spec"]["template"]["spec"],
            }
        )
    return derived


def _env_of(pod: Obj, name: str) -> str | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for item in container.get("env") or []:
            if item.get("name") == name:
                return str(item.get("value", ""))
    return None


def istioctl_main(argv: list[str], entry: Obj) -> int:
    is_version = next((w for w in argv if not w.startswith("-")), "") == "version"
    try:
        parsed = parse_flags(argv, ISTIOCTL_VERSION_FLAGS if is_version else ISTIOCTL_FLAGS)
    except FlagError as error:
        raise ToolExit(f"Error: {error}") from None
    args = parsed.args
    if args[:1] in (["x"], ["experimental"]):
        args = args[1:]
    word = args[0] if args else ""
    version = istio_version()
    namespace = parsed.get("istioNamespace") or ISTIO_NAMESPACE
    if word == "version":
        return istioctl_version(parsed, version, namespace)
    if injected_failure(argv):
        return istioctl_fail(word, parsed)
    if word in ("install", "apply"):
        return istioctl_install(parsed, entry, version)
    if word == "uninstall":
        return istioctl_uninstall(parsed, namespace)
    if word == "create-remote-secret":
        return istioctl_remote_secret(parsed)
    if word == "remote-clusters":
        target = _istio_target(parsed)
        try:
            pods = _istiod_pods(target, namespace)
            secrets = list_items(target.server, collection_path("v1", "secrets", namespace), "istio/multiCluster=true")
        except ConnectError as error:
            raise ToolExit(
                f'Error: Get "{error.server}/api/v1/namespaces/{namespace}/pods": dial tcp {error.hostport}: connect: connection refused'
            ) from None
        if not pods:
            raise ToolExit("Error: unable to find any Istiod instances")
        status = _env("MESHFED_FAKE_REMOTE_CLUSTER_STATUS") or "synced"
        rows = [("NAME", "SECRET", "STATUS", "ISTIOD", "REVISION")]
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            pod_name = pod["metadata"]["name"]
            revision = (pod["metadata"].get("labels") or {}).get("istio.io/rev", "")
            rows.append((_env_of(pod, "CLUSTER_ID") or "Kubernetes", "", "synced", pod_name, revision))
            for secret in sorted(secrets, key=lambda s: s["metadata"]["name"]):
                if not matches(secret["metadata"].get("labels"), "istio/multiCluster=true"):
                    continue
                keys = sorted((secret.get("stringData") or {}) | (secret.get("data") or {}))
                for key in keys:
                    rows.append((key, f"{namespace}/{secret['metadata']['name']}", status, pod_name, revision))
        _tabwriter(rows)
        return 0
    if word in ("proxy-status", "ps"):
        return istioctl_proxy_status(_istio_target(parsed), namespace, version)
    if word in ("proxy-config", "pc") and args[1:2] == ["secret"]:
        if len(args) < 3:
            raise ToolExit("Error: pod name or --file is required")
        pod, _, pod_ns = args[2].partition(".")
        target = _istio_target(parsed)
        pod_ns = pod_ns or parsed.get("namespace") or target.namespace
        try:
            if not exists(target.server, f"{collection_path('v1', 'pods', pod_ns)}/{pod}"):
                raise ToolExit(f'Error: failed to execute command on sidecar: pods "{pod}" not found')
        except ConnectError:
            raise ToolExit(
                f"Error: failed to execute command on sidecar: dial tcp {target.server}: connect: connection refused"
            ) from None
        dump_file = _env("MESHFED_FAKE_PROXY_SECRET")
        if parsed.get("output") in ("json", "yaml"):
            text = Path(dump_file).read_text() if dump_file else "{}"
            if parsed.get("output") == "yaml":
                text = yaml.safe_dump(json.loads(text), sort_keys=False)
            out(text.rstrip("\n"))
        else:
            out("RESOURCE NAME     TYPE           STATUS     VALID CERT     SERIAL NUMBER     NOT AFTER     NOT BEFORE")
        return 0
    if word == "analyze":
        # It reads the remote secrets (multicluster analysis): a user who may not list Secrets gets the 403.
        try:
            list_items(_istio_target(parsed).server, collection_path("v1", "secrets", namespace), "")
        except ApiError as error:
            if error.status == 403:
                raise ToolExit(f"Error: {error.message}") from None
        # `-o json` prints the messages as a JSON list and exits 0 whatever they say (istioctl/pkg/analyze).
        found = _env("MESHFED_FAKE_ANALYZE")
        out(Path(found).read_text().strip() if found else "[]")
        if not found:
            err("\u2714 No validation issues found when analyzing all namespaces.")
        return 0
    if word == "precheck":
        out("✔ No issues found when checking the cluster. Istio is safe to install or upgrade!")
        out("  To get started, check out https://istio.io/latest/docs/setup/getting-started/.")
        return 0
    known = {
        "admin",
        "analyze",
        "bug-report",
        "dashboard",
        "kube-inject",
        "manifest",
        "proxy-config",
        "pc",
        "tag",
        "upgrade",
        "validate",
        "waypoint",
        "ztunnel-config",
        "completion",
        "help",
    }
    if word in known:
        raise ToolExit(f"fake istioctl: {' '.join(args)!r} is not simulated")
    if not word:
        out("Istio configuration command line utility for service operators to\ndebug and diagnose their Istio mesh.")
        return 0
    raise ToolExit(f'Error: unknown command "{word}" for "istioctl"\nRun \'istioctl --help\' for usage.')


def _tabwriter(rows: list[tuple[str, ...]]) -> None:
    """A table as istioctl prints it with Go's tabwriter (padding 5; the last cell unpadded)."""
    widths = [max(len(r[i]) for r in rows) + 5 for i in range(len(rows[0]) - 1)]
    for row in rows:
        out("".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + row[-1])


def _proxy_pods(server: str) -> list[Obj]:
    """Running pods with an istio-proxy container (a sidecar or a gateway), in every namespace."""
    return [
        pod
        for pod in list_items(server, collection_path("v1", "pods", None))
        if any(c.get("name") == "istio-proxy" for c in (pod.get("spec") or {}).get("containers") or [])
        and (pod.get("status") or {}).get("phase", "Running") == "Running"
    ]


def istioctl_proxy_status(target: Target, namespace: str, version: str) -> int:
    """istioctl 1.2x+'s table: NAME (pod.namespace) CLUSTER ISTIOD VERSION SUBSCRIBED TYPES, for the proxies
    of this cluster and of the remotes whose secrets it holds (they run no istiod). Proxies whose name holds
    a MESHFED_FAKE_PROXY_STATUS_MISSING entry have lost their stream and are not listed."""
    try:
        istiods = _istiod_pods(target, namespace)
    except ConnectError as error:
        raise ToolExit(
            f'Error: Get "{error.server}/api/v1/namespaces/{namespace}/pods": dial tcp {error.hostport}: connect: connection refused'
        ) from None
    if not istiods:
        raise ToolExit(f'Error: no running Istio pods in "{namespace}"')
    istiod = sorted(p["metadata"]["name"] for p in istiods)[0]
    clusters = [(_env_of(istiods[0], "CLUSTER_ID") or "Kubernetes", target.server)]
    for secret in list_items(target.server, collection_path("v1", "secrets", namespace), "istio/multiCluster=true"):
        for name in sorted((secret.get("stringData") or {}) | (secret.get("data") or {})):
            server = apiservers().get(name)
            if server and not _istiod_pods(Target(name, name, server, namespace, {}), namespace):
                clusters.append((name, server))
    missing = [m for m in (_env("MESHFED_FAKE_PROXY_STATUS_MISSING") or "").split(",") if m]
    rows = [("NAME", "CLUSTER", "ISTIOD", "VERSION", "SUBSCRIBED TYPES")]
    for cluster, server in clusters:
        for pod in _proxy_pods(server):
            name = f"{pod['metadata']['name']}.{pod['metadata']['namespace']}"
            if not any(m in name for m in missing):
                rows.append((name, cluster, istiod, version, "4 (CDS,LDS,EDS,RDS)"))
    _tabwriter(rows)
    return 0


def istioctl_fail(word: str, parsed: Parsed) -> int:
    if word in ("install", "apply"):
        err("✔ Istio core installed ⛵️")
        err(
            "✘ Istiod encountered an error: failed to wait for resource: resources not ready after 5m0s: context deadline exceeded"
        )
        err(f"  Deployment/{ISTIO_NAMESPACE}/istiod (containers with unready status: [discovery])")
        raise ToolExit("Error: failed to install manifests: errors occurred during operation")
    if word == "create-remote-secret":
        raise ToolExit(
            'error: could not get access token to read resources from local kube-apiserver: secrets "istio-reader-service-account-istio-remote-secret-token" not found\nError: could not get access token to read resources from local kube-apiserver'
        )
    if word == "remote-clusters":
        raise ToolExit("Error: unable to find any Istiod instances")
    if word in ("proxy-status", "ps"):
        raise ToolExit(
            'Error: could not get XDS from discovery pod "istiod-6c4f9d8b7-abcde": context deadline exceeded'
        )
    if word in ("proxy-config", "pc"):
        raise ToolExit(
            'Error: failed to execute command on sidecar: error execing into pod: container not found ("istio-proxy")'
        )
    if word == "uninstall":
        raise ToolExit("Error: could not find target revision")
    if word == "precheck":
        out("Error [IST0141] (Pod default/foo) Insufficient permissions")
        raise ToolExit("Error: Issues found when checking the cluster. Istio may not be safe to install or upgrade.")
    raise ToolExit(f"Error: {word} failed")


def istioctl_version(parsed: Parsed, version: str, namespace: str) -> int:
    remote = parsed.get("remote", "true").lower() not in ("false", "0")
    short = parsed.get("short", "true").lower() not in ("false", "0")
    result: Obj = {"clientVersion": _build_info(version)}
    if remote:
        try:
            target = _istio_target(parsed)
            pods = _istiod_pods(target, namespace)
        except (ToolExit, ConnectError, ApiError):
            pods = []
        if pods:
            result["meshVersion"] = [
                {
                    "Component": "istiod",
                    "Revision": (p["metadata"].get("labels") or {}).get("istio.io/rev", "default"),
                    "Info": _build_info(version),
                }
                for p in pods
            ]
        else:
            err(f'Istio is not present in the cluster: no running Istio pods in namespace "{namespace}"')
    output = parsed.get("output")
    if output == "json":
        out(json.dumps(result, indent=2))
    elif output == "yaml":
        out(yaml.safe_dump(result, sort_keys=False))
    elif output:
        raise ToolExit("Error: --output must be 'yaml' or 'json'")
    elif short:
        out(f"client version: {version}")
        if result.get("meshVersion"):
            out(f"control plane version: {version}")
            out("data plane version: none")
    else:
        info = result["clientVersion"]
        out(
            f'client version: version.BuildInfo{{Version:"{version}", GitRevision:"{info["revision"]}", GolangVersion:"go1.25.5", BuildStatus:"Clean", GitTag:"{version}"}}'
        )
    return 0


def istioctl_install(parsed: Parsed, entry: Obj, version: str) -> int:
    files = parsed.all("filename")
    sets = parsed.all("set")
    if parsed.get("revision"):
        sets.append(f"revision={parsed.get('revision')}")
    operator = read_operator(files, sets)
    entry["operator"] = operator
    if "-" in files:
        entry["stdin"] = "(IstioOperator read from stdin)"
    profile = (operator.get("spec") or {}).get("profile") or "default"
    if not parsed.bool("skip-confirmation"):
        sys.stdout.write(f'This will install the Istio {version} profile "{profile}" into the cluster. Proceed? (y/N) ')
        sys.stdout.flush()
        answer = sys.stdin.readline()
        entry["stdin"] = answer
        if answer.strip().lower() not in ("y", "yes"):
            out("Cancelled.")
            return 1
    target = _istio_target(parsed)
    components = istio_objects(operator, version)
    namespace = ((operator.get("spec") or {}).get("values") or {}).get("global", {}).get(
        "istioNamespace"
    ) or ISTIO_NAMESPACE
    try:
        if not exists(target.server, f"/api/v1/namespaces/{namespace}"):
            apply_object(
                target.server,
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                namespace,
                "istioctl",
                True,
            )
    except ConnectError as error:
        raise ToolExit(
            f'Error: check minimum supported Kubernetes version: error getting Kubernetes version: Get "{error.server}/version?timeout=5s": '
            f"dial tcp {error.hostport}: connect: connection refused"
        ) from None
    for component, objects in components:
        deployment = next((o for o in objects if o["kind"] == "Deployment"), None)
        if component == "Pilot" and deployment is not None:  # the remote profile's has none to wait for
            err(
                f"- Processing resources for Istiod. Waiting for Deployment/{namespace}/{deployment['metadata']['name']}"
            )
        for obj in objects:
            try:
                apply_object(target.server, obj, namespace, "istioctl", True)
            except ApiError as error:
                err(f"✘ {COMPONENT_NAMES[component]} encountered an error: {error.message}")
                raise ToolExit(
                    f"Error: failed to install manifests: errors occurred during operation: {error.message}"
                ) from None
        err(COMPONENT_LINES[component])
    err("✔ Installation complete")
    return 0


ISTIO_KINDS = (
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("discovery.k8s.io/v1", "EndpointSlice"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration"),  # cluster-scoped
)


def istioctl_uninstall(parsed: Parsed, namespace: str) -> int:
    revision = parsed.get("revision") or ""
    purge = parsed.bool("purge")
    if not revision and not purge and not parsed.all("filename"):
        raise ToolExit(
            "Error: at least one of the --revision (or --set revision=<revision>), --filename or --purge flags must be set"
        )
    target = _istio_target(parsed)
    doomed: list[tuple[str, Obj]] = []
    try:
        for api_version, kind in ISTIO_KINDS:
            base = collection_path(api_version, plural_of(kind), None if kind in CLUSTER_SCOPED else namespace)
            for item in list_items(target.server, base):
                labels = item["metadata"].get("labels") or {}
                component = labels.get("operator.istio.io/component")
                if component is None:
                    continue
                # A revision's own objects; the base chart's are shared by every revision (--purge only).
                if purge or (labels.get("istio.io/rev") == revision and component != "Base"):
                    doomed.append(
                        (f"{base}/{item['metadata']['name']}", {**item, "apiVersion": api_version, "kind": kind})
                    )
    except ConnectError as error:
        raise ToolExit(
            f"Error: failed to list resources: dial tcp {error.hostport}: connect: connection refused"
        ) from None
    if revision and not purge and not doomed:
        raise ToolExit("Error: could not find target revision")
    if purge:
        if revision:
            out("Purge uninstall will remove all Istio resources, ignoring the specified revision or operator file")
        out("All Istio resources will be pruned from the cluster")
    out("")
    for path, obj in doomed:
        with contextlib.suppress(ApiError):
            api(target.server, "DELETE", path)
        group, _, ver = obj["apiVersion"].rpartition("/")
        gvk = f"{group}/{ver}, Kind={obj['kind']}" if group else f"/{ver}, Kind={obj['kind']}"
        where = "" if obj["kind"] in CLUSTER_SCOPED else namespace
        out(f"  Removed {gvk}/{obj['metadata']['name']}.{where}.")
    err("✔ Uninstall complete")
    return 0


DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
SA_TOKEN_TYPE = "kubernetes.io/service-account-token"
SA_NAME_ANNOTATION = "kubernetes.io/service-account.name"
CONFIG_SECRET = "istio-kubeconfig"  # --type=config's Secret, its kubeconfig under the key "config"


def _secret_error(message: str) -> ToolExit:
    """A failure of create-remote-secret: its RunE prints ``error: ...``, then cobra ``Error: ...``."""
    return ToolExit(f"error: {message}\nError: {message}")


def _service_account(server: str, namespace: str, name: str, create: bool) -> Obj:
    """``getOrCreateServiceAccount``: the account, or (``--create-service-account``, the default) the namespace and
    the base chart's ``istio-reader-service-account`` made first (never another account: asking for one that does not
    exist then fails as it is still missing)."""
    path = f"{collection_path('v1', 'serviceaccounts', namespace)}/{name}"
    try:
        return api(server, "GET", path)
    except ApiError as error:
        if not create:
            raise _secret_error(
                "could not get access token to read resources from local kube-apiserver: failed retrieving service "
                f"account {name}.{namespace} required for creating the remote secret (hint: try installing a minimal "
                f"Istio profile on the cluster first, or run with '--create-service-account=true'): {error.message}"
            ) from None
    if not exists(server, f"/api/v1/namespaces/{namespace}"):
        api(
            server,
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
    labels = {"app": "istio-reader", "app.kubernetes.io/name": "istio-reader"}
    reader: Obj = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": READER_SA, "namespace": namespace, "labels": labels},
    }
    apply_object(server, reader, namespace, "istioctl", True)
    try:
        return api(server, "GET", path)
    except ApiError as error:
        raise _secret_error(
            "could not get access token to read resources from local kube-apiserver: failed retrieving service "
            f"account {name}.{namespace} after creating it: {error.message}"
        ) from None


def _token_secret(server: str, namespace: str, account: str, chosen: str | None) -> Obj:
    """``getOrCreateServiceAccountSecret`` (Kubernetes 1.24+): ``--secret-name``, else a token Secret of the account
    already in the namespace, else a new ``<account>-istio-remote-secret-token`` the token controller fills."""
    prefix = "could not get access token to read resources from local kube-apiserver"

    def references(secret: Obj) -> bool:
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        return secret.get("type") == SA_TOKEN_TYPE and annotations.get(SA_NAME_ANNOTATION) == account

    if chosen:
        try:
            secret = api(server, "GET", f"{collection_path('v1', 'secrets', namespace)}/{chosen}")
        except ApiError as error:
            raise _secret_error(
                f"{prefix}: could not get specified secret {namespace}/{chosen}: {error.message}"
            ) from None
        if not references(secret):
            raise _secret_error(f"{prefix}: secret {namespace}/{chosen} does not reference ServiceAccount {account}")
        return secret
    found = next((s for s in list_items(server, collection_path("v1", "secrets", namespace)) if references(s)), None)
    if found is not None:
        return found
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{account}-istio-remote-secret-token", "annotations": {SA_NAME_ANNOTATION: account}},
        "type": SA_TOKEN_TYPE,
    }
    try:
        return api(server, "POST", collection_path("v1", "secrets", namespace), body)
    except ApiError as error:
        raise _secret_error(f"{prefix}: {error.message}") from None


def _token_data(server: str, secret: Obj) -> tuple[str, str]:
    """``waitForTokenData``: the Secret's ``ca.crt`` and ``token``, read again up to 5 times a second apart."""
    for attempt in range(6):
        data = secret.get("data") or {}
        if "ca.crt" in data and "token" in data:
            return str(data["ca.crt"]), base64.b64decode(data["token"]).decode()
        if attempt == 5:
            raise _secret_error(f'no "{"ca.crt" if "ca.crt" not in data else "token"}" data found')
        time.sleep(1)
        meta = secret["metadata"]
        secret = api(server, "GET", f"{collection_path('v1', 'secrets', meta['namespace'])}/{meta['name']}")
    raise AssertionError("unreachable")


def istioctl_remote_secret(parsed: Parsed) -> int:
    """``istioctl create-remote-secret`` (istioctl/pkg/multicluster/remote_secret.go): a Secret holding a kubeconfig
    that reads this cluster as a ServiceAccount, for applying in another cluster. ``--type=remote`` (the default):
    ``istio-remote-secret-<name>``, key ``<name>``, as ``istio-reader-service-account``; ``--type=config``:
    ``istio-kubeconfig``, key ``config``, as ``istiod`` (an external istiod reading its config cluster). The
    namespace, of the account here and of the Secret printed, is ``--namespace``, else ``--istioNamespace``. A
    missing account fails with ``--create-service-account=false``; with it (the default) only the reader account
    can be made. The token is the account's token Secret's, made when there is none."""
    name = parsed.get("name") or ""
    if name and not (len(name) <= 63 and DNS1123_LABEL.fullmatch(name)):
        raise ToolExit(f"Error: {name} is not a valid DNS 1123 label")
    target = _istio_target(parsed)
    namespace = parsed.get("namespace") or parsed.get("istioNamespace") or ISTIO_NAMESPACE
    secret_type = parsed.get("type") or "remote"
    create = parsed.get("create-service-account") is None or parsed.bool("create-service-account")
    if not name:  # the cluster's own ID: the UID of its kube-system namespace
        name = str((api(target.server, "GET", "/api/v1/namespaces/kube-system").get("metadata") or {}).get("uid", ""))
    if secret_type == "remote":
        secret_name, account = f"istio-remote-secret-{name}", parsed.get("service-account") or READER_SA
    elif secret_type == "config":
        secret_name, account = CONFIG_SECRET, parsed.get("service-account") or CONFIG_SA
    else:
        raise _secret_error(f"unsupported type: {secret_type}")
    _service_account(target.server, namespace, account, create)
    token_secret = _token_secret(target.server, namespace, account, parsed.get("secret-name"))
    server = parsed.get("server") or ""
    warning = ""
    if not server:
        server = target.server
        if "127.0.0.1" in server or "localhost" in server:
            warning = (
                f"server in Kubeconfig is {server}. This is likely not reachable from inside the cluster, if you're "
                "using Kubernetes in Docker, pass --server with the container IP for the API Server"
            )
    auth_type = parsed.get("auth-type") or "bearer-token"
    if auth_type == "plugin":
        raise ToolExit("fake istioctl: create-remote-secret --auth-type=plugin is not simulated")
    if auth_type != "bearer-token":
        raise _secret_error(f"unsupported authentication type: {auth_type}")
    ca, token = _token_data(target.server, token_secret)
    tls_server_name = parsed.get("tls-server-name")
    kubeconfig = (
        "apiVersion: v1\n"
        "clusters:\n"
        "- cluster:\n"
        f"    certificate-authority-data: {ca}\n"
        f"    server: {server}\n"
        + (f"    tls-server-name: {tls_server_name}\n" if tls_server_name else "")
        + f"  name: {name}\n"
        "contexts:\n"
        "- context:\n"
        f"    cluster: {name}\n"
        f"    user: {name}\n"
        f"  name: {name}\n"
        f"current-context: {name}\n"
        "kind: Config\n"
        "preferences: {}\n"
        "users:\n"
        f"- name: {name}\n"
        "  user:\n"
        f"    token: {token}\n"
    )
    key = "config" if secret_name == CONFIG_SECRET else name

    def quoted(text: str) -> str:
        special = re.search(r"[:#{}\[\],&*?|<>=!%@`'\"]|^\s|\s$|^(true|false|null|\d+)$", text)
        return json.dumps(text) if special else text

    if warning:
        err(f"warn: {warning}")
    sys.stdout.write(
        "# This file is autogenerated, do not edit.\n"
        "apiVersion: v1\n"
        "kind: Secret\n"
        "metadata:\n"
        "  annotations:\n"
        f"    networking.istio.io/cluster: {quoted(name)}\n"
        "  labels:\n"
        '    istio/multiCluster: "true"\n'
        f"  name: {secret_name}\n"
        f"  namespace: {namespace}\n"
        "stringData:\n"
        f"  {quoted(key)}: |\n" + "".join(f"    {line}\n" for line in kubeconfig.splitlines()) + "---\n"
    )
    return 0


# ---------------------------------------------------------------- kubectl


KUBECTL_FLAGS = FlagSpec(
    values={
        "namespace",
        "context",
        "kubeconfig",
        "server",
        "cluster",
        "user",
        "token",
        "request-timeout",
        "v",
        "filename",
        "output",
        "selector",
        "container",
        "field-manager",
        "timeout",
        "for",
        "field-selector",
        "type",
        "from-literal",
        "from-file",
        "image",
        "patch",
        "sort-by",
        "label-columns",
        "template",
        "grace-period",
        "pod-running-timeout",
        "chunk-size",
        "replicas",
        "revision",
        "to-revision",
        "port",
        "address",
        "tail",
        "since",
        "subresource",
        "as",
        "kustomize",
    },
    bools={
        "all-namespaces",
        "watch",
        "stdin",
        "tty",
        "quiet",
        "server-side",
        "force-conflicts",
        "prune",
        "recursive",
        "wait",
        "ignore-not-found",
        "show-labels",
        "no-headers",
        "all",
        "now",
        "insecure-skip-tls-verify",
        "client",
        "local",
        "overwrite",
        "minify",
        "raw",
        "flatten",
        "current",
        "force",
        "previous",
        "follow",
        "help",
        "show-managed-fields",
    },
    optional={"dry-run", "validate", "cascade"},
    aliases={
        "n": "namespace",
        "s": "server",
        "f": "filename",
        "o": "output",
        "l": "selector",
        "c": "container",
        "A": "all-namespaces",
        "w": "watch",
        "i": "stdin",
        "t": "tty",
        "q": "quiet",
        "R": "recursive",
        "L": "label-columns",
        "p": "patch",
        "k": "kustomize",
        "h": "help",
    },
)

RESOURCES: dict[str, tuple[str, str, str, bool]] = {}  # alias -> (apiVersion, plural, Kind, namespaced)
for _api, _kind, _namespaced, _aliases in (
    ("v1", "Pod", True, "pod po"),
    ("v1", "Service", True, "service svc"),
    ("v1", "ConfigMap", True, "configmap cm"),
    ("v1", "Secret", True, "secret"),
    ("v1", "ServiceAccount", True, "serviceaccount sa"),
    ("v1", "Endpoints", True, "ep"),
    ("v1", "Event", True, "event ev"),
    ("v1", "Namespace", False, "namespace ns"),
    ("v1", "Node", False, "node no"),
    ("apps/v1", "Deployment", True, "deployment deploy"),
    ("apps/v1", "ReplicaSet", True, "replicaset rs"),
    ("apps/v1", "StatefulSet", True, "statefulset sts"),
    ("apps/v1", "DaemonSet", True, "daemonset ds"),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition", False, "customresourcedefinition crd crds"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", False, "mutatingwebhookconfiguration"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration", False, "validatingwebhookconfiguration"),
    ("networking.istio.io/v1", "Gateway", True, "gateway gw"),
    ("networking.istio.io/v1", "VirtualService", True, "virtualservice vs"),
    ("networking.istio.io/v1", "DestinationRule", True, "destinationrule dr"),
    ("networking.istio.io/v1", "ServiceEntry", True, "serviceentry se"),
    ("networking.istio.io/v1", "Sidecar", True, "sidecar"),
    ("security.istio.io/v1", "PeerAuthentication", True, "peerauthentication pa"),
    ("security.istio.io/v1", "AuthorizationPolicy", True, "authorizationpolicy ap"),
    ("install.istio.io/v1alpha1", "IstioOperator", True, "istiooperator iop"),
):
    _entry = (_api, plural_of(_kind), _kind, _namespaced)
    for _alias in [plural_of(_kind), *_aliases.split()]:
        RESOURCES[_alias] = _entry
        _group = _api.rpartition("/")[0]
        if _group:
            RESOURCES[f"{plural_of(_kind)}.{_group}"] = _entry
            RESOURCES[f"{_alias}.{_group}"] = _entry


def kubectl_error_from_api(error: ApiError, fallback_resource: str = "", name: str = "") -> ToolExit:
    if error.body.get("message"):
        return ToolExit(f"Error from server ({error.reason}): {error.message}")
    return ToolExit(f'Error from server ({error.reason}): {fallback_resource} "{name}" not found')


def kubectl_unreachable(error: ConnectError) -> ToolExit:
    return ToolExit(
        f"The connection to the server {error.hostport} was refused - did you specify the right host or port?"
    )


def _kubectl_target(parsed: Parsed) -> Target:
    if parsed.get("server"):
        return Target("", "", str(parsed.get("server")), parsed.get("namespace") or "default", {"clusters": []})
    target = resolve_target(parsed.get("context"), parsed.get("kubeconfig"))
    if parsed.get("namespace"):
        target.namespace = str(parsed.get("namespace"))
    return target


def kubectl_main(argv: list[str], entry: Obj) -> int:
    try:
        parsed = parse_flags(argv, KUBECTL_FLAGS)
    except FlagError as error:
        verb = next((w for w in argv if not w.startswith("-")), "")
        raise ToolExit(
            f"error: {error}\nSee 'kubectl {verb} --help' for usage.".replace("kubectl  --", "kubectl --")
        ) from None
    args = parsed.args
    word = args[0] if args else ""
    if word == "version":
        info = {
            **KUBECTL_VERSION,
            "gitCommit": "93248f9ae092f571eb870b7664c534bfc7d00f03",
            "gitTreeState": "clean",
            "buildDate": "2025-09-09T19:44:50Z",
            "goVersion": "go1.24.6",
            "compiler": "gc",
            "platform": "linux/amd64",
        }
        result = {"clientVersion": info, "kustomizeVersion": "v5.7.1"}
        if parsed.get("output") == "json":
            out(json.dumps(result, indent=2))
        elif parsed.get("output") == "yaml":
            out(yaml.safe_dump(result, sort_keys=False).rstrip("\n"))
        else:
            out(f"Client Version: {info['gitVersion']}\nKustomize Version: v5.7.1")
        if not parsed.bool("client"):
            raise ToolExit("error: server version is not simulated by the fake kubectl; use --client")
        return 0
    stdin_wanted = word in ("apply", "create", "delete", "replace") and "-" in parsed.all("filename")
    stdin_text = sys.stdin.read() if stdin_wanted else None
    if stdin_text is not None:
        entry["stdin"] = stdin_text
    if injected_failure(argv):
        return kubectl_fail(word, parsed, args)
    if word == "config":
        return kubectl_config(parsed, args)
    if word in ("apply", "create", "delete") and parsed.all("filename"):
        return kubectl_apply_files(word, parsed, stdin_text)
    try:
        if word == "exec":
            return kubectl_exec(parsed, args)
        if word == "get":
            return kubectl_get(parsed, args)
        if word == "delete":
            return kubectl_delete(parsed, args)
        if word == "create" and args[1:2] in (["namespace"], ["ns"]):
            target = _kubectl_target(parsed)
            try:
                api(
                    target.server,
                    "POST",
                    "/api/v1/namespaces",
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args[2]}},
                )
            except ApiError as error:
                if error.status == 409:
                    raise ToolExit(
                        f'Error from server (AlreadyExists): namespaces "{args[2]}" already exists'
                    ) from None
                raise kubectl_error_from_api(error) from None
            out(f"namespace/{args[2]} created")
            return 0
        if word in ("rollout", "wait"):
            return kubectl_wait(parsed, args)
        if word == "cluster-info":
            target = _kubectl_target(parsed)
            out(f"Kubernetes control plane is running at {target.server}")
            out(f"CoreDNS is running at {target.server}/api/v1/namespaces/kube-system/services/kube-dns:dns/proxy")
            out("\nTo further debug and diagnose cluster problems, use 'kubectl cluster-info dump'.")
            return 0
    except ConnectError as error:
        raise kubectl_unreachable(error) from None
    known = {
        "annotate", "api-resources", "api-versions", "attach", "auth", "autoscale", "certificate", "completion", "cordon",
        "cp", "create", "debug", "describe", "diff", "drain", "edit", "events", "explain", "expose", "kustomize", "label",
        "logs", "patch", "plugin", "port-forward", "proxy", "replace", "rollout", "run", "scale", "set", "taint", "top",
        "uncordon", "help", "alpha",
    }  # fmt: skip
    if word in known:
        raise ToolExit(f"fake kubectl: {' '.join(args)!r} is not simulated")
    if not word:
        out("kubectl controls the Kubernetes cluster manager.")
        return 0
    raise ToolExit(f'error: unknown command "{word}" for "kubectl"')


def kubectl_fail(word: str, parsed: Parsed, args: list[str]) -> int:
    if word == "exec":
        pod = args[1] if len(args) > 1 else ""
        container = parsed.get("container") or "app"
        raise ToolExit(
            f'error: unable to upgrade connection: container not found ("{container}")'
            if pod
            else "error: expected 'exec POD_NAME COMMAND [ARG1] [ARG2] ... [ARGN]'."
        )
    if word in ("apply", "create"):
        raise ToolExit(
            'Error from server (InternalError): error when creating "STDIN": Internal error occurred: failed calling webhook "namespace.sidecar-injector.istio.io": failed to call webhook: Post "https://istiod.istio-system.svc:443/inject?timeout=10s": dial tcp 10.96.140.12:443: connect: connection refused'
        )
    if word in ("wait", "rollout"):
        raise ToolExit("error: timed out waiting for the condition")
    raise ToolExit("Unable to connect to the server: dial tcp 127.0.0.1:6443: connect: connection refused")


def kubectl_config(parsed: Parsed, args: list[str]) -> int:
    sub = args[1] if len(args) > 1 else ""
    config = load_kubeconfig(parsed.get("kubeconfig"))
    if sub == "current-context":
        if not config.get("current-context"):
            raise ToolExit("error: current-context is not set")
        out(config["current-context"])
        return 0
    if sub == "get-contexts":
        names = [c["name"] for c in config["contexts"]]
        if parsed.get("output") == "name":
            for name in names:
                out(name)
        else:
            out("CURRENT   NAME   CLUSTER   AUTHINFO   NAMESPACE")
            for c in config["contexts"]:
                mark = "*" if c["name"] == config.get("current-context") else ""
                ctx = c.get("context") or {}
                out(
                    f"{mark:<10}{c['name']}   {ctx.get('cluster', '')}   {ctx.get('user', '')}   {ctx.get('namespace', '')}"
                )
        return 0
    if sub == "use-context" and len(args) > 2:
        if args[2] not in {c["name"] for c in config["contexts"]}:
            raise ToolExit(f'error: no context exists with the name: "{args[2]}"')
        path = kubeconfig_paths(parsed.get("kubeconfig"))[0]
        data = yaml.safe_load(path.read_text()) or {}
        data["current-context"] = args[2]
        path.write_text(_dump_kubeconfig(data))
        out(f'Switched to context "{args[2]}".')
        return 0
    raise ToolExit(f"fake kubectl: 'config {sub}' is not simulated")


def kubectl_apply_files(word: str, parsed: Parsed, stdin_text: str | None) -> int:
    docs: list[tuple[str, Obj]] = []
    for name in parsed.all("filename"):
        if name == "-":
            text, label = stdin_text or "", "STDIN"
        else:
            path = Path(name)
            if not path.exists():
                raise ToolExit(f'error: the path "{name}" does not exist')
            files = (
                sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml", ".json")) if path.is_dir() else [path]
            )
            for file in files:
                docs += [(str(file), d) for d in load_documents(file.read_text())]
            continue
        docs += [(label, d) for d in load_documents(text)]
    if not docs:
        raise ToolExit("error: no objects passed to " + word)
    target = _kubectl_target(parsed)
    server_side = parsed.bool("server-side")
    dry = parsed.get("dry-run")
    failed = []
    for source, doc in docs:
        ref = resource_ref(doc)
        path, _ = object_path(doc, target.namespace)
        try:
            if dry and dry not in ("none", "false"):
                out(
                    f"{ref} {'created' if word == 'create' else 'configured'} ({'server dry run' if dry == 'server' else 'dry run'})"
                )
                continue
            if word == "delete":
                try:
                    api(target.server, "DELETE", path)
                except ApiError as error:
                    if error.status == 404 and parsed.bool("ignore-not-found"):
                        continue
                    raise
                kind = doc["kind"].lower()
                group = doc.get("apiVersion", "v1").rpartition("/")[0]
                out(f'{kind}{"." + group if group else ""} "{doc["metadata"]["name"]}" deleted')
            elif word == "create":
                collection = path.rsplit("/", 1)[0]
                try:
                    api(target.server, "POST", collection, doc)
                except ApiError as error:
                    if error.status == 409:
                        failed.append(
                            f'Error from server (AlreadyExists): error when creating "{source}": {plural_of(doc["kind"])} "{doc["metadata"]["name"]}" already exists'
                        )
                        continue
                    raise
                out(f"{ref} created")
            else:
                existed = exists(target.server, path)
                body = copy.deepcopy(doc)
                if not server_side:
                    annotations = body.setdefault("metadata", {}).setdefault("annotations", {})
                    annotations["kubectl.kubernetes.io/last-applied-configuration"] = (
                        json.dumps(doc, separators=(",", ":")) + "\n"
                    )
                manager = parsed.get("field-manager") or ("kubectl" if server_side else "kubectl-client-side-apply")
                apply_object(
                    target.server, body, target.namespace, manager, server_side and parsed.bool("force-conflicts")
                )
                out(f"{ref} {'serverside-applied' if server_side else ('configured' if existed else 'created')}")
        except ConnectError as error:
            raise kubectl_unreachable(error) from None
        except ApiError as error:
            action = {"create": "creating", "delete": "deleting"}.get(
                word, "applying patch" if server_side else "creating"
            )
            failed.append(f'Error from server ({error.reason}): error when {action} "{source}": {error.message}')
    if failed:
        raise ToolExit("\n".join(failed))
    return 0


def _resolve_resource(name: str) -> tuple[str, str, str, bool]:
    if name in RESOURCES:
        return RESOURCES[name]
    if "." in name:
        plural, _, group = name.partition(".")
        kind = plural[:-1].capitalize() if plural.endswith("s") else plural.capitalize()
        return f"{group}/v1", plural, kind, True
    raise ToolExit(f'error: the server doesn\'t have a resource type "{name}"')


def _age(obj: Obj) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    try:
        seconds = int(time.time() - datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return "<unknown>"
    if seconds < 120:
        return f"{max(seconds, 0)}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def jsonpath(template: str, data: Any) -> str:
    """kubectl's JSONPath, the common subset: ``{.a.b}``, ``[*]``, ``[N]``, escaped dots, ``{range}``/``{end}``, literals."""
    template = template.strip()
    if not template.startswith("{") and not re.search(r"{[^}]*}", template):
        template = "{" + template + "}"
    tokens = re.split(r"({(?:[^{}\"]|\"[^\"]*\")*})", template)

    def evaluate(expr: str, dot: Any) -> list[Any]:
        expr = expr.strip()
        if expr.startswith('"') and expr.endswith('"'):
            return [json.loads(expr)]
        if expr in ("@", "."):
            return [dot]
        values = [dot]
        parts = re.findall(r"\.((?:\\\.|[^.\[])+)|\[(\*|-?\d+)\]", expr.lstrip("@").lstrip("$"))
        for key, index in parts:
            nxt: list[Any] = []
            for value in values:
                if key:
                    key_ = key.replace("\\.", ".")
                    if key_ == "*" and isinstance(value, dict):
                        nxt += list(value.values())
                    elif isinstance(value, dict) and key_ in value:
                        nxt.append(value[key_])
                elif isinstance(value, list):
                    if index == "*":
                        nxt += value
                    elif -len(value) <= int(index) < len(value):
                        nxt.append(value[int(index)])
            values = nxt
        return values

    def show(value: Any) -> str:
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def render(pos: int, dot: Any) -> tuple[str, int]:
        result = ""
        while pos < len(tokens):
            token = tokens[pos]
            pos += 1
            if not token.startswith("{"):
                result += token
                continue
            expr = token[1:-1].strip()
            if expr == "end":
                return result, pos
            if expr.startswith("range "):
                items = evaluate(expr[6:], dot)
                end = pos
                if not items:
                    _, end = render(pos, None)
                for item in items:
                    text, end = render(pos, item)
                    result += text
                pos = end
            else:
                result += " ".join(show(v) for v in evaluate(expr, dot))
        return result, pos

    return render(0, data)[0]


def _pod_row(pod: Obj) -> list[str]:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [
        f"{ready}/{len(containers) or len(statuses)}",
        (pod.get("status") or {}).get("phase", "Pending"),
        str(restarts),
    ]


def _service_row(svc: Obj) -> list[str]:
    spec = svc.get("spec") or {}
    ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    external = ",".join(i.get("ip") or i.get("hostname", "") for i in ingress) or (
        "<pending>" if spec.get("type") == "LoadBalancer" else "<none>"
    )
    ports = ",".join(
        f"{p['port']}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    return [spec.get("type", "ClusterIP"), spec.get("clusterIP", "<none>"), external, ports or "<none>"]


def _deployment_row(dep: Obj) -> list[str]:
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    want = int(spec.get("replicas", 1))
    return [
        f"{status.get('readyReplicas', 0)}/{want}",
        str(status.get("updatedReplicas", 0)),
        str(status.get("availableReplicas", 0)),
    ]


TABLES = {
    "Pod": (["READY", "STATUS", "RESTARTS"], _pod_row),
    "Service": (["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)"], _service_row),
    "Deployment": (["READY", "UP-TO-DATE", "AVAILABLE"], _deployment_row),
    "Namespace": (["STATUS"], lambda ns: [(ns.get("status") or {}).get("phase", "Active")]),
}


def kubectl_get(parsed: Parsed, args: list[str]) -> int:
    if len(args) < 2:
        raise ToolExit(
            'You must specify the type of resource to get. Use "kubectl api-resources" for a complete list of supported resources.'
        )
    target = _kubectl_target(parsed)
    requests: list[tuple[tuple[str, str, str, bool], str | None]] = []
    if "/" in args[1]:
        for word in args[1:]:
            kind, _, name = word.partition("/")
            requests.append((_resolve_resource(kind), name))
    else:
        for kind in args[1].split(","):
            resource = _resolve_resource(kind)
            requests += [(resource, name) for name in args[2:]] or [(resource, None)]
    all_ns = parsed.bool("all-namespaces")
    selector = parsed.get("selector")
    found: list[Obj] = []
    errors: list[str] = []
    for (api_version, plural, kind, namespaced), name in requests:
        ns = None if (not namespaced or (all_ns and not name)) else target.namespace
        base = collection_path(api_version, plural, ns)
        group = api_version.rpartition("/")[0]
        if name:
            try:
                obj = api(target.server, "GET", f"{base}/{name}")
            except ApiError as error:
                if error.status == 404:
                    if not parsed.bool("ignore-not-found"):
                        errors.append(
                            f'Error from server (NotFound): {plural}{"." + group if group else ""} "{name}" not found'
                        )
                    continue
                raise kubectl_error_from_api(error) from None
            found.append({"apiVersion": api_version, "kind": kind, **obj})
        else:
            items = list_items(target.server, base, selector)
            found += [
                {"apiVersion": api_version, "kind": kind, **i}
                for i in items
                if not selector or matches(i["metadata"].get("labels"), selector)
            ]
    output = parsed.get("output") or ""
    single = len(requests) == 1 and requests[0][1] is not None
    if output in ("json", "yaml"):
        doc = (
            found[0]
            if single and found
            else {"apiVersion": "v1", "items": found, "kind": "List", "metadata": {"resourceVersion": ""}}
        )
        if not (single and not found):
            out(json.dumps(doc, indent=4) if output == "json" else yaml.safe_dump(doc, sort_keys=False).rstrip("\n"))
    elif output.startswith("jsonpath="):
        doc = (
            found[0]
            if single and found
            else {"apiVersion": "v1", "items": found, "kind": "List", "metadata": {"resourceVersion": ""}}
        )
        if found or not single:
            sys.stdout.write(jsonpath(output.split("=", 1)[1], doc))
    elif output == "name":
        for obj in found:
            out(resource_ref(obj))
    else:
        if not found and not errors:
            where = " in " + target.namespace + " namespace" if not all_ns and requests[0][0][3] else ""
            err(f"No resources found{where}.")
        kinds = {o["kind"] for o in found}
        columns, row = TABLES.get(next(iter(kinds)), ([], lambda o: [])) if len(kinds) == 1 else ([], lambda o: [])
        header = (["NAMESPACE"] if all_ns else []) + ["NAME", *columns, "AGE"]
        rows = [header] if found and not parsed.bool("no-headers") else []
        for obj in found:
            name = obj["metadata"]["name"] if len(kinds) == 1 and "/" not in args[1] else resource_ref(obj)
            rows.append(([obj["metadata"].get("namespace", "")] if all_ns else []) + [name, *row(obj), _age(obj)])
        if rows:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                out("   ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=True)).rstrip())
    if errors:
        raise ToolExit("\n".join(errors))
    return 0


def kubectl_delete(parsed: Parsed, args: list[str]) -> int:
    if len(args) < 2:
        raise ToolExit("error: You must provide one or more resources by argument or filename.")
    target = _kubectl_target(parsed)
    pairs: list[tuple[str, str]] = []
    if "/" in args[1]:
        pairs = [tuple(word.split("/", 1)) for word in args[1:]]  # type: ignore[misc]
    else:
        pairs = [(args[1], name) for name in args[2:]]
    errors = []
    for kind, name in pairs:
        api_version, plural, _k, namespaced = _resolve_resource(kind)
        group = api_version.rpartition("/")[0]
        path = f"{collection_path(api_version, plural, target.namespace if namespaced else None)}/{name}"
        try:
            api(target.server, "DELETE", path)
        except ApiError as error:
            if error.status == 404:
                if not parsed.bool("ignore-not-found"):
                    errors.append(
                        f'Error from server (NotFound): {plural}{"." + group if group else ""} "{name}" not found'
                    )
                continue
            raise kubectl_error_from_api(error) from None
        out(f'{_k.lower()}{"." + group if group else ""} "{name}" deleted')
    if errors:
        raise ToolExit("\n".join(errors))
    return 0


def _duration(text: str | None, default: float) -> float:
    if not text:
        return default
    total, matched = 0.0, False
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text):
        matched = True
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total if matched else float(text)


def kubectl_wait(parsed: Parsed, args: list[str]) -> int:
    target = _kubectl_target(parsed)
    rollout = args[0] == "rollout"
    if rollout and args[1:2] != ["status"]:
        raise ToolExit(f"fake kubectl: 'rollout {' '.join(args[1:2])}' is not simulated")
    words = args[2:] if rollout else args[1:]
    if not words:
        raise ToolExit(
            "error: resource(s) were provided, but no name was specified"
            if rollout
            else "error: you must specify resources by --filename when --selector is used"
        )
    kind, _, name = words[0].partition("/")
    if not name and len(words) > 1:
        name = words[1]
    api_version, plural, k, namespaced = _resolve_resource(kind)
    group = api_version.rpartition("/")[0]
    path = f"{collection_path(api_version, plural, target.namespace if namespaced else None)}/{name}"
    condition = (parsed.get("for") or "condition=Ready") if not rollout else "rollout"
    deadline = time.monotonic() + _duration(parsed.get("timeout"), 30.0 if not rollout else 600.0)
    announced = False
    while True:
        try:
            obj = api(target.server, "GET", path)
        except ApiError as error:
            if error.status == 404:
                if condition == "delete":
                    return 0
                raise ToolExit(
                    f'Error from server (NotFound): {plural}{"." + group if group else ""} "{name}" not found'
                ) from None
            raise kubectl_error_from_api(error) from None
        status = obj.get("status") or {}
        if rollout:
            want = int((obj.get("spec") or {}).get("replicas", 1))
            have = int(status.get("availableReplicas") or status.get("readyReplicas") or 0)
            if have >= want:
                out(f'{k.lower()} "{name}" successfully rolled out')
                return 0
            if not announced:
                out(
                    f'Waiting for {k.lower()} "{name}" rollout to finish: {have} of {want} updated replicas are available...'
                )
                announced = True
        elif condition.startswith("condition="):
            cond, _, want_value = condition[len("condition=") :].partition("=")
            want_value = want_value or "True"
            if any(
                c.get("type", "").lower() == cond.lower() and str(c.get("status")) == want_value
                for c in status.get("conditions") or []
            ):
                out(f"{k.lower()}{'.' + group if group else ''}/{name} condition met")
                return 0
        elif condition.startswith("jsonpath="):
            expr, _, want_value = condition[len("jsonpath=") :].partition("=")
            got = jsonpath(expr.strip("'"), obj)
            if (want_value and got == want_value) or (not want_value and got):
                out(f"{k.lower()}{'.' + group if group else ''}/{name} condition met")
                return 0
        if time.monotonic() >= deadline:
            raise ToolExit(
                "error: timed out waiting for the condition"
                if not rollout
                else f"error: timed out waiting for the condition on {plural}/{name}"
            )
        time.sleep(0.1)


UPSTREAM_503 = "upstream connect error or disconnect/reset before headers. reset reason: connection failure"


def kubectl_exec(parsed: Parsed, args: list[str]) -> int:
    if len(args) < 2:
        raise ToolExit(
            "error: expected 'exec POD_NAME COMMAND [ARG1] [ARG2] ... [ARGN]'.\nPOD_NAME and COMMAND are required arguments for the exec command"
        )
    target = _kubectl_target(parsed)
    pod_ref = args[1]
    pod_name = pod_ref.split("/", 1)[1] if pod_ref.startswith(("pod/", "pods/", "po/")) else pod_ref
    command = parsed.after_dash if parsed.after_dash is not None else args[2:]
    if not command:
        raise ToolExit("error: you must specify at least one command for the container")
    pod_path = f"{collection_path('v1', 'pods', target.namespace)}/{pod_name}"
    try:
        pod = api(target.server, "GET", pod_path)
    except ApiError as error:
        if error.status == 404:
            raise ToolExit(f'Error from server (NotFound): pods "{pod_name}" not found') from None
        raise kubectl_error_from_api(error) from None
    containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    container = parsed.get("container")
    if container and containers and container not in containers:
        raise ToolExit(f'error: unable to upgrade connection: container not found ("{container}")')
    if command[:2] == ["/bin/sh", "-c"] and container == "istio-proxy":
        return proxy_shell(pod, command[2] if len(command) > 2 else "")
    if command[:2] == ["pilot-discovery", "version"] and container in (None, "discovery"):
        out(istio_version())  # `version -s`: the build's version, as istiod reports it
        return 0
    program = [w for w in command if not w.startswith("python")]
    if (
        len(command) >= 3
        and command[0].startswith("python")
        and command[1].endswith("echo.py")
        and command[2] == "call"
    ):
        return echo_call(parsed, target, pod, command[3:])
    raise ToolExit(f"fake kubectl: exec of {' '.join(program or command)!r} is not simulated")


# Envoy's and pilot-agent's listeners in a proxy's network namespace (an east-west gateway adds 15443).
PROXY_PORTS = (15000, 15001, 15004, 15006, 15020, 15021, 15090)


def proxy_shell(pod: Obj, command: str) -> int:
    """testinfra's kubectl:// transport in an istio-proxy container: PID 1's command line and the
    listening sockets (``MESHFED_FAKE_NO_15443=1`` takes the gateway's passthrough listener away)."""
    gateway = (pod["metadata"].get("labels") or {}).get("istio") == "eastwestgateway"
    if command == "cat /proc/1/cmdline":
        role = "router" if gateway else "sidecar"
        sys.stdout.write(f"/usr/local/bin/pilot-agent\0proxy\0{role}\0--domain\0meshfed.svc.cluster.local\0")
        return 0
    if command == "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null":
        ports = list(PROXY_PORTS) + ([15443] if gateway and _env("MESHFED_FAKE_NO_15443") != "1" else [])
        out("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode")
        for i, port in enumerate(ports):
            out(
                f"{i:4}: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337        0 {9000 + i} 1"
            )
        return 0
    raise ToolExit(f"fake kubectl: shell command {command!r} in istio-proxy is not simulated")


def echo_call(parsed: Parsed, target: Target, caller_pod: Obj, argv: list[str]) -> int:
    spec = FlagSpec(values={"count", "timeout", "header"}, bools=set())
    try:
        call = parse_flags(argv, spec)
    except FlagError as error:
        err("usage: echo.py call [-h] [--count COUNT] [--timeout TIMEOUT] [--header NAME:VALUE] url")
        raise ToolExit(f"echo.py call: error: {error}\ncommand terminated with exit code 2", 2) from None
    if not call.args:
        err("usage: echo.py call [-h] [--count COUNT] [--timeout TIMEOUT] [--header NAME:VALUE] url")
        raise ToolExit(
            "echo.py call: error: the following arguments are required: url\ncommand terminated with exit code 2", 2
        )
    url = call.args[0]
    count = int(call.get("count") or 1)
    timeout = float(call.get("timeout") or 5.0)
    headers = dict(h.split(":", 1) for h in call.all("header"))
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    labels = host.split(".")
    service = labels[0]
    namespace = labels[1] if len(labels) > 1 and labels[1] != "svc" else target.namespace
    cluster = target.context[5:] if target.context.startswith("kind-") else target.cluster
    pods: list[Obj] = []
    with contextlib.suppress(ApiError, ConnectError):
        pods = [
            p
            for p in list_items(target.server, collection_path("v1", "pods", namespace), f"app={service}")
            if matches(p["metadata"].get("labels"), f"app={service}")
        ]
    sa = (caller_pod.get("spec") or {}).get("serviceAccountName") or "default"
    caller_ns = (caller_pod.get("metadata") or {}).get("namespace") or target.namespace
    caller = f"spiffe://cluster.local/ns/{caller_ns}/sa/{sa}"
    overrides_text = _env("MESHFED_FAKE_CALL_REPLY")
    overrides: list[Obj] = []
    if overrides_text:
        loaded = json.loads(overrides_text)
        overrides = loaded if isinstance(loaded, list) else [loaded]
    forced = (_env("MESHFED_FAKE_CALL_STATUS") or "200").strip().lower()
    for i in range(count):
        result: Obj = {"status": None, "reply": None, "body": "", "error": ""}
        if forced == "timeout":
            result["error"] = f"timed out after {timeout:g}s"
        elif forced == "refused":
            result["error"] = "ConnectionRefusedError: [Errno 111] Connection refused"
        elif forced == "503":
            result["status"] = 503
            result["body"] = UPSTREAM_503
        else:
            pod = pods[i % len(pods)] if pods else None
            pod_labels = (pod or {}).get("metadata", {}).get("labels") or {}
            reply = {
                "cluster": (_env_of(pod, "CLUSTER") if pod else None) or cluster,
                "pod": pod["metadata"]["name"]
                if pod
                else f"{service}-v1-{_hex(service + cluster, 10)[:10]}-{_hex(service + str(i % 2), 5)}",
                "version": pod_labels.get("version", "v1"),
                "service": service,
                "namespace": namespace,
                "caller": caller,
                "headers": {
                    "host": parts.netloc,
                    "x-forwarded-proto": "http",
                    "x-request-id": f"{_hex(url + str(i) + str(time.time()), 8)}-{_hex(str(i), 4)}-4{_hex(url, 3)}-a{_hex(host, 3)}-{_hex(str(time.time()), 12)}",
                    "x-envoy-attempt-count": "1",
                    "x-forwarded-client-cert": f'By=spiffe://cluster.local/ns/{namespace}/sa/{service};Hash={_hex(caller)};Subject="";URI={caller}',
                    **{k.lower(): v.strip() for k, v in headers.items()},
                },
            }
            if overrides:
                reply.update(overrides[i % len(overrides)])
            result["status"] = int(forced) if forced.isdigit() else 200
            result["reply"] = reply
        result["latencyMs"] = round(1.2 + (int(_hex(f"{url}/{i}", 4), 16) % 900) / 1000, 3)
        out(json.dumps(result))
    return 0


# ---------------------------------------------------------------- entry point


TOOLS = {"kind": kind_main, "docker": docker_main, "istioctl": istioctl_main, "kubectl": kubectl_main}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        sys.stderr.write(f"usage: fake_tools.py {{{','.join(TOOLS)}}} ARGS...\n")
        return 2
    tool, args = argv[0], argv[1:]
    entry: Obj = {"tool": tool, "argv": args, "stdin": None, "time": time.time()}
    code = 0
    try:
        code = TOOLS[tool](args, entry)
    except ToolExit as stop:
        sys.stdout.flush()
        err(stop.stderr)
        code = stop.code
    except ConnectError as error:
        sys.stdout.flush()
        err(f"Error: dial tcp {error.hostport}: connect: connection refused" if tool == "istioctl" else str(error))
        code = 1
    finally:
        entry["exitCode"] = code
        log_call(entry)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
