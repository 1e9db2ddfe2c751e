"""The command-line tools the real backends run: pinned versions, found or downloaded, checksum-verified.

A tool already on PATH is used when it is the pinned version (``istioctl`` must be exactly the Istio
version under test; any ``kubectl`` will do). Otherwise it is downloaded from its publisher into the
cache folder (``$MESHFED_CACHE``, else ``$XDG_CACHE_HOME/meshfed``, else ``~/.cache/meshfed``) and its
SHA-256 is checked: against :data:`PINNED_SHA256` when the checksum is pinned here, else against the
checksum file the publisher serves beside the release, and that value is then recorded in
``checksums.json`` in the cache so that a later download is held to it. Air-gapped users put the
binaries on PATH or in the cache folder (``tools/<name>-<version>/<name>``) themselves.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshfed.backends.base import BackendError

KIND_VERSION = "v0.31.0"
# kind v0.31.0's own default node image (pkg/apis/config/defaults/image.go at tag v0.31.0), pinned by
# digest. Kubernetes 1.35 is supported by Istio 1.29 (1.31-1.35), 1.30 (1.32-1.36) and 1.31.
NODE_IMAGE = "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
KUBECTL_VERSION = "v1.35.0"
METALLB_VERSION = "v0.15.3"

# SHA-256 of the release files, by (name, version, os, arch). Sources: the checksums cert-manager's
# makefile-modules verify its downloads with (modules/tools/00_mod.mk), and for MetalLB the manifest at
# its git tag. Istio's are for the full release tarball ``istio-V-OS-ARCH.tar.gz`` that holds istioctl.
PINNED_SHA256: Mapping[tuple[str, str, str, str], str] = {
    ("kind", "v0.31.0", "linux", "amd64"): "eb244cbafcc157dff60cf68693c14c9a75c4e6e6fedaf9cd71c58117cb93e3fa",
    ("kind", "v0.31.0", "linux", "arm64"): "8e1014e87c34901cc422a1445866835d1e666f2a61301c27e722bdeab5a1f7e4",
    ("kind", "v0.31.0", "darwin", "amd64"): "a8b3cf77b2ad77aec5bf710d1a2589d9117576132af812885cad41e9dede4d4e",
    ("kind", "v0.31.0", "darwin", "arm64"): "88bf554fe9da6311c9f8c2d082613c002911a476f6b5090e9420b35d84e70c5c",
    ("kubectl", "v1.35.0", "linux", "amd64"): "a2e984a18a0c063279d692533031c1eff93a262afcc0afdc517375432d060989",
    ("kubectl", "v1.35.0", "linux", "arm64"): "58f82f9fe796c375c5c4b8439850b0f3f4d401a52434052f2df46035a8789e25",
    ("kubectl", "v1.35.0", "darwin", "arm64"): "cf699c56340dc775230fde4ef84237d27563ea6ef52164c7d078072b586c3918",
    ("istio", "1.28.3", "linux", "amd64"): "48d8bbe5879b121d47a553d5fbe55c19d53cfaecaa0634c86366da72ced38ac2",
    ("istio", "1.28.3", "linux", "arm64"): "6e364e372d99886631e6f841c314d13abd549a7c5be1f89417c13f0dd6fbc4a1",
    ("istio", "1.28.3", "darwin", "arm64"): "748da8498069348065611a7b38132e3f43cd4851b8b8f35c59531f38de944410",
    ("istio", "1.29.2", "linux", "amd64"): "904bbf1b917dd0135aa55b99cbfa34edd0a188fdeeeef09bb995d8e8e3165112",
    ("istio", "1.29.2", "linux", "arm64"): "c4130d32359446fa5e4820c0543d06e2e424883c6890f0f8c59f3ac69dd4b44e",
    ("istio", "1.29.2", "darwin", "arm64"): "dffa0ff011774cf65fbae5d53f84d54bd12b541a35cff68be60db1c6674f03b4",
    ("istio", "1.30.3", "linux", "amd64"): "55ada076ba1b37af49e8a24e5e539b4abccabdb33894c923279edd293eea3993",
    ("istio", "1.30.3", "linux", "arm64"): "926d265818e8ab69de9f81bfe78447c3bc8f4ae32a356a39545b790bfcfd63e5",
    ("istio", "1.30.3", "darwin", "arm64"): "4d78e3effac3253c9348cef73563af405dc3429bea9536eae98a724ee81761c7",
    ("metallb", "v0.15.3", "any", "any"): "84b4e102f2b65f5d69085f5816c29362b74641873d8ac3de996e5f86a8219176",
}

Download = Callable[[str], bytes]


def cache_dir() -> Path:
    if os.environ.get("MESHFED_CACHE"):
        return Path(os.environ["MESHFED_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "meshfed"


def host_platform() -> tuple[str, str]:
    """(os, arch) as release files name them: linux/darwin, amd64/arm64."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine)
    if system not in ("linux", "darwin") or arch is None:
        raise BackendError(
            f"the kind backend runs on Linux or macOS, amd64 or arm64, not {system}/{machine}: "
            "use --backend existing against clusters you run elsewhere"
        )
    return system, arch


@dataclass(frozen=True)
class Release:
    """Where one tool version is published and how its checksum is written."""

    name: str
    version: str
    url: str
    checksum_url: str
    member: str | None = None  # the file's path inside a .tar.gz, if the release is an archive
    binary: str = ""  # the file's name in the cache (default: the release's name)
    platform_free: bool = False  # the same file for every os/arch

    def cache_path(self) -> Path:
        return cache_dir() / "tools" / f"{self.name}-{self.version}" / (self.binary or self.name)


def kind_release(os_name: str, arch: str, version: str = KIND_VERSION) -> Release:
    url = f"https://github.com/kubernetes-sigs/kind/releases/download/{version}/kind-{os_name}-{arch}"
    return Release("kind", version, url, url + ".sha256sum")


def kubectl_release(os_name: str, arch: str, version: str = KUBECTL_VERSION) -> Release:
    url = f"https://dl.k8s.io/release/{version}/bin/{os_name}/{arch}/kubectl"
    return Release("kubectl", version, url, url + ".sha256")


def istioctl_release(os_name: str, arch: str, version: str) -> Release:
    """The Istio release tarball (its checksums are the ones published widely), istioctl taken from bin/."""
    flavour = {"linux": f"linux-{arch}", "darwin": f"osx-{arch}" if arch == "arm64" else "osx"}[os_name]
    url = f"https://github.com/istio/istio/releases/download/{version}/istio-{version}-{flavour}.tar.gz"
    return Release("istio", version, url, url + ".sha256", member=f"istio-{version}/bin/istioctl", binary="istioctl")


def metallb_release(version: str = METALLB_VERSION) -> Release:
    """MetalLB's manifest; MetalLB publishes no checksum file, so only a pinned version is verified."""
    url = f"https://raw.githubusercontent.com/metallb/metallb/{version}/config/manifests/metallb-native.yaml"
    return Release("metallb", version, url, "", binary="metallb-native.yaml", platform_free=True)


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        data: bytes = response.read()
        return data


def _recorded_checksums() -> dict[str, str]:
    path = cache_dir() / "checksums.json"
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _record_checksum(url: str, digest: str) -> None:
    recorded = _recorded_checksums()
    recorded[url] = digest
    path = cache_dir() / "checksums.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def expected_checksum(release: Release, os_name: str, arch: str, download: Download) -> str:
    key = (release.name, release.version, *(("any", "any") if release.platform_free else (os_name, arch)))
    pinned = PINNED_SHA256.get(key)
    if pinned:
        return pinned
    recorded = _recorded_checksums().get(release.url)
    if recorded:
        return recorded
    if not release.checksum_url:
        raise BackendError(
            f"{release.name} {release.version} has no pinned checksum and its publisher serves none: "
            f"use {release.name} {PINNED_VERSIONS.get(release.name, 'of a pinned version')}, or put the file at "
            f"{release.cache_path()} yourself"
        )
    try:
        text = download(release.checksum_url).decode()
    except (OSError, urllib.error.URLError) as error:
        raise BackendError(
            f"could not download the checksum of {release.name} {release.version} from {release.checksum_url} "
            f"({error}): check the network, or put {release.name} {release.version} on PATH"
        ) from None
    match = re.search(r"\b[0-9a-f]{64}\b", text)
    if match is None:
        raise BackendError(
            f"{release.checksum_url} holds no SHA-256 checksum: put {release.name} {release.version} on PATH instead"
        )
    return match.group(0)


def install(release: Release, os_name: str, arch: str, download: Download = _http_get) -> Path:
    """Download ``release`` into the cache, verify it and return the binary's path."""
    target = release.cache_path()
    if target.is_file() and (release.platform_free or os.access(target, os.X_OK)):
        return target
    expected = expected_checksum(release, os_name, arch, download)
    try:
        payload = download(release.url)
    except (OSError, urllib.error.URLError) as error:
        raise BackendError(
            f"could not download {release.name} {release.version} from {release.url} ({error}): check the "
            f"network, or put that file at {target} yourself"
        ) from None
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise BackendError(
            f"{release.url} has SHA-256 {actual}, not the expected {expected}: the download is corrupt or was "
            "tampered with; nothing was installed, try again or download it yourself and check it"
        )
    if release.member is not None:
        payload = _extract(payload, release.member, release.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(payload)
    partial.chmod(0o644 if release.platform_free else 0o755)
    partial.rename(target)
    _record_checksum(release.url, expected)
    return target


def _extract(archive: bytes, member: str, url: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for info in tar.getmembers():
            if info.isfile() and info.name.removeprefix("./") == member:
                extracted = tar.extractfile(info)
                if extracted is not None:
                    return extracted.read()
    raise BackendError(f"{url} has no {member} in it: download {member} yourself and put it on PATH")


def run_version(binary: str | Path, args: Sequence[str]) -> str:
    """The output of ``binary args`` (a version query), or "" when it cannot run."""
    try:
        done = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def kind_version_of(binary: str | Path) -> str:
    match = re.search(r"kind (v\d+\.\d+\.\d+)", run_version(binary, ["version"]))
    return match.group(1) if match else ""


def istioctl_version_of(binary: str | Path) -> str:
    match = re.search(r"(\d+\.\d+\.\d+\S*)", run_version(binary, ["version", "--remote=false"]))
    return match.group(1) if match else ""


def istioctl_build_of(binary: str | Path) -> str:
    """The version any istioctl says it is, a developer's build included (``1.31-dev``); "" when it says none."""
    match = re.search(r"(\d+\.\d+[.-]\S*)", run_version(binary, ["version", "--remote=false"]))
    return match.group(1) if match else ""


@dataclass(frozen=True)
class Toolbox:
    """The binaries a run uses, by name."""

    kind: Path
    kubectl: Path
    istioctl: Mapping[str, Path]  # by Istio version
    metallb_manifest: Path | None = None

    def istioctl_for(self, version: str) -> Path:
        return self.istioctl[version]


def _is_istioctl(version: str, path: str) -> bool:
    return istioctl_version_of(path) == version


PINNED_VERSIONS = {"metallb": METALLB_VERSION, "kind": KIND_VERSION, "kubectl": KUBECTL_VERSION}


def _on_path(name: str, accept: Callable[[str], bool]) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found and accept(found) else None


def is_kubectl(path: str | Path) -> bool:
    return bool(run_version(path, ["version", "--client", "-o", "json"]))


def find_kubectl(download: Download, progress: Callable[[str], None]) -> Path:
    """kubectl from PATH, else the pinned release from the cache (downloaded once)."""
    kubectl = _on_path("kubectl", is_kubectl)
    if kubectl is None:
        os_name, arch = host_platform()
        kubectl = _fetch(kubectl_release(os_name, arch), os_name, arch, download, progress)
        # testinfra's kubectl:// transport runs `kubectl` by name: let it find this one.
        os.environ["PATH"] = f"{kubectl.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return kubectl


def find_tools(
    istio_versions: Sequence[str], *, need_kind: bool, download: Download = _http_get, progress: Callable[[str], None]
) -> Toolbox:
    """The pinned tools, from PATH when it has the right version, else from the cache (downloaded once)."""
    os_name, arch = host_platform()
    kind = Path("kind")
    if need_kind:
        kind = _on_path("kind", lambda path: kind_version_of(path) == KIND_VERSION) or _fetch(
            kind_release(os_name, arch), os_name, arch, download, progress
        )
    kubectl = find_kubectl(download, progress)
    istioctl: dict[str, Path] = {}
    for version in dict.fromkeys(istio_versions):
        on_path = _on_path("istioctl", functools.partial(_is_istioctl, version))
        istioctl[version] = on_path or _fetch(
            istioctl_release(os_name, arch, version), os_name, arch, download, progress
        )
    metallb = _fetch(metallb_release(), os_name, arch, download, progress) if need_kind else None
    return Toolbox(kind=kind, kubectl=kubectl, istioctl=istioctl, metallb_manifest=metallb)


def _fetch(release: Release, os_name: str, arch: str, download: Download, progress: Callable[[str], None]) -> Path:
    if not release.cache_path().is_file():
        progress(f"downloading {release.name} {release.version} from {release.url}")
    return install(release, os_name, arch, download)
