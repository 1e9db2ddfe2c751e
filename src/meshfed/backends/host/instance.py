"""Which host clusters are whose: a host mesh's name, folder and network, and the lock that says who runs it.

Every host run (``--backend host``, ``meshfed host up``) works in one host mesh, named by ``--host-prefix``
(default ``meshfed``): its node namespaces (``<prefix>-<cluster>``), bridge (``<prefix>0``), shared /24
(``10.250.<slot>.0/24``: the first slot that no other host mesh has taken and no route of the host
overlaps, kept in ``network.json``) and folder (``<cache>/host/meshes/<prefix>``). Host meshes share
only the programs and the image archive.

A run holds its host mesh with ``flock`` on ``owner.lock`` in that folder. The kernel releases the lock
when the last process that has the file open ends, however it ends: a killed run's leftovers are free
to remove, a live run's clusters never are. ``owner.json`` beside it says who holds it. ``meshfed host
up`` hands its lock to the LoadBalancer controller process, which lives exactly as long as its clusters.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from meshfed.backends.base import BackendError
from meshfed.backends.host import network

DEFAULT_PREFIX = "meshfed"
PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}")
HOST_UP = "meshfed host up"  # the owner a host-up mesh's LoadBalancer controller records


def check_prefix(text: str) -> str:
    if not PREFIX.fullmatch(text):
        raise ValueError(
            f"--host-prefix {text!r} is not a host mesh name: give 1 to 8 lower-case letters and digits, "
            "starting with a letter (it names namespaces, a bridge and interfaces), like ci2"
        )
    return text


@dataclass(frozen=True)
class Owner:
    pid: int
    command: str
    since: str

    def describe(self) -> str:
        return f"PID {self.pid} (`{self.command}`), since {self.since}"


@dataclass
class Hold:
    """A live run's lock on its host mesh: released by :meth:`release`, or by the kernel when the process ends."""

    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class HostInstance:
    prefix: str
    cache: Path  # <cache>/host: the programs and images, shared by every host mesh

    @property
    def root(self) -> Path:
        return self.cache / "meshes" / self.prefix

    @property
    def clusters(self) -> Path:
        return self.root / "clusters"

    def hold(self, command: str = "") -> Hold:
        """Take the host mesh for this process, or say in one sentence whose it is."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "owner.lock", os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(5):  # a moment's wait: `owner()` elsewhere may be testing the lock just now
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 4:
                    os.close(fd)
                    raise BackendError(self.refusal(self.owner())) from None
                time.sleep(0.1)
        self.record(os.getpid(), command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]))
        return Hold(fd)

    def record(self, pid: int, command: str) -> None:
        """Say who holds the lock (a holder hands it to a child: ``host up``'s LoadBalancer controller)."""
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        (self.root / "owner.json").write_text(json.dumps(asdict(Owner(pid, command, since))) + "\n")

    def owner(self) -> Owner | None:
        """Who holds the host mesh now; None when no live process does."""
        lock = self.root / "owner.lock"
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return Owner(**json.loads((self.root / "owner.json").read_text()))
            except (OSError, ValueError, TypeError):
                return Owner(0, "a process that did not say", "unknown")
        finally:
            os.close(fd)  # when the lock was free, this gives it back at once
        return None

    def refusal(self, owner: Owner | None) -> str:
        holder = owner.describe() if owner else "a process that has just ended"
        if owner and owner.command.startswith(HOST_UP):
            fix = f"remove them with `meshfed host down{self.flag()}`, or give this run another --host-prefix"
        else:
            fix = "wait for it to end or stop it, or give this run another --host-prefix"
        return f"the host clusters of host mesh {self.prefix} belong to a live run, {holder}: {fix}"

    def flag(self) -> str:
        return "" if self.prefix == DEFAULT_PREFIX else f" --host-prefix {self.prefix}"

    def recorded_network(self) -> network.SharedNetwork | None:
        """The shared network this mesh had, read from its record (None: it never ran); nothing is written."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            return network.SharedNetwork(self.prefix, int(json.loads((self.root / "network.json").read_text())["slot"]))
        return None

    def network(self) -> network.SharedNetwork:
        """This mesh's shared network: the slot it had, else the first one free (chosen under a machine-wide
        lock, so that two runs starting at once never take the same)."""
        record = self.root / "network.json"
        with exclusive(self.cache / "meshes" / "network.lock"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                return network.SharedNetwork(self.prefix, int(json.loads(record.read_text())["slot"]))
            taken = set()
            for other in (self.cache / "meshes").glob("*/network.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    taken.add(int(json.loads(other.read_text())["slot"]))
            routed = [route for route, _line in network.routes()]
            for slot in range(256):
                shared = network.SharedNetwork(self.prefix, slot)
                if slot not in taken and not any(route.overlaps(shared.subnet) for route in routed):
                    self.root.mkdir(parents=True, exist_ok=True)
                    record.write_text(json.dumps({"slot": slot, "subnet": str(shared.subnet)}) + "\n")
                    return shared
        raise BackendError(f"every /24 of {network.SUBNETS} is routed on this host or taken: `meshfed host clean`")

    def forget(self) -> None:
        """What a host mesh whose clusters are gone kept beside them (its network slot is free again). The lock
        file stays: a run waiting on it must find the same file."""
        for name in ("network.json", "owner.json", "up.json", "kubeconfig", "istio-overlay.yaml"):
            (self.root / name).unlink(missing_ok=True)


def instances(cache: Path) -> list[HostInstance]:
    """Every host mesh this machine has a folder of."""
    folder = cache / "meshes"
    return (
        [HostInstance(path.name, cache) for path in sorted(folder.iterdir()) if path.is_dir()]
        if folder.is_dir()
        else []
    )


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """A machine-wide lock for what host meshes share (the network slots, the programs and images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
