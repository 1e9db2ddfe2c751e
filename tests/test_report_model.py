"""The conformance report's verdicts: an empty or partial run is never called a success."""

from __future__ import annotations

from datetime import UTC, datetime

from meshfed.report.html import LAYOUT_CSS, mesh_picture, summary_html
from meshfed.report.model import CaseOutcome, RunRecord, conformance_report, profile_result


def outcome(kind: str, name: str = "X") -> CaseOutcome:
    return CaseOutcome(name, name, "core", ("F",), kind, "why" if kind == "not-supported" else "")


def test_profile_results() -> None:
    assert profile_result([]) == "unknown"
    assert profile_result([outcome("passed")]) == "success"
    assert profile_result([outcome("passed"), outcome("not-supported")]) == "partial"
    assert profile_result([outcome("passed"), outcome("skipped")]) == "partial"
    assert profile_result([outcome("passed"), outcome("failed")]) == "failure"
    assert profile_result([outcome("not-supported")]) == "unknown"
    # What cannot happen in the topology is neither a limit nor a failure: the profile is whole without it.
    assert profile_result([outcome("passed"), outcome("not-applicable")]) == "success"
    assert profile_result([outcome("not-applicable")]) == "unknown"


def _record() -> RunRecord:
    return RunRecord(
        backend="kind",
        topology="multi-primary",
        clusters=[
            {"name": "cluster-a", "network": "network-a", "role": "primary"},
            {"name": "cluster-b", "network": "network-b", "role": "primary"},
        ],
        istio_version="1.30.3",
        implementation={"organization": "Acme", "project": "Acme Mesh"},
    )


def test_report_lists_not_supported_cases_with_reasons() -> None:
    record = _record()
    record.outcomes = [outcome("passed", "A"), outcome("not-supported", "B")]
    report = conformance_report(record, now=datetime(2026, 11, 21, tzinfo=UTC))
    core = report["profiles"][0]
    assert core["result"] == "partial"
    assert core["notSupportedTests"] == [{"name": "B", "reason": "why"}]
    assert report["implementation"] == {"organization": "Acme", "project": "Acme Mesh"}  # no empty fields
    assert "certifiesIstio" not in report and report["date"] == "2026-11-21T00:00:00Z"


def test_picture_colours_each_ordered_pair_as_the_matrix() -> None:
    """An arrow is red when any case of its pair failed (not only reachability), green when all passed,
    grey when none ran; the legend says so; a cluster a blocking finding names is marked."""
    record = _record()
    record.outcomes = [
        CaseOutcome("CrossClusterReachability[cluster-a->cluster-b]", "CrossClusterReachability", "core", (), "passed"),
        CaseOutcome("SpiffeIdentity[cluster-a->cluster-b]", "SpiffeIdentity", "core", (), "failed", "wrong caller"),
        CaseOutcome("CrossClusterReachability[cluster-b->cluster-a]", "CrossClusterReachability", "core", (), "passed"),
    ]
    svg = mesh_picture(record)
    assert 'data-pair="cluster-a-&gt;cluster-b" data-verdict="failed"' in svg
    assert 'data-pair="cluster-b-&gt;cluster-a" data-verdict="passed"' in svg
    assert "a case of the pair failed" in svg and "every case of the pair passed" in svg  # the legend
    assert "broken: see the diagnosis" not in svg
    record.broken_from_start = ["cluster-b: cacerts-incomplete: cacerts has no ca-key.pem"]
    marked = mesh_picture(record)
    assert marked.count("broken: see the diagnosis") == 1 and 'stroke="#c62828" stroke-width="3"/>' in marked
    assert mesh_picture(_record()).count('data-verdict="untested"') == 2


def test_latency_table_shows_median_and_p99() -> None:
    record = _record()
    record.record_latency("cluster-a->cluster-b", "same", [1.0, 2.0, 3.0])
    record.record_latency("cluster-a->cluster-b", "cross", [4.0, 5.0, 6.0, 100.0])
    assert record.latency_summary("cluster-a->cluster-b") == {"same": (2.0, 3.0), "cross": (5.5, 100.0)}
    assert "<td class='n'>2.0 / 3.0</td><td class='n'>5.5 / 100.0</td>" in summary_html(record)


def _five_cluster_record() -> RunRecord:
    names = [f"cluster-{c}" for c in "abcde"]
    record = RunRecord(
        backend="embedded",
        topology="multi-primary",
        clusters=[{"name": n, "network": f"network-{n[-1]}", "role": "primary"} for n in names],
    )
    for source in names:
        for destination in names:
            if source == destination:
                continue
            for case in ("CrossClusterReachability", "CrossClusterMutualTLS", "SpiffeIdentity"):
                broken = destination == "cluster-e" and case != "SpiffeIdentity"
                record.outcomes.append(
                    CaseOutcome(
                        f"{case}[{source}->{destination}]",
                        case,
                        "core",
                        ("F",),
                        "failed" if broken else "passed",
                        f"{source}->{destination}: 20/20 failed: connection failure" if broken else "",
                    )
                )
    record.outcomes.append(CaseOutcome("CanaryUpgrade", "CanaryUpgrade", "extended", ("F",), "not-supported", "why"))
    return record


def test_the_verdict_and_the_pair_matrix_come_first() -> None:
    record = _five_cluster_record()
    page = summary_html(record)
    verdict, matrix, mesh = (
        page.index("<h2>Verdict"),
        page.index("Every pair, every case"),
        page.index("Mesh under test"),
    )
    assert verdict < matrix < mesh
    # pytest-html's own Environment table (drawn above the summary) is laid out last: the summary's filter
    # boxes stay right above the results they filter.
    assert page.startswith(LAYOUT_CSS) and "#environment-header,#environment{order:2}" in LAYOUT_CSS
    n = "<td class='n'>{}</td>".format
    assert ">failure</td>" + n(52) + n(8) + n(0) + n(0) + n(0) in page  # core: 60 pair cases, 8 failed into cluster-e
    assert ">unknown</td>" + n(0) + n(0) + n(1) + n(0) + n(0) in page
    # Every failed case at the top, once per cause with the cases and pairs it ended; failures before the rest.
    top = page[page.index("<h2>Verdict") : page.index("Every pair, every case")]
    assert top.count("class='said meshfed-failed'") == 1  # one cause: both cases, the same four pairs
    into_e = ", ".join(f"cluster-{c}-&gt;cluster-e" for c in "abcd")
    assert (
        f"core failed:</span> CrossClusterReachability, CrossClusterMutualTLS ({into_e}): 20/20 failed: "
        "connection failure</div>"
    ) in top
    assert top.index("meshfed-failed") < top.index("extended not supported here:</span> CanaryUpgrade: why")
    # 5 x 5 cells, one chip per case and pair; a failed chip carries its message on hover and under the matrix.
    assert page.count("<span class='chip' data-case=") == 60 and page.count("data-outcome='failed'") == 8
    assert "title='CrossClusterReachability: failed: cluster-a-&gt;cluster-e: 20/20 failed: connection failure'" in page
    assert (
        f"<li>CrossClusterMutualTLS, CrossClusterReachability ({into_e}): 20/20 failed: connection failure</li>" in page
    )


def test_one_cause_is_said_once_with_its_pairs() -> None:
    record = _record()
    record.outcomes = [
        CaseOutcome(f"SpiffeIdentity[{pair}]", "SpiffeIdentity", "core", (), "failed", f"{pair}: TLS verify failed")
        for pair in ("cluster-a->cluster-b", "cluster-b->cluster-a")
    ]
    page = summary_html(record)
    line = "core failed:</span> SpiffeIdentity (cluster-a-&gt;cluster-b, cluster-b-&gt;cluster-a): TLS verify failed"
    assert page.count(line) == 1
    assert page.count("<li>SpiffeIdentity (cluster-a-&gt;cluster-b, cluster-b-&gt;cluster-a): TLS verify failed") == 1


def test_a_profile_left_out_of_the_run_reads_not_selected() -> None:
    record = _record()
    record.outcomes = [outcome("passed", "A")]  # a core case only, as with --profile core
    assert conformance_report(record)["profiles"][1]["result"] == "unknown"  # the report's word: none ran
    page = summary_html(record)
    assert "title='no case of this profile was in this run'>not selected</td>" + "<td class='n'>0</td>" * 5 in page
    assert ">unknown<" not in page


def test_the_picture_is_sized_to_its_clusters() -> None:
    two, five = mesh_picture(_record()), mesh_picture(_five_cluster_record())
    height = lambda svg: float(svg.split('height="', 1)[1].split('"', 1)[0])  # noqa: E731
    assert height(two) <= 120 + 80 < height(five)  # the legend's three lines under the clusters


def test_a_failure_message_is_the_error_sentence_never_the_line_it_was_raised_at() -> None:
    from types import SimpleNamespace

    from fixtures.reporting import _failure_message

    raised = SimpleNamespace(
        longrepr=SimpleNamespace(
            reprcrash=SimpleNamespace(
                message="meshfed.backends.base.BackendError: cluster-b: the proxy of pod 'echo' has no certificate yet"
            )
        ),
        longreprtext="...\nsrc/meshfed/backends/embedded/mesh.py:289: BackendError",
    )
    assert _failure_message(raised) == "BackendError: cluster-b: the proxy of pod 'echo' has no certificate yet"
    failed = SimpleNamespace(
        longrepr=SimpleNamespace(reprcrash=SimpleNamespace(message="Failed: cluster-a->cluster-b: 2/20 failed\nmore")),
        longreprtext="x.py:5: Failed",
    )
    assert _failure_message(failed) == "cluster-a->cluster-b: 2/20 failed more"
    untraced = SimpleNamespace(
        longrepr="cluster-a->cluster-b: 1/20 failed", longreprtext="cluster-a->cluster-b: 1/20 failed"
    )
    assert _failure_message(untraced) == "cluster-a->cluster-b: 1/20 failed"
