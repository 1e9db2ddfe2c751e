"""The embedded mesh's fidelity, measured: the whole suite on ``embedded`` and on ``host`` (real Istio), in
every topology, compared case by case; the tables go into docs/fidelity.md between its fidelity markers.

    sudo .venv/bin/python -m meshfed.fidelity              # six runs, then docs/fidelity.md's tables
    python -m meshfed.fidelity --from-reports              # the tables again from the last runs' reports
    python -m meshfed.fidelity --backends embedded         # the embedded runs again, the host reports kept
    python -m meshfed.fidelity --topologies external-control-plane   # one topology's runs, the others kept

The host runs need what ``--backend host`` needs (root, Linux, the built binaries).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from meshfed.report.compare import CompareError, as_markdown, compare, load, merge

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"
TOPOLOGIES = ("multi-primary", "primary-remote", "external-control-plane")
BACKENDS = ("embedded", "host")


def report_dir(base: Path, backend: str, topology: str) -> Path:
    return base / f"{backend}-{topology}"


def report_dirs(base: Path, backend: str, topology: str) -> list[Path]:
    """The run's directory, then any later partial runs beside it (``<dir>.2``, ...), whose cases replace
    the same cases of the earlier runs."""
    main = report_dir(base, backend, topology)
    later = sorted(
        (d for d in base.glob(f"{main.name}.*") if d.is_dir() and d.suffix[1:].isdigit()),
        key=lambda d: int(d.suffix[1:]),
    )
    return ([main] if main.is_dir() else []) + later


def run_suite(base: Path, backend: str, topology: str, clusters: int) -> float:
    """One run of the whole suite; its verdicts are read from its reports, so a failed case is no error here."""
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "conformance/",
        "-q",
        "-p",
        "no:cacheprovider",
        "--backend",
        backend,
        "--topology",
        topology,
        "--clusters",
        str(clusters),
        "--report-dir",
        str(report_dir(base, backend, topology)),
    ]
    print(f"meshfed fidelity: {' '.join(command[3:])}", flush=True)
    subprocess.run(command, cwd=ROOT, check=False)
    return time.monotonic() - started


def tables(base: Path) -> str:
    """Per topology, every case on embedded and on host, and the agreement."""
    parts = []
    for topology in TOPOLOGIES:
        missing = [b for b in BACKENDS if not report_dirs(base, b, topology)]
        if missing:
            parts += [f"**{topology}**: not run on {' and '.join(missing)} yet.", ""]
            continue
        embedded, host = (merge([load(d) for d in report_dirs(base, b, topology)]) for b in BACKENDS)
        parts += [f"**{topology}**", "", as_markdown(compare(embedded, host)), ""]
    return "\n".join(parts).rstrip()


def write_readme(readme: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``text`` between the ``begin`` and ``end`` markers of a page (docs/fidelity.md, docs/sensitivity.md)."""
    content = readme.read_text()
    if begin not in content or end not in content:
        raise CompareError(f"{readme} has no {begin} ... {end} markers: add them where the tables belong")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{begin}\n{text}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshfed.fidelity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "fidelity", help="where the runs write")
    parser.add_argument("--clusters", type=int, default=2)
    parser.add_argument("--from-reports", action="store_true", help="do not run; tabulate the reports already there")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="run only these (the others' reports stay)",
    )
    parser.add_argument(
        "--topologies",
        nargs="+",
        choices=TOPOLOGIES,
        default=list(TOPOLOGIES),
        help="run only these (the others' reports stay)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=ROOT / "docs" / "fidelity.md",
        metavar="PAGE",
        help="the page whose fidelity markers get the tables (default: docs/fidelity.md)",
    )
    args = parser.parse_args(argv)
    if not args.from_reports:
        for topology in args.topologies:
            for backend in args.backends:
                for partial in report_dirs(args.reports, backend, topology)[1:]:
                    shutil.rmtree(partial)  # a whole run replaces the partial ones
                seconds = run_suite(args.reports, backend, topology, args.clusters)
                print(f"meshfed fidelity: {backend} {topology} took {seconds:.0f} s", flush=True)
    try:
        text = tables(args.reports)
        write_readme(args.readme, text)
    except CompareError as error:
        print(f"meshfed fidelity: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
