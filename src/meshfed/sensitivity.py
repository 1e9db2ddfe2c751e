"""What each case catches, measured: the suite run once on a healthy mesh and once per fault (``meshfed.faults``),
and the matrix of which cases failed on which fault. A fault's guarding cases must fail, with a message that
names what broke; every case must fail on at least one fault (a case no fault can fail is a defect); the healthy
run must pass. The matrix of docs/sensitivity.md is made from the stored reports, never by hand.

    python -m meshfed.sensitivity                                    # every fault, both topologies, embedded
    python -m meshfed.sensitivity --topologies multi-primary --faults gateway-drops-packets
    sudo .venv/bin/python -m meshfed.sensitivity --backend host --no-baseline --faults gateway-drops-packets \\
        -- conformance/test_core.py -k "reachability or load_balancing or spiffe"
    python -m meshfed.sensitivity --from-reports --readme docs/sensitivity.md  # its matrix from the stored runs
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from meshfed.faults import FAULTS, fault
from meshfed.fidelity import write_readme
from meshfed.report.compare import CompareError

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- sensitivity:begin -->", "<!-- sensitivity:end -->"
TOPOLOGIES = ("multi-primary", "primary-remote")
HEALTHY = "healthy"


@dataclass(frozen=True)
class Run:
    """One run of the suite: on a healthy mesh (``fault`` is ``healthy``) or with one fault injected."""

    fault: str
    outcomes: Mapping[str, str]  # case id -> passed | failed | not-supported | skipped
    messages: Mapping[str, str]  # case id -> failure message
    features: Mapping[str, frozenset[str]]  # case id -> the features it needs
    seconds: float = 0.0


def row(case_id: str) -> str:
    """The matrix row of a case: its short name; a misconfiguration entry keeps its entry (each is a check)."""
    name = case_id.partition("[")[0]
    return case_id if name == "MisconfigurationRegression" else name


def load(report_dir: Path, fault_name: str) -> Run:
    path = report_dir / "conformance-report.yaml"
    if not path.is_file():
        raise CompareError(f"no {path}: the run of {fault_name} did not write its report (see its output above)")
    report = yaml.safe_load(path.read_text()) or {}
    injected = (report.get("faultInjected") or {}).get("name", HEALTHY)
    if injected != fault_name:
        raise CompareError(f"{path} is a run of {injected}, not of {fault_name}: run it again")
    cases = report.get("cases") or []
    return Run(
        fault_name,
        {c["name"]: c["outcome"] for c in cases},
        {c["name"]: c.get("message", "") for c in cases},
        {c["name"]: frozenset(c.get("features") or ()) for c in cases},
        sum(float(c.get("seconds", 0)) for c in cases),
    )


def verdicts(run: Run) -> dict[str, str]:
    """Per row: failed when any of its instances failed, passed when all passed, n/a when none ran."""
    found: dict[str, set[str]] = {}
    for case_id, outcome in run.outcomes.items():
        found.setdefault(row(case_id), set()).add(outcome)
    return {
        name: "failed" if "failed" in kinds else "passed" if kinds == {"passed"} else "n/a"
        for name, kinds in found.items()
    }


def guarded_by(run: Run, name: str) -> bool:
    """Whether the fault of ``run`` breaks what the row ``name`` needs (one of its features)."""
    if run.fault == HEALTHY:
        return False
    guards = {feature.value for feature in fault(run.fault).guards}
    return any(row(case_id) == name and features & guards for case_id, features in run.features.items())


def check(runs: Sequence[Run]) -> list[str]:
    """What the matrix must show; empty when it does."""
    problems = []
    caught: set[str] = set()
    ran: set[str] = set()
    for run in runs:
        found = verdicts(run)
        ran |= {name for name, verdict in found.items() if verdict != "n/a"}
        if run.fault == HEALTHY:
            failing = sorted(name for name, verdict in found.items() if verdict == "failed")
            if failing:
                problems.append(
                    f"the healthy mesh failed {', '.join(failing)}: the matrix means nothing until it passes"
                )
            continue
        caught |= {name for name, verdict in found.items() if verdict == "failed"}
        says = re.compile(fault(run.fault).says)
        for name, verdict in found.items():
            if not guarded_by(run, name) or verdict == "n/a":
                continue
            if verdict != "failed":
                problems.append(f"{run.fault}: {name} guards it but passed")
                continue
            for case_id, outcome in run.outcomes.items():
                if row(case_id) == name and outcome == "failed" and not says.search(run.messages.get(case_id, "")):
                    problems.append(
                        f"{run.fault}: {case_id} failed without naming it (/{says.pattern}/): {run.messages.get(case_id)}"
                    )
    if any(run.fault != HEALTHY for run in runs):
        problems += [f"{name}: no fault makes it fail" for name in sorted(ran - caught)]
    return problems


def table(runs: Sequence[Run]) -> str:
    """Markdown: a row per case, a column per run; ✗ failed (bold where the fault is one it guards), ✓ passed."""
    names = sorted({name for run in runs for name in verdicts(run)}, key=lambda n: (n.startswith("Misconf"), n))
    columns = [verdicts(run) for run in runs]
    lines = [
        "| case | " + " | ".join(f"`{run.fault}`" for run in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    marks = {"passed": "✓", "n/a": "n/a"}
    for name in names:
        cells = []
        for run, found in zip(runs, columns, strict=True):
            verdict = found.get(name)
            if verdict is None:
                cells.append("·")
            elif verdict == "failed":
                cells.append("**✗**" if guarded_by(run, name) else "✗")
            else:
                cells.append(marks[verdict])
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_suite(
    report_dir: Path,
    backend: str,
    topology: str,
    clusters: int,
    fault_name: str,
    pytest_args: Sequence[str],
    guards_only: bool = False,
) -> Run:
    """One run of the suite (with ``guards_only``, only the cases that guard what the fault breaks); a failing
    case is no error here (its verdict is read from the report)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--backend", backend]
    command += ["--topology", topology, "--clusters", str(clusters), "--report-dir", str(report_dir)]
    if fault_name != HEALTHY:
        command += ["--inject-fault", fault_name]
        if guards_only:
            command += ["--features", ",".join(sorted(f.value for f in fault(fault_name).guards))]
    command += list(pytest_args) or ["conformance/"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):  # 1: cases failed, as a fault should make them
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise CompareError(
            f"the run of {fault_name} ({topology}) ended with exit {done.returncode}: {' / '.join(tail)}"
        )
    found = load(report_dir, fault_name)
    return Run(found.fault, found.outcomes, found.messages, found.features, time.monotonic() - started)


def applicable(topology: str, names: Sequence[str]) -> list[str]:
    from meshfed.topology import MeshSpec, Topology

    spec = MeshSpec.default(Topology(topology), 2)
    return [name for name in names if name == HEALTHY or fault(name).not_applicable(spec) is None]


def measure(
    base: Path,
    backend: str,
    topologies: Sequence[str],
    clusters: int,
    faults: Sequence[str],
    pytest_args: Sequence[str],
    jobs: int,
    guards_only: bool = False,
) -> dict[str, list[Run]]:
    """Every (topology, fault) run, ``jobs`` at a time; the runs of a topology in the order given."""
    work = [(topology, name) for topology in topologies for name in applicable(topology, faults)]

    def one(item: tuple[str, str]) -> Run:
        topology, name = item
        found = run_suite(base / topology / name, backend, topology, clusters, name, pytest_args, guards_only)
        print(f"meshfed sensitivity: {topology} {name}: {found.seconds:.0f} s", flush=True)
        return found

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        done = list(pool.map(one, work))
    runs: dict[str, list[Run]] = {}
    for (topology, _), found in zip(work, done, strict=True):
        runs.setdefault(topology, []).append(found)
    return runs


def stored(base: Path, topologies: Sequence[str], faults: Sequence[str]) -> dict[str, list[Run]]:
    return {
        topology: [load(base / topology / name, name) for name in applicable(topology, faults)]
        for topology in topologies
        if (base / topology).is_dir()
    }


def faults_table() -> str:
    """Markdown: each fault, what it breaks, and the features (so the cases) that must fail on it."""
    lines = ["| fault | what it breaks | the cases needing these must fail on it |", "|---|---|---|"]
    for item in FAULTS:
        lines.append(f"| `{item.name}` | {item.title} | {', '.join(f.value for f in item.guards)} |")
    return "\n".join(lines)


def markdown(runs: Mapping[str, Sequence[Run]]) -> str:
    parts = [faults_table(), ""]
    for topology, found in runs.items():
        parts += [f"**{topology}**", "", table(found), ""]
    return "\n".join(parts).rstrip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshfed.sensitivity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="embedded", choices=("embedded", "host", "kind"))
    parser.add_argument("--topologies", nargs="+", choices=TOPOLOGIES, default=list(TOPOLOGIES))
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--faults", help="comma-separated (default: every fault)")
    parser.add_argument("--no-baseline", action="store_true", help="no healthy run (another run was the baseline)")
    parser.add_argument(
        "--guards-only", action="store_true", help="with each fault, only the cases that guard what it breaks"
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (embedded: 2 on two cores)")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "sensitivity")
    parser.add_argument("--from-reports", action="store_true", help="do not run; read the reports already there")
    parser.add_argument(
        "--readme",
        type=Path,
        metavar="PAGE",
        help="write the matrix into this page between its markers (docs/sensitivity.md)",
    )
    parser.add_argument("pytest_args", nargs="*", help="after --: what pytest runs (default: conformance/)")
    args = parser.parse_args(argv)
    try:
        chosen = (
            [f.name for f in FAULTS] if not args.faults else [fault(n.strip()).name for n in args.faults.split(",")]
        )
    except KeyError as error:
        parser.error(str(error.args[0]))
    names = ([] if args.no_baseline else [HEALTHY]) + chosen
    try:
        if args.from_reports:
            runs = stored(args.reports, args.topologies, names)
        else:
            runs = measure(
                args.reports,
                args.backend,
                args.topologies,
                args.clusters,
                names,
                args.pytest_args,
                args.jobs,
                args.guards_only,
            )
        text = markdown(runs)
        if args.readme:
            write_readme(args.readme, text, BEGIN, END)
    except CompareError as error:
        print(f"meshfed sensitivity: {error}", file=sys.stderr)
        return 2
    print(text)
    problems = [f"{topology}: {p}" for topology, found in runs.items() for p in check(found)]
    for problem in problems:
        print(f"meshfed sensitivity: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
