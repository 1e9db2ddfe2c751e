"""meshfed report compare: two runs case by case; non-zero when B regressed against A."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshfed.cli import main as meshfed


def report(path: Path, cases: list[dict[str, Any]], backend: str = "embedded") -> Path:
    document = {
        "apiVersion": "meshfed.dev/v1alpha1",
        "kind": "ConformanceReport",
        "backend": backend,
        "topology": "multi-primary",
        "istioVersion": "1.30.3",
        "clusters": [{"name": "cluster-a"}, {"name": "cluster-b"}],
        "profiles": [],
        "cases": cases,
    }
    path.write_text(yaml.safe_dump(document))
    return path


PASSED = {"name": "CrossClusterReachability[cluster-a->cluster-b]", "outcome": "passed", "seconds": 1.5}
MISCONFIG = {
    "name": "MisconfigurationRegression[second-root-ca]",
    "outcome": "passed",
    "seconds": 40.0,
    "observed": ["second root in cacerts: cluster-a->cluster-b: TLS verify failed"],
}


def test_a_and_b_are_named_by_their_run_and_different_meshes_are_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = report(tmp_path / "a.yaml", [PASSED])
    document = yaml.safe_load(a.read_text())
    document.update(topology="primary-remote", date="2026-12-05T21:40:07Z")
    b = tmp_path / "b.yaml"
    b.write_text(yaml.safe_dump(document))
    assert meshfed(["report", "compare", str(a), str(b), "-o", "markdown"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(
        "warning: A and B ran different meshes (multi-primary, 2 clusters against primary-remote, 2 clusters)"
    )
    assert (
        "| case | A: embedded, multi-primary, 2 clusters, Istio 1.30.3 | B: embedded, primary-remote, 2 clusters, "
        in text
    )
    assert "Istio 1.30.3, 2026-12-05 21:40:07 UTC | agree |" in text
    assert meshfed(["report", "compare", str(a), str(a)]) == 0
    assert "warning" not in capsys.readouterr().out


def test_the_same_run_agrees_with_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = report(tmp_path / "a.yaml", [PASSED, MISCONFIG])
    assert meshfed(["report", "compare", str(a), str(a), "-o", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["agreement"] == 1.0 and result["regressed"] == [] and result["counts"] == {"same": 2}


def test_a_case_that_stops_passing_is_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = report(tmp_path / "a.yaml", [PASSED, MISCONFIG])
    failed = {
        **PASSED,
        "outcome": "failed",
        "message": "cluster-a->cluster-b: 30/30 failed: unknown CA (TLSV1_ALERT_UNKNOWN_CA)",
    }
    b = report(tmp_path / "b.yaml", [failed], backend="host")
    assert meshfed(["report", "compare", str(a), str(b)]) == 1
    text = capsys.readouterr().out
    assert "regressed CrossClusterReachability[cluster-a->cluster-b]" in text
    # B's own sentence, cut to one line (its symptom, unknown CA, is read from it); times to a tenth below 10 s.
    assert "B: failed 1.5s (cluster-a->cluster-b: 30/30 failed: unknown CA (TLSV1_ALERT_UNKNOWN_CA))" in text
    assert "A: passed 1.5s" in text
    assert "B regressed against A in 2 case(s)" in text  # the missing misconfiguration case counts too
    # The other way round B fixed what A broke: no regression.
    assert meshfed(["report", "compare", str(b), str(a)]) == 0
    assert "fixed" in capsys.readouterr().out


def test_other_symptoms_are_a_difference_not_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = report(tmp_path / "a.yaml", [MISCONFIG])
    other = {**MISCONFIG, "observed": ["second root in cacerts: cluster-a->cluster-b: unknown CA"]}
    b = report(tmp_path / "b.yaml", [other])
    assert meshfed(["report", "compare", str(a), str(b), "-o", "markdown"]) == 0
    table = capsys.readouterr().out
    assert "| differs |" in table and "Agreement: 0 of 1 cases (0%)." in table


def test_a_junit_file_reads_like_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase name="test_x[cluster-a->cluster-b]" time="1.5"><properties>'
        '<property name="case" value="CrossClusterReachability"/><property name="pair" value="cluster-a->cluster-b"/>'
        "</properties></testcase>"
        '<testcase name="test_m[second-root-ca]" time="40"><properties>'
        '<property name="case" value="MisconfigurationRegression"/><property name="cluster" value="second-root-ca"/>'
        '<property name="observed" value="second root in cacerts: cluster-a-&gt;cluster-b: TLS verify failed"/>'
        "</properties></testcase>"
        '<testcase name="test_unrelated" time="0.1"/>'
        "</testsuite></testsuites>"
    )
    a = report(tmp_path / "a.yaml", [PASSED, MISCONFIG])
    assert meshfed(["report", "compare", str(junit), str(a), "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"] == 1.0


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("kind: Other\n", "is not a meshfed ConformanceReport"),
        ("<testsuite", "is not well-formed XML"),
        ("kind: ConformanceReport\nprofiles: []\n", "give the junit.xml of that run instead"),
    ],
)
def test_unreadable_runs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, said: str) -> None:
    bad = tmp_path / "bad"
    bad.write_text(content)
    assert meshfed(["report", "compare", str(bad), str(bad)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"meshfed: {bad}") and said in error and "Traceback" not in error
    assert meshfed(["report", "compare", str(tmp_path / "missing"), str(bad)]) == 2


def test_the_fidelity_table_merges_a_stopped_run_with_the_run_of_what_it_did_not_reach(tmp_path: Path) -> None:
    from meshfed.fidelity import tables

    failed_by_cascade = {**MISCONFIG, "outcome": "failed", "message": "stale-workload-certificate first"}
    for topology in ("multi-primary", "primary-remote"):
        (tmp_path / f"embedded-{topology}").mkdir()
        report(tmp_path / f"embedded-{topology}" / "conformance-report.yaml", [PASSED, MISCONFIG])
        (tmp_path / f"host-{topology}").mkdir()
        report(tmp_path / f"host-{topology}" / "conformance-report.yaml", [PASSED, failed_by_cascade], "host")
    (tmp_path / "host-multi-primary.2").mkdir()
    report(tmp_path / "host-multi-primary.2" / "conformance-report.yaml", [MISCONFIG], "host")
    text = tables(tmp_path)
    multi, remote = text.split("**primary-remote**")
    assert "(2 runs)" in multi and "Agreement: 2 of 2 cases (100%)" in multi
    assert "Agreement: 1 of 2 cases (50%)" in remote
