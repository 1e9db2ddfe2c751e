"""Two runs side by side, case by case and pair by pair: verdict, symptoms, time.

It serves two jobs: the embedded mesh against real Istio (how faithful the emulation is), and Istio N
against N+1 (what a new release broke). A run is read from its ``conformance-report.yaml`` or its
``junit.xml``. B *regressed* against A when a case that passed in A did not pass in B (failed, skipped,
not supported, or missing).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshfed.calls import Symptom


class CompareError(Exception):
    """A file that cannot be read as a run; the message names it and says what to give instead."""


@dataclass(frozen=True)
class CaseRun:
    outcome: str  # passed | failed | skipped | not-supported | not-applicable
    seconds: float = 0.0
    message: str = ""
    observed: tuple[str, ...] = ()

    @property
    def symptoms(self) -> tuple[str, ...]:
        """What a user would call the symptoms: the observed lines, else those named in a failure's message."""
        if self.observed:
            return self.observed
        return tuple(s.value for s in Symptom if s is not Symptom.OK and _mentions(self.message, s.value))


def _mentions(text: str, phrase: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(phrase)}(?![\w-])", text, re.IGNORECASE) is not None


@dataclass
class Run:
    path: str
    label: str  # backend, topology, clusters, Istio version, when: what the run was against
    cases: dict[str, CaseRun] = field(default_factory=dict)
    mesh: str = ""  # topology and clusters: two runs of different meshes do not compare case for case


def _label(backend: Any, topology: Any, istio: Any, clusters: int | None, when: Any = None) -> str:
    parts = [str(p) for p in (backend, topology) if p]
    if clusters:
        parts.append(f"{clusters} clusters")
    if istio and istio not in ("unknown", "embedded"):
        parts.append(f"Istio {istio}")
    if when:
        parts.append(str(when).replace("T", " ").removesuffix("Z") + " UTC")
    return ", ".join(parts) or "unknown run"


def _from_report(path: Path, document: dict[str, Any]) -> Run:
    if "cases" not in document:
        raise CompareError(
            f"{path} lists only the failed cases (it was written before reports listed every case): "
            "give the junit.xml of that run instead"
        )
    clusters = len(document.get("clusters") or [])
    run = Run(
        str(path),
        _label(
            document.get("backend"),
            document.get("topology"),
            document.get("istioVersion"),
            clusters,
            document.get("date"),
        ),
        mesh=f"{document.get('topology')}, {clusters} clusters",
    )
    for case in document.get("cases") or []:
        run.cases[str(case["name"])] = CaseRun(
            _outcome(str(case.get("outcome", "")), str(case.get("message") or "")),
            float(case.get("seconds") or 0.0),
            str(case.get("message") or ""),
            tuple(str(line) for line in case.get("observed") or []),
        )
    return run


def _outcome(outcome: str, message: str) -> str:
    """Reports written before "not-applicable" had its own outcome called such an entry not supported."""
    return "not-applicable" if outcome == "not-supported" and message.startswith("not applicable to ") else outcome


def _from_junit(path: Path, root: ElementTree.Element) -> Run:
    run = Run(str(path), "")
    for testcase in root.iter("testcase"):
        properties = [(p.get("name", ""), p.get("value", "")) for p in testcase.iter("property")]
        named = dict(properties)
        if "case" not in named:
            continue  # not a meshfed conformance case
        where = named.get("pair") or named.get("cluster") or named.get("entry")
        name = named["case"] + (f"[{where}]" if where else "")
        failure = testcase.find("failure")
        if failure is None:
            failure = testcase.find("error")
        skipped = testcase.find("skipped")
        if failure is not None:
            outcome, message = "failed", (failure.get("message") or "").strip().splitlines()
        elif skipped is not None:
            outcome = named.get("outcome", "skipped")
            message = (skipped.get("message") or "").strip().splitlines()
        else:
            outcome, message = "passed", []
        run.cases[name] = CaseRun(
            _outcome(outcome, message[-1] if message else ""),
            float(testcase.get("time") or 0.0),
            message[-1] if message else "",
            tuple(value for key, value in properties if key == "observed"),
        )
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    parts = [suite.get("name", ""), suite.get("timestamp", "")[:19]] if suite is not None else []
    run.label = "JUnit" + (f" ({', '.join(part for part in parts if part)})" if any(parts) else "")
    return run


def load(path: Path) -> Run:
    """A run from a conformance-report.yaml, a junit.xml, or a report directory holding either."""
    if path.is_dir():
        for name in ("conformance-report.yaml", "junit.xml"):
            if (path / name).is_file():
                return load(path / name)
        raise CompareError(f"{path} holds neither conformance-report.yaml nor junit.xml: give a run's report directory")
    try:
        text = path.read_text()
    except OSError as error:
        raise CompareError(
            f"cannot read {path} ({error.strerror}): give a conformance-report.yaml or junit.xml"
        ) from None
    if text.lstrip().startswith("<"):
        try:
            return _from_junit(path, ElementTree.fromstring(text))
        except ElementTree.ParseError as error:
            raise CompareError(f"{path} is not well-formed XML ({error}): give a run's junit.xml") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        raise CompareError(f"{path} is neither YAML nor XML: give a conformance-report.yaml or junit.xml") from None
    if not isinstance(document, dict) or document.get("kind") != "ConformanceReport":
        raise CompareError(f"{path} is not a meshfed ConformanceReport: give a run's conformance-report.yaml")
    return _from_report(path, document)


def merge(runs: list[Run]) -> Run:
    """Several runs against one mesh as one: a case of a later run replaces the same case of an earlier one
    (a run that stopped part-way, then the cases it did not reach)."""
    if not runs:
        raise CompareError("no run to merge")
    cases: dict[str, CaseRun] = {}
    for run in runs:
        cases.update(run.cases)
    label = runs[0].label if len(runs) == 1 else f"{runs[0].label} ({len(runs)} runs)"
    return Run(" + ".join(run.path for run in runs), label, cases, runs[0].mesh)


@dataclass
class Row:
    case: str
    a: CaseRun | None
    b: CaseRun | None
    change: str  # same | regressed | fixed | differs | new | dropped

    def as_json(self) -> dict[str, Any]:
        def side(run: CaseRun | None) -> dict[str, Any] | None:
            return (
                None if run is None else {**asdict(run), "observed": list(run.observed), "symptoms": list(run.symptoms)}
            )

        return {"case": self.case, "change": self.change, "a": side(self.a), "b": side(self.b)}


def _change(a: CaseRun | None, b: CaseRun | None) -> str:
    if a is None:
        return "new"
    if b is None:
        return "regressed" if a.outcome == "passed" else "dropped"
    if a.outcome == "passed" and b.outcome != "passed":
        return "regressed"
    if a.outcome != "passed" and b.outcome == "passed":
        return "fixed"
    if a.outcome != b.outcome or a.symptoms != b.symptoms:
        return "differs"
    return "same"


@dataclass
class Comparison:
    a: Run
    b: Run
    rows: list[Row]

    @property
    def regressed(self) -> list[Row]:
        return [r for r in self.rows if r.change == "regressed"]

    @property
    def warning(self) -> str:
        """Why the two runs do not compare case for case, when they do not (else empty)."""
        if self.a.mesh and self.b.mesh and self.a.mesh != self.b.mesh:
            return (
                f"A and B ran different meshes ({self.a.mesh} against {self.b.mesh}): their cases do not match one "
                "for one; compare runs of the same topology and size"
            )
        return ""

    @property
    def agreement(self) -> float:
        """The share of cases in both runs with the same verdict and the same symptoms."""
        both = [r for r in self.rows if r.a is not None and r.b is not None]
        return sum(r.change == "same" for r in both) / len(both) if both else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "a": {"path": self.a.path, "run": self.a.label},
            "b": {"path": self.b.path, "run": self.b.label},
            **({"warning": self.warning} if self.warning else {}),
            "agreement": round(self.agreement, 4),
            "regressed": [r.case for r in self.regressed],
            "counts": {c: sum(r.change == c for r in self.rows) for c in dict.fromkeys(r.change for r in self.rows)},
            "cases": [r.as_json() for r in self.rows],
        }


def compare(a: Run, b: Run) -> Comparison:
    names = list(a.cases) + [n for n in b.cases if n not in a.cases]
    return Comparison(
        a, b, [Row(n, a.cases.get(n), b.cases.get(n), _change(a.cases.get(n), b.cases.get(n))) for n in names]
    )


def _seconds(value: float) -> str:
    return f"{value:.1f}s" if value < 10 else f"{value:.0f}s"


def _one_line(text: str, width: int = 100) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _cell(run: CaseRun | None) -> str:
    """Outcome and time, then one line: a failure's message, else the symptoms seen."""
    if run is None:
        return "-"
    detail = run.message if run.outcome != "passed" and run.message else "; ".join(run.symptoms)
    return f"{run.outcome} {_seconds(run.seconds)}" + (f" ({_one_line(detail)})" if detail else "")


def as_text(comparison: Comparison, everything: bool = False) -> str:
    """A table of the cases that changed (every case with ``everything``) and a verdict line."""
    lines = [f"A: {comparison.a.label} ({comparison.a.path})", f"B: {comparison.b.label} ({comparison.b.path})", ""]
    if comparison.warning:
        lines[2:2] = [f"warning: {comparison.warning}"]
    shown = [r for r in comparison.rows if everything or r.change != "same"]
    width = max([len(r.case) for r in shown] + [4])
    for row in shown:
        lines.append(f"{row.change:<9} {row.case:<{width}}  A: {_cell(row.a)}")
        lines.append(f"{'':<9} {'':<{width}}  B: {_cell(row.b)}")
    if not shown:
        lines.append("every case has the same verdict and symptoms in both runs")
    counts = ", ".join(f"{n} {c}" for c, n in comparison.as_json()["counts"].items())
    lines += ["", f"{len(comparison.rows)} cases: {counts}; agreement {comparison.agreement:.0%}"]
    if comparison.regressed:
        lines.append(f"B regressed against A in {len(comparison.regressed)} case(s)")
    return "\n".join(lines)


def as_markdown(comparison: Comparison) -> str:
    """Every case in one table, with the agreement (the fidelity table of docs/fidelity.md)."""
    lines = [f"warning: {comparison.warning}", ""] if comparison.warning else []
    lines += [
        f"| case | A: {comparison.a.label} | B: {comparison.b.label} | agree |",
        "|---|---|---|---|",
    ]
    for row in comparison.rows:
        cells = [_cell(row.a).replace("|", "/"), _cell(row.b).replace("|", "/")]
        if row.a is None or row.b is None:
            agree = f"not run on {'A' if row.a is None else 'B'}"
        else:
            agree = "yes" if row.change == "same" else row.change
        lines.append(f"| {row.case} | {cells[0]} | {cells[1]} | {agree} |")
    both = sum(r.a is not None and r.b is not None for r in comparison.rows)
    same = sum(r.change == "same" for r in comparison.rows)
    lines.append(f"\nAgreement: {same} of {both} cases ({comparison.agreement:.0%}).")
    return "\n".join(lines)
