"""Pinned tools: downloaded once into the cache, checked against a pinned or published SHA-256, refused
when they do not match; and the preflight sentences about memory."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from meshfed.backends import tools
from meshfed.backends.base import BackendError
from meshfed.backends.preflight import GIB, check_memory, docker_info


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MESHFED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _istio_tarball(version: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((f"istio-{version}/bin/istioctl", payload), (f"istio-{version}/README.md", b"readme")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_pinned_checksum_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    release = tools.kind_release("linux", "amd64")
    assert release.url == "https://github.com/kubernetes-sigs/kind/releases/download/v0.31.0/kind-linux-amd64"
    pinned = tools.PINNED_SHA256[("kind", "v0.31.0", "linux", "amd64")]
    fetched: list[str] = []

    def download(url: str) -> bytes:
        fetched.append(url)
        return b"not kind"

    with pytest.raises(
        BackendError, match=rf"has SHA-256 {hashlib.sha256(b'not kind').hexdigest()}, not the expected {pinned}"
    ):
        tools.install(release, "linux", "amd64", download)
    assert fetched == [release.url]  # a pinned checksum needs no checksum file
    assert not release.cache_path().exists()


def test_an_unpinned_release_is_held_to_its_published_checksum_then_to_the_recorded_one(cache: Path) -> None:
    payload = b"#!/bin/sh\necho istioctl\n"
    tarball = _istio_tarball("1.31.0", payload)
    release = tools.istioctl_release("linux", "amd64", "1.31.0")
    assert release.url.endswith("/1.31.0/istio-1.31.0-linux-amd64.tar.gz")
    served = {release.url: tarball, release.checksum_url: f"{hashlib.sha256(tarball).hexdigest()}  x.tar.gz\n".encode()}
    path = tools.install(release, "linux", "amd64", served.__getitem__)
    assert path.read_bytes() == payload and path.stat().st_mode & 0o111
    recorded = json.loads((cache / "checksums.json").read_text())
    assert recorded == {release.url: hashlib.sha256(tarball).hexdigest()}

    # The file is lost; the publisher now serves something else with a matching checksum file: refused.
    path.unlink()
    other = _istio_tarball("1.31.0", b"tampered")
    served = {release.url: other, release.checksum_url: f"{hashlib.sha256(other).hexdigest()}\n".encode()}
    with pytest.raises(BackendError, match="the download is corrupt or was tampered with"):
        tools.install(release, "linux", "amd64", served.__getitem__)


def test_a_download_that_fails_names_the_way_out() -> None:
    def offline(url: str) -> bytes:
        raise OSError("Network is unreachable")

    release = tools.kubectl_release("linux", "amd64")
    with pytest.raises(
        BackendError, match=r"could not download kubectl v1.35.0 from .*Network is unreachable.*put that file at"
    ):
        tools.install(release, "linux", "amd64", offline)


def test_metallb_has_no_published_checksum_so_only_its_pinned_version_downloads() -> None:
    assert tools.metallb_release().url.endswith("/v0.15.3/config/manifests/metallb-native.yaml")
    with pytest.raises(BackendError, match="has no pinned checksum and its publisher serves none"):
        tools.install(tools.metallb_release("v0.16.1"), "linux", "amd64", lambda url: b"")


def test_too_little_memory_for_docker_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(
        BackendError, match=r"^3 kind clusters need about 6 GiB of memory but Docker has 4.0 GiB: give Docker more"
    ):
        check_memory({"MemTotal": 4 * GIB}, 3, tmp_path / "no-meminfo")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8388608 kB\nMemAvailable: 2097152 kB\n")
    with pytest.raises(BackendError, match=r"but this machine has 2.0 GiB available: close other programs"):
        check_memory({"MemTotal": 16 * GIB}, 2, meminfo)


def test_docker_missing_is_one_sentence() -> None:
    def missing(command: list[str]) -> object:
        raise FileNotFoundError(command[0])

    with pytest.raises(BackendError, match=r"^docker is not installed: the kind backend runs its clusters in Docker"):
        docker_info(missing)  # type: ignore[arg-type]


def test_a_cached_kubectl_is_used_and_put_on_path_for_testinfra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no kubectl anywhere
    cached = tools.kubectl_release(*tools.host_platform()).cache_path()
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    toolbox = tools.find_tools([], need_kind=False, download=lambda url: b"", progress=lambda line: None)
    assert toolbox.kubectl == cached
    assert toolbox.metallb_manifest is None and dict(toolbox.istioctl) == {}
    assert os.environ["PATH"].split(os.pathsep)[0] == str(cached.parent)
