"""The daily loop: ``pytest tests/`` leaves out the tests marked slow, says so and how to run them; ``-m slow``
runs exactly those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SLOW = "tests/test_sensitivity.py::test_every_fault_fails_the_cases_guarding_what_it_breaks_in_both_topologies"


def _collect(*args: str) -> str:
    command = [sys.executable, "-m", "pytest", "tests/test_sensitivity.py", "--collect-only", "-q", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout


def test_slow_tests_are_left_out_of_the_daily_loop_and_said_so() -> None:
    daily = _collect()
    assert SLOW not in daily and "tests/test_sensitivity.py::test_a_guarding_case_must_name_what_broke" in daily
    assert "1 deselected" in daily
    slow = _collect("-m", "slow")
    assert [line for line in slow.splitlines() if line.startswith("tests/")] == [SLOW]


def test_the_daily_loop_says_how_to_run_what_it_left_out() -> None:
    command = [sys.executable, "-m", "pytest", "tests/test_sensitivity.py", "-q", "-k", "name_what_broke"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert "1 slow test left out; run them with: pytest tests/ -m slow" in done.stdout
