"""The images a host cluster runs, assembled locally and never pulled.

A Debian root filesystem made by ``debootstrap`` from Debian's packages (python3, iptables, iproute2,
ca-certificates) is the base of the workload image (Python for the echo program) and of Istio's
``pilot`` and ``proxyv2`` images, which add the built binaries where Istio's Dockerfiles put them
(``/usr/local/bin``, Envoy's bootstrap template in ``/var/lib/istio/envoy``, the ``istio-proxy`` user
1337). ``pause`` is busybox's static ``sleep``; ``coredns`` is the built CoreDNS alone. They are written
as one ``docker save`` archive (shared layers once) and imported into each node's containerd.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshfed.backends.base import BackendError, Progress
from meshfed.backends.host.binaries import Binaries
from meshfed.backends.host.components import PAUSE_IMAGE

SUITE = "bookworm"
PACKAGES = ("python3", "iptables", "iproute2", "ca-certificates")
HUB = "meshfed.local/istio"  # Istio's values.global.hub on host clusters
WORKLOAD_IMAGE = "meshfed.local/python:3.11-bookworm"
COREDNS_IMAGE = "meshfed.local/coredns:host"


@dataclass(frozen=True)
class Layer:
    """Files for one layer: path in the image -> (source file, mode); or a whole folder as the base."""

    files: Mapping[str, tuple[Path | bytes, int]] = field(default_factory=dict)
    folder: Path | None = None


@dataclass(frozen=True)
class Image:
    name: str
    layers: tuple[Layer, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


def base_rootfs(cache: Path, progress: Progress) -> Path:
    """The Debian root filesystem, made once with debootstrap and kept in the cache."""
    folder = cache / f"rootfs-{SUITE}"
    if (folder / ".complete").is_file():
        return folder
    if shutil.which("debootstrap") is None:
        raise BackendError("debootstrap is not installed: `apt-get install debootstrap` (the host backend needs it)")
    shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    progress(f"making the images' Debian {SUITE} root filesystem with debootstrap ({', '.join(PACKAGES)})")
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(folder)],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-2:]
        raise BackendError(f"debootstrap of Debian {SUITE} failed: {' / '.join(last)}: check that apt can reach Debian")
    for leftover in ("var/cache/apt/archives", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(folder / leftover, ignore_errors=True)
    with (folder / "etc" / "passwd").open("a") as passwd:
        passwd.write("istio-proxy:x:1337:1337:istio-proxy:/home/istio-proxy:/bin/sh\n")
    with (folder / "etc" / "group").open("a") as group:
        group.write("istio-proxy:x:1337:\n")
    if not (folder / "usr/bin/python").exists():  # the workload program is started as `python`, as in python:3
        (folder / "usr/bin/python").symlink_to("python3")
    for path in ("etc/istio/proxy", "var/lib/istio/envoy", "var/lib/istio/data"):
        (folder / path).mkdir(parents=True, exist_ok=True)
    (folder / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
    progress(f"root filesystem ready in {time.monotonic() - started:.0f} s")
    return folder


def images(
    bins: Binaries, rootfs: Path, istio_tag: str, bootstrap: Path, canary: tuple[Binaries, str] | None = None
) -> list[Image]:
    """Every image a host cluster runs; with ``canary``, also the Istio images of a second build (for
    CanaryUpgrade) under its own tag, with the same Envoy."""
    base = Layer(folder=rootfs)
    busybox = Path("/bin/busybox")
    if not busybox.is_file():
        raise BackendError("busybox-static is not installed: `apt-get install busybox-static` (the pause image)")
    istio = _istio_images(base, bins, bins["envoy"], istio_tag, bootstrap)
    if canary is not None:
        istio += _istio_images(base, canary[0], bins["envoy"], canary[1], canary[0].bootstrap)
    return [
        Image(PAUSE_IMAGE, (Layer({"bin/busybox": (busybox, 0o755)}),), ("/bin/busybox", "sleep", "2147483647")),
        Image(WORKLOAD_IMAGE, (base,), cmd=("python3",)),
        *istio,
        Image(COREDNS_IMAGE, (Layer({"coredns": (bins["coredns"], 0o755)}),), ("/coredns",)),
    ]


def _istio_images(base: Layer, istio: Binaries, envoy: Path, tag: str, bootstrap: Path) -> list[Image]:
    proxy = Layer(
        {
            "usr/local/bin/pilot-agent": (istio["pilot-agent"], 0o755),
            "usr/local/bin/envoy": (envoy, 0o755),
            "var/lib/istio/envoy/envoy_bootstrap_tmpl.json": (bootstrap, 0o644),
        }
    )
    pilot = Layer(
        {
            "usr/local/bin/pilot-discovery": (istio["pilot-discovery"], 0o755),
            "var/lib/istio/envoy/envoy_bootstrap_tmpl.json": (bootstrap, 0o644),
        }
    )
    return [
        Image(f"{HUB}/pilot:{tag}", (base, pilot), ("/usr/local/bin/pilot-discovery",), user="1337:1337"),
        Image(f"{HUB}/proxyv2:{tag}", (base, proxy), ("/usr/local/bin/pilot-agent",), user="1337:1337"),
    ]


def _layer_tar(layer: Layer) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if layer.folder is not None:
            for path in sorted(layer.folder.rglob("*")):
                name = str(path.relative_to(layer.folder))
                if name == ".complete" or name.startswith(("proc/", "sys/", "dev/")):
                    continue
                tar.add(path, arcname=name, recursive=False)
        parents: set[str] = set()
        for name, (source, mode) in sorted(layer.files.items()):
            for index in range(1, name.count("/") + 1):
                parent = "/".join(name.split("/")[:index])
                if parent not in parents:
                    parents.add(parent)
                    info = tarfile.TarInfo(parent)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
            data = source if isinstance(source, bytes) else source.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(target: Path, wanted: Sequence[Image]) -> None:
    """One ``docker save`` archive of ``wanted``: each distinct layer stored once, by its digest."""
    tmp = target.with_suffix(".partial")
    layers: dict[int, str] = {}
    with tarfile.open(tmp, "w") as archive:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        manifest = []
        for image in wanted:
            digests = []
            for layer in image.layers:
                if id(layer) not in layers:
                    data = _layer_tar(layer)
                    digest = hashlib.sha256(data).hexdigest()
                    add(f"{digest}/layer.tar", data)
                    layers[id(layer)] = digest
                digests.append(layers[id(layer)])
            config = {
                "architecture": "amd64",
                "os": "linux",
                "config": {
                    "Entrypoint": list(image.entrypoint) or None,
                    "Cmd": list(image.cmd) or None,
                    "User": image.user,
                    "Env": list(image.env),
                },
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in digests]},
            }
            blob = json.dumps(config).encode()
            config_name = hashlib.sha256(blob).hexdigest() + ".json"
            add(config_name, blob)
            manifest.append(
                {"Config": config_name, "RepoTags": [image.name], "Layers": [f"{d}/layer.tar" for d in digests]}
            )
        add("manifest.json", json.dumps(manifest).encode())
    tmp.rename(target)


def archive(
    bins: Binaries,
    cache: Path,
    istio_tag: str,
    bootstrap: Path,
    progress: Progress,
    canary: tuple[Binaries, str] | None = None,
) -> Path:
    """The images' archive for these binaries, made once and kept in the cache."""
    rootfs = base_rootfs(cache, progress)
    wanted = images(bins, rootfs, istio_tag, bootstrap, canary)
    key = hashlib.sha256()
    for image in wanted:
        key.update(image.name.encode())
        for layer in image.layers:
            for name, (source, _mode) in sorted(layer.files.items()):
                stat = source.stat() if isinstance(source, Path) else None
                key.update(f"{name}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}".encode())
    key.update((rootfs / ".complete").read_bytes())
    target = cache / f"images-{key.hexdigest()[:16]}.tar"
    if not target.is_file():
        started = time.monotonic()
        progress(f"writing the images ({', '.join(image.name for image in wanted)})")
        for old in cache.glob("images-*.tar"):
            _remove_unless_in_use(old)
        write_archive(target, wanted)
        progress(f"images written in {time.monotonic() - started:.0f} s ({target.stat().st_size >> 20} MiB)")
    return target


def _remove_unless_in_use(old: Path) -> None:
    """Remove an archive of other binaries unless a host mesh beside this run is importing it."""
    with old.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        old.unlink()


def import_into(socket: Path, archive_path: Path) -> None:
    with archive_path.open("rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # in use: another host mesh's build does not remove it meanwhile
        done = subprocess.run(
            ["ctr", "--address", str(socket), "--namespace", "k8s.io", "images", "import", str(archive_path)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    if done.returncode != 0:
        raise BackendError(f"importing the images into containerd failed: {done.stderr.strip()[-300:]}")
