"""What a case concludes from its calls: convergence, then steady state.

Convergence is how Istio and Gateway API wait for a change to land: calls in small batches until the last
``consecutive`` calls are good, or the deadline passes. Convergence throws the calls before it away, so it is
never the verdict: once converged, a steady window of calls must be good, every one of them (the answer, the
cluster that answered, the caller identity the callee saw); one bad call fails the case, saying how many of
how many failed and how. Every call made is kept, so a failure says why in a user's words.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest

from meshfed.backends.base import BackendError
from meshfed.calls import LEDGER, CallResult, summarize


def require(condition: bool, message: str) -> None:
    """Fail the case with ``message`` alone: the user's words, not an assertion dump."""
    if not condition:
        pytest.fail(message, pytrace=False)


@dataclass
class Convergence:
    label: str
    results: list[CallResult] = field(default_factory=list)
    converged: bool = False
    why: Callable[[CallResult], str | None] | None = None  # why a call was not good (answered calls included)

    def message(self) -> str:
        if self.why is None or all(not r.ok for r in self.results):
            return f"{self.label}: {summarize(self.results)}"
        return f"{self.label}: {tally(self.results, self.why)}"


def tally(results: list[CallResult], why: Callable[[CallResult], str | None]) -> str:
    """``3/50 calls were not good: 2x connection reset, 1x answered by cluster-a``, or ``50/50 good``."""
    counts: dict[str, int] = {}
    for reason in (why(r) for r in results):
        if reason is not None:
            counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return f"{len(results)}/{len(results)} good"
    listed = ", ".join(reason if n == 1 else f"{n}x {reason}" for reason, n in counts.items())
    return f"{sum(counts.values())}/{len(results)} not good: {listed}"


def converge(
    label: str,
    make_calls: Callable[[int], list[CallResult]],
    *,
    consecutive: int = 3,
    deadline: float = 30.0,
    batch: int = 5,
    answered_by: str | None = None,
    accept: Callable[[CallResult], bool] | None = None,
    why: Callable[[CallResult], str | None] | None = None,
    pause: float = 0.1,
) -> Convergence:
    """Until ``consecutive`` calls in a row are good: answered (by ``answered_by``, if given), or
    whatever ``accept`` says (e.g. the symptom a misconfiguration must show); ``pause`` between batches."""
    outcome = Convergence(label, why=why)
    ends = time.monotonic() + deadline
    streak = 0
    while True:
        if outcome.results:
            time.sleep(pause)
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


@dataclass(frozen=True)
class Wanted:
    """What makes a call good: answered (by ``cluster``; the callee seeing ``caller`` in X-Forwarded-Client-Cert),
    or, for a call that must fail, whatever ``accept`` says (the symptom a misconfiguration must show)."""

    cluster: str | None = None
    caller: str | None = None
    accept: Callable[[CallResult], bool] | None = None
    expected: str = ""  # how ``accept`` reads in a message, e.g. "RBAC denied"

    def fault(self, result: CallResult) -> str | None:
        """Why the call is not good; None when it is."""
        if not result.made:
            return result.described
        if self.accept is not None:
            return None if self.accept(result) else result.described
        if not result.ok:
            return result.described
        if self.cluster is not None and result.cluster != self.cluster:
            return f"answered by {result.cluster}, not {self.cluster}"
        seen = (result.reply or {}).get("caller")
        if self.caller is not None and seen != self.caller:
            return f"the callee saw caller {seen}, not {self.caller}"
        return None


@dataclass
class Window:
    """A steady window: ``size`` calls after convergence, every one of which must be good."""

    label: str
    size: int
    results: list[CallResult] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)  # why each bad call was bad

    @property
    def held(self) -> bool:
        return len(self.results) == self.size and not self.faults

    def message(self) -> str:
        counts: dict[str, int] = {}
        for why in self.faults:
            counts[why] = counts.get(why, 0) + 1
        listed = ", ".join(why if n == 1 else f"{n}x {why}" for why, n in counts.items())
        failed = [r for r in self.results if not r.ok]
        saw = f" (the last failed call saw: {failed[-1].seen})" if failed else ""
        return f"{self.label}: {len(self.faults)}/{self.size} calls of the steady window were not good: {listed}{saw}"


def hold(label: str, make_calls: Callable[[int], list[CallResult]], size: int, wanted: Wanted) -> Window:
    """A steady window of ``size`` calls, made in one go; counted in the case's ledger."""
    window = Window(label, size)
    try:
        window.results = make_calls(size)
    except BackendError as error:
        window.results = [CallResult.not_made(error)] * size
    window.faults = [why for why in map(wanted.fault, window.results) if why is not None]
    LEDGER.count_steady(len(window.results), len(window.faults))
    return window


@dataclass
class Reliably:
    """Convergence, then (only when it converged) a steady window."""

    convergence: Convergence
    window: Window | None

    @property
    def held(self) -> bool:
        return self.convergence.converged and self.window is not None and self.window.held

    @property
    def results(self) -> list[CallResult]:
        return self.convergence.results + (self.window.results if self.window else [])

    def message(self) -> str:
        if self.window is None:
            return f"{self.convergence.message()} (never converged)"
        return (
            self.window.message()
            if not self.window.held
            else f"{self.window.label}: {self.window.size} of {self.window.size} good"
        )


def reliably(
    label: str,
    make_calls: Callable[[int], list[CallResult]],
    *,
    window: int,
    deadline: float,
    wanted: Wanted,
    consecutive: int = 3,
    batch: int = 5,
) -> Reliably:
    """Until ``consecutive`` good calls in a row (within ``deadline``), then a steady window of ``window``."""
    outcome = converge(
        label,
        make_calls,
        consecutive=consecutive,
        deadline=deadline,
        batch=batch,
        accept=lambda r: wanted.fault(r) is None,
        why=wanted.fault,
    )
    return Reliably(outcome, hold(label, make_calls, window, wanted) if outcome.converged else None)


class Traffic:
    """Clients calling without pause for the length of a procedure, counted per step.

    ``make_calls`` maps a label (e.g. ``cluster-a->cluster-b``) to a function making N calls. Each
    label has a thread that keeps calling until ``stop``; every result is filed under the step that
    was current when the call ended, so a report shows exactly how much traffic each step cost.
    """

    def __init__(self, make_calls: Mapping[str, Callable[[int], list[CallResult]]], every: float = 0.2) -> None:
        self._make_calls = dict(make_calls)
        # A call starts at most every ``every`` seconds per label: steady traffic through each step (a real
        # client through ``kubectl exec`` makes 2 or 3 a second), not a load test that starves the procedure.
        self._every = every
        self._step = "start"
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.results: dict[str, dict[str, list[CallResult]]] = {}
        self._threads = [threading.Thread(target=self._run, args=(label,), daemon=True) for label in self._make_calls]

    def _run(self, label: str) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                results = self._make_calls[label](1)
            except Exception as error:
                results = [CallResult.not_made(error)]
            for result in results:
                with self._lock:
                    self.results.setdefault(self._step, {}).setdefault(label, []).append(result)
            self._stopping.wait(self._every - (time.monotonic() - started))

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
        # The last step holds at least one call per label (a step nobody called through proves nothing),
        # unless a caller hangs: then the join below bounds the wait.
        deadline = time.monotonic() + 10
        time.sleep(0.1)
        while time.monotonic() < deadline and not self._last_step_called():
            time.sleep(0.05)
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _last_step_called(self) -> bool:
        with self._lock:
            current = self.results.get(self._step, {})
            return all(current.get(label) for label in self._make_calls)

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

    def tally(self, counted: Callable[[str, CallResult], bool]) -> dict[str, int]:
        """Per label, how many of its calls ``counted(step, result)`` accepts, over every step."""
        found: dict[str, int] = {}
        for step, per_label in self.results.items():
            for label, results in per_label.items():
                found[label] = found.get(label, 0) + sum(1 for r in results if counted(step, r))
        return {label: n for label, n in found.items() if n}

    def silent(self) -> list[str]:
        """The labels none of whose calls was answered (a caller that never got through shows nothing)."""
        return [
            label
            for label in self._make_calls
            if not any(r.ok for per_label in self.results.values() for r in per_label.get(label, []))
        ]

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
