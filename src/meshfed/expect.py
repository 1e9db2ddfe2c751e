"""Reachability as Istio and Gateway API check it: N consecutive successes within a deadline.

Calls are made in small batches until the last ``consecutive`` calls all succeed (and, when asked,
were all answered by the expected cluster), or the deadline passes. Every call made is kept, so a
failure says how many calls failed and why, in a user's words.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from meshfed.backends.base import BackendError
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
        try:
            made = make_calls(batch)
        except BackendError as error:  # e.g. the client pod is not running yet: retried until the deadline
            made = [CallResult.not_made(error)]
            time.sleep(1.0)
        for result in made:
            outcome.results.append(result)
            if not result.made:
                good = False
            elif accept is not None:
                good = accept(result)
            else:
                good = result.ok and (answered_by is None or result.cluster == answered_by)
            streak = streak + 1 if good else 0
            if streak >= consecutive:
                outcome.converged = True
                return outcome
        if time.monotonic() > ends:
            return outcome


class Traffic:
    """Clients calling without pause for the length of a procedure, counted per step.

    ``make_calls`` maps a label (e.g. ``cluster-a->cluster-b``) to a function making N calls. Each
    label has a thread that keeps calling until ``stop``; every result is filed under the step that
    was current when the call ended, so a report shows exactly how much traffic each step cost.
    """

    def __init__(self, make_calls: Mapping[str, Callable[[int], list[CallResult]]]) -> None:
        self._make_calls = dict(make_calls)
        self._step = "start"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.results: dict[str, dict[str, list[CallResult]]] = {}
        self._threads = [threading.Thread(target=self._run, args=(label,), daemon=True) for label in self._make_calls]

    def _run(self, label: str) -> None:
        while not self._stopping.is_set():
            try:
                results = self._make_calls[label](1)
            except Exception as error:
                results = [CallResult.not_made(error)]
            for result in results:
                with self._lock:
                    self.results.setdefault(self._step, {}).setdefault(label, []).append(result)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def step(self, name: str, settle: float = 0.1) -> None:
        """Let some calls land in the current step, then start the next one."""
        time.sleep(settle)
        with self._lock:
            self._step = name

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def lost(self, excused: Callable[[str, CallResult], bool] | None = None) -> list[str]:
        """``step: label: 3/120 failed: ...`` for every step and label that lost calls; a failure that
        ``excused(step, result)`` accepts is left out (list those with ``excused_losses``)."""
        return self._lines(lambda step, result: not result.ok and not (excused and excused(step, result)))

    def excused_losses(self, excused: Callable[[str, CallResult], bool]) -> list[str]:
        return self._lines(lambda step, result: not result.ok and excused(step, result))

    def _lines(self, counted: Callable[[str, CallResult], bool]) -> list[str]:
        lines = []
        for step, per_label in self.results.items():
            for label, results in per_label.items():
                failed = [r for r in results if counted(step, r)]
                if failed:
                    shown = [r for r in results if r.ok or counted(step, r)]
                    lines.append(f"{step}: {label}: {summarize(shown)} (the last failed call saw: {failed[-1].seen})")
        return lines

    def counts(self) -> list[tuple[str, int, int]]:
        """(step, calls answered, calls failed) over all labels, in step order."""
        return [
            (
                step,
                sum(r.ok for rs in per_label.values() for r in rs),
                sum(not r.ok for rs in per_label.values() for r in rs),
            )
            for step, per_label in self.results.items()
        ]
