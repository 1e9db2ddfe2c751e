"""Reachability and traffic bookkeeping: what a case concludes from the calls it made."""

from __future__ import annotations

import itertools

from meshfed.backends.base import BackendError
from meshfed.calls import CallResult, Symptom
from meshfed.expect import Traffic, converge

OK = CallResult(200, {"cluster": "cluster-b"}, 1.0)
WRONG_CLUSTER = CallResult(200, {"cluster": "cluster-a"}, 1.0)
FAILED = CallResult(503, None, 1.0, body="no healthy upstream")


def scripted(*results: CallResult):  # type: ignore[no-untyped-def]
    stream = itertools.chain(results, itertools.repeat(results[-1]))
    return lambda n: [next(stream) for _ in range(n)]


def test_converges_on_consecutive_successes_from_the_right_cluster() -> None:
    outcome = converge(
        "a->b", scripted(FAILED, OK, WRONG_CLUSTER, OK, OK, OK), answered_by="cluster-b", deadline=5, batch=1
    )
    assert outcome.converged and len(outcome.results) == 6


def test_never_converges_when_calls_keep_failing() -> None:
    outcome = converge("a->b", scripted(FAILED), deadline=0.05, batch=2)
    assert not outcome.converged
    assert outcome.message().startswith(
        f"a->b: {len(outcome.results)}/{len(outcome.results)} failed: no healthy upstream"
    )


def test_accept_judges_the_expected_symptom() -> None:
    outcome = converge(
        "a->b", scripted(OK, FAILED, FAILED), deadline=5, batch=1, consecutive=2, accept=lambda r: not r.ok
    )
    assert outcome.converged and len(outcome.results) == 3


def test_traffic_files_every_call_under_its_step() -> None:
    failures = iter([FAILED, FAILED])
    calls = {"a->b": lambda n: [OK], "b->a": lambda n: [next(failures, OK)]}
    with Traffic(calls) as traffic:
        traffic.step("second", settle=0.05)
    steps = [step for step, _, _ in traffic.counts()]
    assert steps[0] == "start" and set(steps) <= {"start", "second"}
    assert sum(failed for _, _, failed in traffic.counts()) == 2
    assert len(traffic.lost()) >= 1 and all(": b->a: " in line for line in traffic.lost())


def test_a_call_that_cannot_be_made_counts_as_lost() -> None:
    def broken(n: int) -> list[CallResult]:
        raise RuntimeError("no pod")

    with Traffic({"a->b": broken}) as traffic:
        pass
    [line] = traffic.lost()
    assert line.startswith("start: a->b: ") and "failed" in line


def test_excused_losses_are_listed_apart_and_not_lost() -> None:
    cut = CallResult(
        503,
        None,
        1.0,
        body="upstream connect error or disconnect/reset before headers. reset reason: connection termination",
    )
    failures = iter([cut, FAILED])
    with Traffic({"a->b": lambda n: [next(failures, OK)]}) as traffic:
        pass
    excused = lambda step, result: "connection termination" in result.seen  # noqa: E731
    [lost] = traffic.lost(excused=excused)
    [apart] = traffic.excused_losses(excused)
    assert "1/" in lost and "connection termination" not in lost
    assert "connection reset" in apart and "connection termination" in apart
    assert len(traffic.lost()) == 1 and "2/" in traffic.lost()[0]


def test_a_call_that_cannot_be_made_yet_is_a_failed_attempt_retried_until_the_deadline() -> None:
    attempts = iter(range(100))

    def starting(n: int) -> list[CallResult]:
        if next(attempts) < 2:  # the client pod is still pulling its image
            raise BackendError('cluster-a: `kubectl exec ...` failed (exit 1): container not found ("client")')
        return [OK] * n

    outcome = converge("a->b", starting, deadline=10, batch=3)
    assert outcome.converged
    assert [r.symptom for r in outcome.results[:2]] == [Symptom.NOT_MADE] * 2


def test_a_call_not_made_is_never_the_symptom_a_case_looks_for() -> None:
    def timing_out(_n: int) -> list[CallResult]:
        raise BackendError("cluster-a: error dialing backend: dial tcp 10.0.0.1:10250: i/o timeout")

    outcome = converge("a->b", timing_out, deadline=0.5, batch=1, consecutive=1, accept=lambda r: not r.ok)
    assert not outcome.converged
    assert outcome.message().startswith("a->b: ") and "call not made" in outcome.message()
