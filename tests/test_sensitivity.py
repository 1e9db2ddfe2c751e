"""What each case catches: every fault fails the cases that guard what it breaks, naming it, and every case
fails on some fault; the matrix of docs/sensitivity.md is the stored runs' matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshfed.faults import FAULT_NAMES
from meshfed.sensitivity import BEGIN, END, HEALTHY, TOPOLOGIES, Run, check, main, markdown, stored, table

ROOT = Path(__file__).resolve().parent.parent


def _run(fault: str, outcomes: dict[str, str], messages: dict[str, str] | None = None) -> Run:
    features = {
        "CrossClusterReachability[cluster-a->cluster-b]": frozenset({"CrossClusterCalls"}),
        "SharedRootOfTrust": frozenset({"SharedRootOfTrust"}),
        "LocalityFailover": frozenset({"LocalityFailover"}),
    }
    return Run(fault, outcomes, messages or {}, {name: features[name] for name in outcomes})


REACH = "CrossClusterReachability[cluster-a->cluster-b]"


def test_a_guarding_case_that_passes_on_its_fault_is_a_problem() -> None:
    runs = [
        _run(HEALTHY, {REACH: "passed", "SharedRootOfTrust": "passed"}),
        _run("eastwest-gateway-down", {REACH: "passed", "SharedRootOfTrust": "passed"}),
    ]
    assert check(runs) == [
        "eastwest-gateway-down: CrossClusterReachability guards it but passed",
        "CrossClusterReachability: no fault makes it fail",
        "SharedRootOfTrust: no fault makes it fail",
    ]


def test_a_guarding_case_must_name_what_broke() -> None:
    runs = [_run("eastwest-gateway-down", {REACH: "failed"}, {REACH: "a->b: 3/50 failed: connection failure"})]
    [problem] = check(runs)
    assert problem.startswith(f"eastwest-gateway-down: {REACH} failed without naming it (/east-west gateway/)")
    named = [_run("eastwest-gateway-down", {REACH: "failed"}, {REACH: "likely cause: cluster-b's east-west gateway"})]
    assert check(named) == []


def test_the_healthy_mesh_must_pass_and_the_matrix_marks_the_guards() -> None:
    runs = [
        _run(HEALTHY, {REACH: "failed", "LocalityFailover": "passed"}),
        _run("echo-in-another-locality", {REACH: "failed", "LocalityFailover": "failed"}, {"LocalityFailover": "x"}),
    ]
    problems = check(runs)
    assert problems[0] == "the healthy mesh failed CrossClusterReachability: the matrix means nothing until it passes"
    assert "LocalityFailover" in problems[1] and "without naming it" in problems[1]
    assert table(runs).splitlines()[2:] == [
        "| CrossClusterReachability | ✗ | ✗ |",
        "| LocalityFailover | ✓ | **✗** |",
    ]


@pytest.mark.slow
def test_every_fault_fails_the_cases_guarding_what_it_breaks_in_both_topologies(tmp_path: Path) -> None:
    # Each fault against the cases that guard what it breaks (the whole suite per fault takes about 30 minutes on
    # two cores: `python -m meshfed.sensitivity` makes docs/sensitivity.md's matrix), and a healthy run of the whole suite.
    assert main(["--guards-only", "--jobs", "2", "--reports", str(tmp_path)]) == 0


def test_the_documented_matrix_is_the_stored_runs_matrix() -> None:
    page = (ROOT / "docs" / "sensitivity.md").read_text()
    shown = page.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    runs = stored(ROOT / "reports" / "sensitivity", TOPOLOGIES, [HEALTHY, *FAULT_NAMES])
    assert set(runs) == set(TOPOLOGIES)
    assert shown == markdown(runs), (
        "regenerate it: python -m meshfed.sensitivity --from-reports --readme docs/sensitivity.md"
    )
    assert all(not check(found) for found in runs.values())
