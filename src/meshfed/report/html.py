"""The HTML report's header: the verdict per profile first, every pair's cases as a matrix, the diagnosis, then
what was tested, a picture of the mesh, and the price of the east-west hop."""

from __future__ import annotations

import html
import math

from meshfed.report.model import EMBEDDED_NOTE, FAULT_NOTE, CaseOutcome, RunRecord, conformance_report

_COLORS = {True: "#2e9d48", False: "#d23b3b", None: "#9aa0a6"}


def mesh_picture(record: RunRecord) -> str:
    """An SVG: clusters on a circle with their network and east-west gateway, one arrow per ordered
    pair, green when the pair was reachable, red when not, grey when untested."""
    names = [c["name"] for c in record.clusters]
    count = len(names)
    # The circle grows with the clusters so boxes never overlap; the drawing is sized to what it holds.
    radius = 190 if count <= 2 else max(150, 60 * count)
    raw = {}
    for index, name in enumerate(names):
        angle = math.pi + 2 * math.pi * index / count
        raw[name] = (radius * math.cos(angle), radius * math.sin(angle) * (0.8 if count > 2 else 0))
    margin_x, margin_y = 80, 50
    left, top = min(x for x, _ in raw.values()) - margin_x, min(y for _, y in raw.values()) - margin_y
    width = max(x for x, _ in raw.values()) - left + margin_x
    height = max(y for _, y in raw.values()) - top + margin_y
    places = {name: (x - left, y - top) for name, (x, y) in raw.items()}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="mesh">'
    ]
    parts.append("<defs>")
    for key, color in _COLORS.items():
        parts.append(
            f'<marker id="arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    parts.append("</defs>")
    for source in names:
        for destination in names:
            if source == destination:
                continue
            status = record.pair_status.get(f"{source}->{destination}")
            (x1, y1), (x2, y2) = places[source], places[destination]
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy) or 1
            ox, oy = -dy / length * 18, dx / length * 18  # each direction on its own side
            shrink = 70 / length
            sx, sy = x1 + dx * shrink + ox, y1 + dy * shrink + oy
            ex, ey = x2 - dx * shrink + ox, y2 - dy * shrink + oy
            parts.append(
                f'<line x1="{sx:.0f}" y1="{sy:.0f}" x2="{ex:.0f}" y2="{ey:.0f}" stroke="{_COLORS[status]}" stroke-width="3" '
                f'marker-end="url(#arrow-{status})"><title>{html.escape(source)} -&gt; {html.escape(destination)}: '
                f"{'reachable' if status else 'unreachable' if status is False else 'not tested'}</title></line>"
            )
    for cluster in record.clusters:
        x, y = places[cluster["name"]]
        parts.append(
            f'<rect x="{x - 62:.0f}" y="{y - 40:.0f}" width="124" height="80" rx="10" fill="#eef3fb" stroke="#3d6fb6"/>'
        )
        parts.append(
            f'<text x="{x:.0f}" y="{y - 16:.0f}" text-anchor="middle" font-weight="bold" font-size="14">{html.escape(cluster["name"])}</text>'
        )
        parts.append(
            f'<text x="{x:.0f}" y="{y + 2:.0f}" text-anchor="middle" font-size="11">{html.escape(cluster["network"])} · {html.escape(cluster["role"])}</text>'
        )
        parts.append(
            f'<rect x="{x - 40:.0f}" y="{y + 12:.0f}" width="80" height="20" rx="4" fill="#fff" stroke="#888"/>'
        )
        parts.append(f'<text x="{x:.0f}" y="{y + 26:.0f}" text-anchor="middle" font-size="10">east-west gw</text>')
    parts.append("</svg>")
    return "".join(parts)


_OUTCOME_COLORS = {"passed": "#2e9d48", "failed": "#d23b3b", "not-supported": "#9aa0a6", "skipped": "#c9a227"}
_RESULT_COLORS = {"success": "#2e9d48", "partial": "#c9a227", "failure": "#d23b3b", "unknown": "#9aa0a6"}


def verdict_html(record: RunRecord) -> str:
    """Per profile, its result and how many cases passed, failed, were not supported or skipped."""
    rows = []
    for profile in conformance_report(record)["profiles"]:
        stats = profile["statistics"]
        color = _RESULT_COLORS.get(profile["result"], "#9aa0a6")
        cells = "".join(f"<td>{stats[k]}</td>" for k in ("passed", "failed", "not-supported", "skipped"))
        result, why = profile["result"], ""
        if result == "unknown" and not any(stats.values()):
            # --profile, --features or -k left every case of it out: nothing was certified, nothing failed.
            result, why = "not selected", " title='no case of this profile was in this run'"
        rows.append(
            f"<tr><th style='text-align:left'>{html.escape(profile['name'])}</th>"
            f"<td style='background:{color};color:#fff;font-weight:bold;padding:2px 10px'{why}>{html.escape(result)}</td>"
            f"{cells}</tr>"
        )
    return (
        "<h2>Verdict</h2><table class='meshfed-verdict'><tr><th>profile</th><th>result</th><th>passed</th>"
        "<th>failed</th><th>not supported</th><th>skipped</th></tr>" + "".join(rows) + "</table>"
    )


def _chip(outcome: CaseOutcome, label: str) -> str:
    color = _OUTCOME_COLORS.get(outcome.outcome, "#9aa0a6")
    detail = f"{outcome.short_name}: {outcome.outcome}" + (f": {outcome.message}" if outcome.message else "")
    return (
        f"<span title='{html.escape(detail, quote=True)}' style='display:inline-block;margin:1px;padding:1px 5px;"
        f"border-radius:3px;background:{color};color:#fff;font-size:11px'>{html.escape(label)}</span>"
    )


def pair_matrix(record: RunRecord) -> str:
    """The pair cases as a matrix: a row per calling cluster, a column per called one, in each cell one chip
    per case (its outcome's colour, the failure's message on hover and listed under the matrix)."""
    pairs: dict[tuple[str, str], list[CaseOutcome]] = {}
    for outcome in record.outcomes:
        inside = outcome.case_id.partition("[")[2].rstrip("]")
        if "->" in inside:
            source, _, destination = inside.partition("->")
            pairs.setdefault((source, destination), []).append(outcome)
    if not pairs:
        return ""
    names = [c["name"] for c in record.clusters]
    cases = sorted({o.short_name for found in pairs.values() for o in found})
    labels = {name: "".join(ch for ch in name if ch.isupper()) or name[:4] for name in cases}
    header = "".join(f"<th>to {html.escape(n)}</th>" for n in names)
    rows = []
    for source in names:
        cells = []
        for destination in names:
            found = sorted(pairs.get((source, destination), []), key=lambda o: o.short_name)
            chips = "".join(_chip(o, labels[o.short_name]) for o in found) or ("-" if source != destination else "")
            cells.append(f"<td style='padding:3px;border:1px solid #ddd'>{chips}</td>")
        rows.append(f"<tr><th style='text-align:left'>from {html.escape(source)}</th>{''.join(cells)}</tr>")
    legend = ", ".join(f"{html.escape(labels[c])} = {html.escape(c)}" for c in cases)
    failures = [
        f"<li>{html.escape(o.case_id)}: {html.escape(o.message)}</li>"
        for found in pairs.values()
        for o in found
        if o.outcome == "failed" and o.message
    ]
    return (
        "<h3>Every pair, every case</h3><table class='meshfed-matrix' style='border-collapse:collapse'>"
        f"<tr><th></th>{header}</tr>{''.join(rows)}</table><p style='font-size:11px'>{legend}</p>"
        + (f"<ul style='font-size:12px'>{''.join(sorted(failures))}</ul>" if failures else "")
    )


# pytest-html 4 writes its Environment table (Python, plugins) above the summary this module fills: the page
# is laid out as a column so that the verdict comes first, the Environment table after it, then the results.
LAYOUT_CSS = (
    "<style>body{display:flex;flex-direction:column}"
    "#environment-header,#environment{order:1}#results-table,#results-table~*{order:2}</style>"
)


def summary_html(record: RunRecord) -> str:
    rows = [
        ("Backend", record.backend),
        ("Topology", record.topology),
        ("Istio version", record.istio_version),
        ("Clusters", ", ".join(f"{c['name']} ({c['network']}, {c['role']})" for c in record.clusters)),
    ]
    rows += [(key, value) for key, value in record.environment.items()]
    if record.implementation:
        rows.append(("Implementation", ", ".join(f"{k}: {v}" for k, v in record.implementation.items())))
    out = [LAYOUT_CSS, verdict_html(record)]
    if record.backend == "embedded":
        out.append(f"<p><strong>{html.escape(EMBEDDED_NOTE)}</strong></p>")
    if record.fault:
        out.append(
            f"<p style='color:#b3261e'><strong>Fault injected: {html.escape(record.fault['name'])}</strong>, "
            f"{html.escape(record.fault['title'])}. {html.escape(FAULT_NOTE)}</p>"
        )
    if record.provisioning_error:
        out.append(
            f"<p style='color:#d23b3b'><strong>Provisioning failed:</strong> {html.escape(record.provisioning_error)}</p>"
        )
    if record.broken_from_start:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in record.broken_from_start)
        out.append(
            "<p style='color:#d23b3b'><strong>The mesh was broken from the start</strong> (no case could run on it):</p>"
            f"<ul>{items}</ul>"
        )
    out.append(pair_matrix(record))
    if record.diagnosis:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in record.diagnosis)
        out.append(f"<h3>Diagnosis (at the last failure)</h3><ul style='font-size:12px'>{items}</ul>")
    out.append("<h2>Mesh under test</h2>")
    out.append(
        "<table>"
        + "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>"
    )
    out.append(mesh_picture(record))
    latency_rows = []
    for pair in sorted(record.latencies):
        summary = record.latency_summary(pair)
        same, cross = summary.get("same"), summary.get("cross")
        cells = [f"{v[0]:.1f} / {v[1]:.1f}" if v else "-" for v in (same, cross)]
        latency_rows.append(f"<tr><td>{html.escape(pair)}</td><td>{cells[0]}</td><td>{cells[1]}</td></tr>")
    if latency_rows:
        out.append(
            "<h3>Latency, median / p99 in ms (same-cluster vs cross-cluster: the price of the east-west hop)</h3>"
            "<table><tr><th>pair</th><th>same cluster</th><th>cross cluster</th></tr>"
            + "".join(latency_rows)
            + "</table>"
        )
    counted = [o for o in record.outcomes if o.calls]
    if counted:
        call_rows = "".join(
            f"<tr><td>{html.escape(o.case_id)}</td>"
            + "".join(
                f"<td style='text-align:right'>{o.calls.get(k, 0)}</td>"
                for k in ("made", "failed", "steadyMade", "steadyFailed")
            )
            + "</tr>"
            for o in counted
        )
        out.append(
            "<h3>Calls each case made (a steady window's calls must all succeed)</h3>"
            "<table><tr><th>case</th><th>calls</th><th>failed</th><th>in steady windows</th><th>of those failed</th></tr>"
            f"{call_rows}</table>"
        )
    for case_id, steps in record.procedures.items():
        step_rows = "".join(
            f"<tr><td>{html.escape(step)}</td><td>{ok}</td><td>{failed}</td></tr>" for step, ok, failed in steps
        )
        out.append(
            f"<h3>{html.escape(case_id)}: calls during each step</h3>"
            f"<table><tr><th>step</th><th>answered</th><th>failed</th></tr>{step_rows}</table>"
        )
    return "".join(out)
