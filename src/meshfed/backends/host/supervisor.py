"""Processes of a host cluster: started in the node's network namespace, probed until ready, stopped in reverse.

A :class:`Component` is a record (as envtest's process ``State`` and kwok's ``Component``): its command,
the log file, what it needs first and a readiness probe. Each runs in its own process group, inside
the node's network namespace, and in the cluster's ``pids`` cgroup, so that everything a cluster
started, down to the containers and their shims, is found and stopped from that cgroup and not
from memory (after a crash or Ctrl-C too). Readiness is a real probe; a process that exits before it
is ready is an error quoting its log's last lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from meshfed.backends.base import BackendError

CGROUP_ROOT = Path("/sys/fs/cgroup")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(netns: str, action: Callable[[], T], timeout: float = 30) -> T:
    """Run ``action`` in a thread of its own that has entered ``netns`` (setns moves only the calling thread)."""
    result: list[Any] = []

    def enter_and_run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{netns}") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            result.append((True, action()))
        except BaseException as error:  # handed to the caller
            result.append((False, error))

    thread = threading.Thread(target=enter_and_run, daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise BackendError(f"a probe in {netns} did not finish within {timeout:g} s")
    ok, value = result[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


class Probe(Protocol):
    @property
    def what(self) -> str: ...

    def ok(self) -> bool: ...


@dataclass(frozen=True)
class Check:
    """Ready when ``test`` says so (e.g. an object the component makes exists)."""

    what: str
    test: Callable[[], bool]

    def ok(self) -> bool:
        return self.test()


@dataclass(frozen=True)
class HttpProbe:
    """Ready when ``url`` answers 200 (HTTP or HTTPS, verified against ``ca_file`` when given), from ``netns``."""

    url: str
    netns: str = ""
    ca_file: str = ""
    cert: tuple[str, str] | None = None

    @property
    def what(self) -> str:
        return self.url

    def ok(self) -> bool:
        def fetch() -> bool:
            context = None
            if self.url.startswith("https"):
                context = ssl.create_default_context(cafile=self.ca_file or None)
                if self.cert:
                    context.load_cert_chain(*self.cert)
            try:
                with urllib.request.urlopen(self.url, timeout=2, context=context) as response:
                    return bool(response.status == 200)
            except (OSError, ValueError):
                return False

        return in_netns(self.netns, fetch) if self.netns else fetch()


@dataclass(frozen=True)
class Component:
    name: str
    argv: tuple[str, ...]
    log: Path
    probe: Probe | None = None
    env: tuple[tuple[str, str], ...] = ()
    start_timeout: float = 60
    stop_grace: float = 10
    pass_fds: tuple[int, ...] = ()  # open files it inherits (``host up``'s lock, handed to its LoadBalancer controller)


def cgroup_dirs(group: str) -> list[Path]:
    """The cluster's folder in every mounted cgroup v1 hierarchy, and in the v2 tree a hybrid host mounts
    beside them (``unified``: runc and the kubelet make the pods' groups there too)."""
    found = []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if (hierarchy / "cgroup.procs").exists():
            found.append(hierarchy / group)
    return found


def ensure_cgroups(group: str) -> None:
    for folder in cgroup_dirs(group):
        folder.mkdir(exist_ok=True)
        cpuset = folder.parent / "cpuset.cpus"
        if cpuset.exists() and not (folder / "cpuset.cpus").read_text().strip():
            # A new cpuset group starts empty and takes no task until it has CPUs and memory nodes.
            (folder / "cpuset.cpus").write_text(cpuset.read_text())
            (folder / "cpuset.mems").write_text((folder.parent / "cpuset.mems").read_text())


def _tasks(folder: Path) -> set[int]:
    """Every process in ``folder``'s cgroup tree (groups vanish while it is read: those are skipped)."""
    found: set[int] = set()
    for root, _dirs, files in os.walk(folder):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                found |= {int(line) for line in Path(root, "cgroup.procs").read_text().split()}
    return found


def kill_group(group: str, grace: float = 2) -> None:
    """Stop every process in the cluster's cgroup, then remove its cgroup folders, deepest first.

    The pods' processes (under the kubelet's ``kubepods``) are killed at once: the whole cluster is going,
    and a pause container (PID 1, no handler) would sit out any grace period. The cluster's own programs
    and the container shims get SIGTERM and ``grace`` seconds, then SIGKILL: the cluster is thrown away,
    so nothing is gained by the API server's and etcd's slow graceful shutdown (they would take 10 s)."""
    pids_dir = next((d for d in cgroup_dirs(group) if d.parent.name == "pids"), None)
    if pids_dir is not None and pids_dir.is_dir():
        for pid in _tasks(pids_dir / "kubepods"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            for pid in _tasks(pids_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _tasks(pids_dir) and time.monotonic() < deadline:
                time.sleep(0.1)
    for folder in cgroup_dirs(group):
        for root, _dirs, _files in os.walk(folder, topdown=False):  # deepest first
            with contextlib.suppress(OSError):
                Path(root).rmdir()


@dataclass
class Supervisor:
    """Starts components in order inside ``netns`` and cgroup ``group``; stops them in reverse."""

    netns: str
    group: str
    progress: Callable[[str], None] = lambda _: None
    running: list[tuple[Component, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, component: Component) -> None:
        component.log.parent.mkdir(parents=True, exist_ok=True)
        procs = [str(d / "cgroup.procs") for d in cgroup_dirs(self.group)]

        def join_cgroup() -> None:
            for path in procs:
                with open(path, "w") as handle:
                    handle.write(str(os.getpid()))

        argv = ["nsenter", f"--net=/var/run/netns/{self.netns}", "--", *component.argv]
        with open(component.log, "ab") as log:
            process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **dict(component.env)},
                start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches meshfed only
                pass_fds=component.pass_fds,
                preexec_fn=join_cgroup,
            )
        self.running.append((component, process))
        self.wait_ready(component, process)

    def wait_ready(self, component: Component, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + component.start_timeout
        while component.probe is not None:
            if process.poll() is not None:
                raise BackendError(
                    f"{self.netns}: {component.name} exited (code {process.returncode}) before it was ready: "
                    f"{tail(component.log)} (log: {component.log})"
                )
            if component.probe.ok():
                return
            if time.monotonic() >= deadline:
                raise BackendError(
                    f"{self.netns}: {component.name} was not ready within {component.start_timeout:g} s "
                    f"({component.probe.what}): {tail(component.log)} (log: {component.log})"
                )
            time.sleep(0.2)

    def pid(self, name: str) -> int:
        return next(process.pid for component, process in self.running if component.name == name)

    def stop_all(self) -> None:
        """Stop in reverse order: SIGTERM to the process group, the grace period, then SIGKILL."""
        while self.running:
            component, process = self.running.pop()
            stop(process, component.stop_grace)


def stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " / ".join(line.strip()[:300] for line in text[-lines:]) or "no output"


def unmount_under(folder: Path) -> None:
    """Unmount everything mounted below ``folder`` (container root filesystems, volumes, netns pins)."""
    prefix = str(folder.resolve()) + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(set(mounts), key=lambda p: -len(p)):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def run_in(netns: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net=/var/run/netns/{netns}", "--", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
