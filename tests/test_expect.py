"""Reachability and traffic bookkeeping: what a case concludes from the calls it made."""

from __future__ import annotations

import itertools

from meshfed.backends.base import BackendError
from meshfed.calls import LEDGER, CallResult, Symptom
from meshfed.expect import Traffic, Wanted, converge, hold, reliably

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
    with Traffic(calls, every=0) as traffic:
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
    with Traffic({"a->b": lambda n: [next(failures, OK)]}, every=0) as traffic:
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


CALLER = "spiffe://cluster.local/ns/meshfed/sa/client"
GOOD = CallResult(200, {"cluster": "cluster-b", "caller": CALLER}, 1.0)
RESET = CallResult(
    503,
    None,
    1.0,
    body="upstream connect error or disconnect/reset before headers. reset reason: connection termination",
)


def test_convergence_is_not_the_verdict_one_bad_call_in_the_steady_window_fails() -> None:
    # Three good calls converge; then one call in the window of 20 is reset: the case must fail and say so.
    outcome = reliably(
        "a->b",
        scripted(GOOD, GOOD, GOOD, *([GOOD] * 10), RESET, GOOD),
        window=20,
        deadline=5,
        wanted=Wanted(cluster="cluster-b", caller=CALLER),
        batch=3,
    )
    assert outcome.convergence.converged and not outcome.held
    assert outcome.message().startswith("a->b: 1/20 calls of the steady window were not good: connection reset")
    assert "connection termination" in outcome.message()


def test_the_steady_window_checks_the_responder_and_the_caller_identity() -> None:
    stranger = CallResult(200, {"cluster": "cluster-b", "caller": "spiffe://cluster.local/ns/meshfed/sa/x"}, 1.0)
    window = hold("a->b", scripted(GOOD, WRONG_CLUSTER, stranger, GOOD), 4, Wanted(cluster="cluster-b", caller=CALLER))
    assert not window.held
    assert window.faults == [
        "answered by cluster-a, not cluster-b",
        f"the callee saw caller spiffe://cluster.local/ns/meshfed/sa/x, not {CALLER}",
    ]


def test_a_window_that_cannot_be_made_fails_every_call_of_it() -> None:
    def broken(n: int) -> list[CallResult]:
        raise BackendError("no client pod")

    window = hold("a->b", broken, 5, Wanted())
    assert not window.held and len(window.faults) == 5


def test_no_steady_window_without_convergence() -> None:
    outcome = reliably("a->b", scripted(FAILED), window=20, deadline=0.05, wanted=Wanted())
    assert outcome.window is None and not outcome.held
    assert outcome.message().endswith("failed: no healthy upstream (never converged)")


def test_the_ledger_counts_every_call_and_the_steady_windows_apart() -> None:
    LEDGER.reset()
    LEDGER.count([GOOD, RESET, GOOD])
    hold("a->b", scripted(GOOD, RESET), 2, Wanted())
    assert LEDGER.figures() == {"made": 3, "failed": 1, "steadyMade": 2, "steadyFailed": 1}


def test_converging_calls_answered_by_the_wrong_caller_say_why() -> None:
    stranger = CallResult(200, {"cluster": "cluster-b", "caller": None}, 1.0)
    outcome = reliably("b", scripted(stranger), window=5, deadline=0.05, wanted=Wanted(caller=CALLER))
    assert f"not good: {len(outcome.results)}x the callee saw caller None, not {CALLER}" in outcome.message()
