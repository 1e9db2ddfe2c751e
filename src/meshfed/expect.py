"""Reachability as Istio and Gateway API check it: N consecutive successes within a deadline.

Calls are made in small batches until the last ``consecutive`` calls all succeed (and, when asked,
were all answered by the expected cluster), or the deadline passes. Every call made is kept, so a
failure says how many calls failed and why, in a user's words.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from meshfed.calls import CallResult, summarize


def require(condition: bool, message: str) -> None:
    """Fail the case with ``message`` alone: the user's words, not an assertion dump."""
    if not condition:
        pytest.fail(message, pytrace=False)


@dataclass
class Convergence:
    label: str
    results: list[CallResult] = field(default_factory=list)
    converged: bool = False

    def message(self) -> str:
        return f"{self.label}: {summarize(self.results)}"


def converge(
    label: str,
    make_calls: Callable[[int], list[CallResult]],
    *,
    consecutive: int = 3,
    deadline: float = 30.0,
    batch: int = 5,
    answered_by: str | None = None,
    accept: Callable[[CallResult], bool] | None = None,
) -> Convergence:
    """Until ``consecutive`` calls in a row are good: answered (by ``answered_by``, if given), or
    whatever ``accept`` says (e.g. the symptom a misconfiguration must show)."""
    outcome = Convergence(label)
    ends = time.monotonic() + deadline
    streak = 0
    while True:
        for result in make_calls(batch):
            outcome.results.append(result)
            if accept is not None:
                good = accept(result)
            else:
                good = result.ok and (answered_by is None or result.cluster == answered_by)
            streak = streak + 1 if good else 0
            if streak >= consecutive:
                outcome.converged = True
                return outcome
        if time.monotonic() > ends:
            return outcome
