"""Checks made before the kind backend creates anything; each failure is one sentence with the fix."""

from __future__ import annotations

import json
import platform
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from meshfed.backends.base import BackendError

GIB = 1024**3
# A kind node with istiod, an east-west gateway, MetalLB and the three test workloads uses ~1.5 GiB.
MEMORY_PER_CLUSTER = 2 * GIB
# kind's "known issues": several clusters exhaust the inotify defaults ("too many open files").
INOTIFY_MINIMUMS = {"max_user_watches": 524288, "max_user_instances": 512}

Run = Callable[[list[str]], subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class HostPaths:
    """Where this host's memory and inotify limits are read (tests point them elsewhere)."""

    meminfo: Path = Path("/proc/meminfo")
    inotify: Path = Path("/proc/sys/fs/inotify")


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def docker_info(run: Run = _run) -> dict[str, object]:
    """``docker info`` as JSON; BackendError when Docker is missing or its daemon does not answer."""
    try:
        done = run(["docker", "info", "--format", "{{json .}}"])
    except FileNotFoundError:
        raise BackendError(
            "docker is not installed: the kind backend runs its clusters in Docker containers; install Docker "
            "Engine (or Docker Desktop) and run again"
        ) from None
    except subprocess.TimeoutExpired:
        raise BackendError("`docker info` did not answer within 60 s: restart Docker and run again") from None
    try:
        info = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    except ValueError:
        info = {}
    # With --format, docker prints the JSON even when the daemon is down and puts the error in ServerErrors.
    errors = list(info.get("ServerErrors") or []) if isinstance(info, dict) else []
    if done.returncode != 0 or errors or not info.get("ServerVersion"):
        reason = "; ".join(str(e) for e in errors) or done.stderr.strip() or "no answer from the daemon"
        raise BackendError(f"Docker is not reachable ({reason}): start Docker (or Docker Desktop) and run again")
    return info


def check_memory(info: dict[str, object], clusters: int, meminfo: Path = Path("/proc/meminfo")) -> None:
    needed = clusters * MEMORY_PER_CLUSTER
    total = info.get("MemTotal")
    if isinstance(total, int) and 0 < total < needed:
        raise BackendError(
            f"{clusters} kind clusters need about {needed / GIB:.0f} GiB of memory but Docker has "
            f"{total / GIB:.1f} GiB: give Docker more memory (Docker Desktop: Settings > Resources) or use fewer "
            "clusters (--clusters 2)"
        )
    available = _meminfo_available(meminfo)
    if available is not None and available < needed:
        raise BackendError(
            f"{clusters} kind clusters need about {needed / GIB:.0f} GiB of free memory but this machine has "
            f"{available / GIB:.1f} GiB available: close other programs or use fewer clusters (--clusters 2)"
        )


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_inotify(clusters: int, sysctl_root: Path = Path("/proc/sys/fs/inotify")) -> None:
    """On Linux, the host's inotify limits (kind nodes share the host kernel). Docker Desktop's VM sets its own."""
    if clusters < 2 or platform.system() != "Linux":
        return
    for name, minimum in INOTIFY_MINIMUMS.items():
        try:
            value = int((sysctl_root / name).read_text().strip())
        except (OSError, ValueError):
            continue
        if value < minimum:
            raise BackendError(
                f"fs.inotify.{name} is {value}, and {clusters} kind clusters need at least {minimum} (kind's known "
                f"issues: 'too many open files'): run `sudo sysctl fs.inotify.{name}={minimum}` "
                "(add it to /etc/sysctl.conf to keep it)"
            )


def node_image_kubernetes(image: str) -> tuple[int, int] | None:
    """The Kubernetes minor a kind node image's tag names (``kindest/node:v1.35.0@sha256:...`` -> (1, 35))."""
    match = re.search(r":v(\d+)\.(\d+)\.\d+", image)
    return (int(match[1]), int(match[2])) if match else None


def check_cgroup(info: dict[str, object], node_image: str) -> None:
    """kubelet 1.35 on refuses a cgroup v1 host by default (KEP-5573, ``failCgroupV1``): refuse before creating."""
    if str(info.get("CgroupVersion", "")) != "1":
        return
    version = node_image_kubernetes(node_image)
    if version is not None and version >= (1, 35):
        raise BackendError(
            f"Docker runs on cgroup v1, and the kubelet of {node_image.split('@')[0]} (Kubernetes "
            f"{version[0]}.{version[1]}) refuses cgroup v1 (KEP-5573): run on a cgroup v2 host (boot with "
            "systemd.unified_cgroup_hierarchy=1; WSL2: cgroup v2 in .wslconfig), or pass an older node image "
            "with --node-image kindest/node:v1.34.x"
        )


# The Kubernetes minors each Istio minor supports (istio.io data/compatibility/supportStatus.yml,
# "k8sVersions"); 1.31 as its master row and istioctl's MinK8SVersion (32) say.
ISTIO_SUPPORTS_KUBERNETES: dict[tuple[int, int], tuple[int, int]] = {
    (1, 24): (28, 31),
    (1, 25): (29, 32),
    (1, 26): (29, 33),
    (1, 27): (29, 33),
    (1, 28): (30, 34),
    (1, 29): (31, 35),
    (1, 30): (32, 36),
    (1, 31): (32, 36),
}


def check_istio_supports(istio_versions: list[str], node_image: str) -> None:
    """Refuse an Istio release whose supported Kubernetes versions leave out the node image's (one sentence)."""
    kubernetes = node_image_kubernetes(node_image)
    if kubernetes is None:
        return
    for version in dict.fromkeys(istio_versions):
        match = re.match(r"(\d+)\.(\d+)\.", version)
        supported = ISTIO_SUPPORTS_KUBERNETES.get((int(match[1]), int(match[2]))) if match else None
        if supported is None or supported[0] <= kubernetes[1] <= supported[1]:
            continue
        low, high = supported
        fits = [f"{i[0]}.{i[1]}" for i, (lo, hi) in ISTIO_SUPPORTS_KUBERNETES.items() if lo <= kubernetes[1] <= hi]
        raise BackendError(
            f"Istio {version} supports Kubernetes 1.{low} to 1.{high}, and the node image "
            f"{node_image.split('@')[0]} is Kubernetes 1.{kubernetes[1]} (istio.io's supported releases): choose "
            f"Istio {' or '.join(fits[-2:]) or 'another release'}, or a node image of Kubernetes 1.{low} to "
            f"1.{high} with --node-image kindest/node:v1.{high}.x"
        )
