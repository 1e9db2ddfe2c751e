"""Checks made before the kind backend creates anything; each failure is one sentence with the fix."""

from __future__ import annotations

import json
import platform
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
