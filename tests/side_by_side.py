"""Host meshes side by side on one machine, on real clusters: CI's core profile in every topology at once.

Three host runs start together, each in a host mesh of its own (``--host-prefix mfa`` multi-primary,
``mfb`` primary-remote, ``mfc`` external-control-plane: two data-plane clusters and the external one). Once
the first holds its clusters, another run asks for the same host mesh: it must refuse, naming the live run,
and leave that run's clusters alone. Every run must pass, and afterwards nothing of any may be left on the host. It prints what it measured: each mesh's
provisioning time, the peak memory of each mesh's clusters (their cgroups, page cache included), the
machine's lowest available memory, and the wall time. By hand (root, after ``meshfed binaries build``)::

    python -m tests.side_by_side --reports reports
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEMORY = Path("/sys/fs/cgroup/memory")
# Measured: a 2-cluster host mesh's clusters peak at 3.5 GiB (their cgroups, page cache included); two side
# by side took 3.2 GiB of the machine's available memory. Below this much available, run one after the other.
SIDE_BY_SIDE_NEEDS = 15 * 2**30


@dataclass
class Run:
    prefix: str
    topology: str
    reports: Path
    label: str = ""  # what its output lines start with (its host mesh unless said)
    log: list[str] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    peak_bytes: int = 0

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "pytest"),
                "conformance/test_core.py",
                "--backend",
                "host",
                "--topology",
                self.topology,
                "--host-prefix",
                self.prefix,
                "--report-dir",
                str(self.reports),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            print(f"[{self.label or self.prefix}] {line.rstrip()}", flush=True)

    def wait(self) -> int:
        assert self.process is not None
        code = self.process.wait()
        time.sleep(0.5)  # the reader's last lines
        return code

    def provisioned_seconds(self) -> float | None:
        for line in self.log:
            found = re.search(r"mesh provisioned in (\d+) s", line)
            if found:
                return float(found[1])
        return None

    def sample_memory(self) -> None:
        used = 0
        for group in MEMORY.glob(f"{self.prefix}-*"):
            with contextlib.suppress(OSError, ValueError):
                used += int((group / "memory.usage_in_bytes").read_text())
        self.peak_bytes = max(self.peak_bytes, used)


def namespaces(prefix: str) -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return sorted(line.split()[0] for line in listed.splitlines() if line.startswith(f"{prefix}-"))


def leftovers(prefix: str) -> list[str]:
    found = namespaces(prefix)
    if subprocess.run(["ip", "link", "show", f"{prefix}0"], capture_output=True, check=False).returncode == 0:
        found.append(f"bridge {prefix}0")
    found += [str(group) for group in Path("/sys/fs/cgroup").glob(f"*/{prefix}-*")]
    found += [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if f"/meshes/{prefix}/" in line]
    return found


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    problems: list[str] = []
    runs = [
        Run(prefix, topology, args.reports / f"host-{topology}")
        for prefix, topology in (("mfa", "multi-primary"), ("mfb", "primary-remote"), ("mfc", "external-control-plane"))
    ]
    first = runs[0]
    started, baseline = time.monotonic(), available_bytes()
    lowest = baseline
    together = baseline >= SIDE_BY_SIDE_NEEDS
    if not together:
        print(
            f"side by side: only {baseline / 2**30:.1f} GiB available (three meshes want {SIDE_BY_SIDE_NEEDS / 2**30:.0f}):"
            " the runs go one after the other; the live-owner refusal is still tested",
            flush=True,
        )
    first.start()
    if together:
        for run in runs[1:]:
            run.start()
    # The intruder: the first run's host mesh asked for again, once the first run has made its clusters.
    while not namespaces("mfa") and first.process is not None and first.process.poll() is None:
        time.sleep(1)
    before = namespaces("mfa")
    intruder = Run("mfa", "multi-primary", args.reports / "side-by-side-intruder", label="mfa, a second run")
    intruder.start("-k", "reachability")
    code = intruder.wait()
    said = "\n".join(intruder.log)
    refusal = "the host clusters of host mesh mfa belong to a live run, PID "
    if code == 0 or refusal not in said:
        problems.append(f"a second run on host mesh mfa did not refuse (exit {code}): {said[-600:]}")
    elif namespaces("mfa") != before or "removing what an earlier run" in said:
        problems.append(f"the refused run touched mfa's clusters: before {before}, after {namespaces('mfa')}")
    else:
        print("side by side: a second run on the live host mesh mfa refused, naming it; mfa untouched", flush=True)
    for run in runs:
        if run.process is None:
            run.start()  # one after the other: each once the one before is done
        while run.process is not None and run.process.poll() is None:
            for each in runs:
                each.sample_memory()
            lowest = min(lowest, available_bytes())
            time.sleep(1)
    for run in runs:
        code = run.wait()
        if code != 0:
            problems.append(f"the {run.topology} run beside the other (host mesh {run.prefix}) exited {code}")
        left = leftovers(run.prefix)
        if left:
            problems.append(f"host mesh {run.prefix} left this behind: {left}")
    wall = time.monotonic() - started
    for run in runs:
        print(
            f"side by side: {run.topology} (host mesh {run.prefix}) provisioned in {run.provisioned_seconds()} s, "
            f"its clusters' peak memory {run.peak_bytes / 2**30:.1f} GiB",
            flush=True,
        )
    print(
        f"side by side: the {len(runs)} core profiles {'at once' if together else 'one after the other'} in {wall / 60:.1f} min; "
        "the machine's available memory went from "
        f"{baseline / 2**30:.1f} GiB down to {lowest / 2**30:.1f} GiB at the lowest",
        flush=True,
    )
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
