"""The HTML report's header: the verdict per profile first with every failed case (one line per case and
cause), every pair's cases as a matrix, the diagnosis, then what was tested, a picture of the mesh coloured
from the same verdicts, and the price of the east-west hop."""

from __future__ import annotations

import html
import math
from typing import Any

from meshfed.cases import BROKEN_FROM_START
from meshfed.report.model import EMBEDDED_NOTE, FAULT_NOTE, CaseOutcome, RunRecord, conformance_report

_GREEN, _RED, _GREY, _AMBER, _PALE = "#1e7b34", "#c62828", "#6b7075", "#8a6d00", "#e0e0e0"
_OUTCOME_COLORS = {
    "passed": _GREEN,
    "failed": _RED,
    "not-supported": _GREY,
    "skipped": _AMBER,
    "not-applicable": _PALE,
}
# Text on those colours (a chip) and words in those colours (a line): both readable on white (contrast >= 4.5).
_CHIP_TEXT = {"not-applicable": "#1b1b1b"}
_WORD_COLORS = {**_OUTCOME_COLORS, "not-applicable": "#5f6368"}
_RESULT_COLORS = {"success": _GREEN, "partial": _AMBER, "failure": _RED, "unknown": _GREY}
_PAIR_COLORS = {"passed": _GREEN, "failed": _RED, "untested": _GREY}
_PAIR_WORDS = {
    "passed": "every case of the pair passed",
    "failed": "a case of the pair failed",
    "untested": "no case of the pair ran",
}

# The summary's own look: readable at 800 px and wide, whatever pytest-html's style sheet says.
STYLE = (
    "<style>"
    ".meshfed{color:#1b1b1b;max-width:100%;font-size:13px}"
    ".meshfed h2,.meshfed h3{color:#1b1b1b}"
    ".meshfed table{border-collapse:collapse;margin:4px 0 12px}"
    ".meshfed th,.meshfed td{padding:4px 10px;color:#1b1b1b;text-align:left;border-bottom:1px solid #e0e0e0}"
    ".meshfed td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".meshfed .wide{overflow-x:auto;max-width:100%}"
    ".meshfed svg{max-width:100%;height:auto}"
    ".meshfed .said{margin:3px 0;padding-left:1.5em;text-indent:-1.5em;overflow-wrap:anywhere}"
    ".meshfed .chip{display:inline-block;margin:1px;padding:1px 5px;border-radius:3px;color:#fff;font-size:11px}"
    ".meshfed .badge{color:#fff;font-weight:bold}"
    "body{min-width:0}body>*{min-width:0;max-width:100%}h1{overflow-wrap:anywhere}"
    "#results-table,#environment{table-layout:fixed;width:100%}"
    "#results-table td,#environment td{overflow-wrap:anywhere}"
    "</style>"
)


def _pair_of(outcome: CaseOutcome) -> tuple[str, str] | None:
    inside = outcome.case_id.partition("[")[2].rstrip("]")
    if "->" not in inside:
        return None
    source, _, destination = inside.partition("->")
    return source, destination


def pair_verdicts(record: RunRecord) -> dict[tuple[str, str], str]:
    """Each ordered pair's verdict from its cases, as the matrix shows them: failed when one failed, passed
    when every one that ran passed, untested otherwise."""
    found: dict[tuple[str, str], set[str]] = {}
    for outcome in record.outcomes:
        pair = _pair_of(outcome)
        if pair is not None:
            found.setdefault(pair, set()).add(outcome.outcome)
    verdicts = {}
    for pair, kinds in found.items():
        verdicts[pair] = "failed" if "failed" in kinds else "passed" if "passed" in kinds else "untested"
    return verdicts


def broken_clusters(record: RunRecord) -> list[str]:
    """The clusters the blocking findings (a mesh broken from the start) or the diagnosis's errors name."""
    names = [c["name"] for c in record.clusters]
    if record.external_control_plane:
        names.append(record.external_control_plane["name"])
    lines = list(record.broken_from_start) + [
        line.removeprefix("error: ") for line in record.diagnosis if line.startswith("error: ")
    ]
    return [name for name in names if any(line.startswith(f"{name}: ") for line in lines)]


def mesh_picture(record: RunRecord) -> str:
    """An SVG: clusters on a circle with their network and east-west gateway, one arrow per ordered pair
    coloured from the same verdicts as the matrix, a legend, and the clusters the diagnosis names marked; an
    external control plane above them, a dashed line to each cluster it serves."""
    names = [c["name"] for c in record.clusters]
    count = len(names)
    verdicts = pair_verdicts(record)
    broken = set(broken_clusters(record))
    # The circle grows with the clusters so boxes never overlap; the drawing is sized to what it holds.
    radius = 190 if count <= 2 else max(150, 60 * count)
    raw = {}
    for index, name in enumerate(names):
        angle = math.pi + 2 * math.pi * index / count
        raw[name] = (radius * math.cos(angle), radius * math.sin(angle) * (0.8 if count > 2 else 0))
    margin_x, margin_y, legend = 80, 50, 22 * len(_PAIR_COLORS) + 10
    left, top = min(x for x, _ in raw.values()) - margin_x, min(y for _, y in raw.values()) - margin_y
    width = max(x for x, _ in raw.values()) - left + margin_x
    height = max(y for _, y in raw.values()) - top + margin_y + legend
    external = record.external_control_plane
    above = 150 if external else 0  # room for the external control plane's box and its lines
    height += above
    places = {name: (x - left, y - top + above) for name, (x, y) in raw.items()}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="mesh">'
    ]
    parts.append("<defs>")
    for key, color in _PAIR_COLORS.items():
        parts.append(
            f'<marker id="arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
        )
    parts.append("</defs>")
    for source in names:
        for destination in names:
            if source == destination:
                continue
            status = verdicts.get((source, destination), "untested")
            (x1, y1), (x2, y2) = places[source], places[destination]
            dx, dy = x2 - x1, y2 - y1
            length = math.hypot(dx, dy) or 1
            ox, oy = -dy / length * 18, dx / length * 18  # each direction on its own side
            shrink = 70 / length
            sx, sy = x1 + dx * shrink + ox, y1 + dy * shrink + oy
            ex, ey = x2 - dx * shrink + ox, y2 - dy * shrink + oy
            parts.append(
                f'<line x1="{sx:.0f}" y1="{sy:.0f}" x2="{ex:.0f}" y2="{ey:.0f}" stroke="{_PAIR_COLORS[status]}" '
                f'stroke-width="3" marker-end="url(#arrow-{status})" data-pair="{html.escape(source)}-&gt;'
                f'{html.escape(destination)}" data-verdict="{status}"><title>{html.escape(source)} -&gt; '
                f"{html.escape(destination)}: {_PAIR_WORDS[status]}</title></line>"
            )
    if external:
        parts.append(_external_box(external, places, width / 2, 55, external["name"] in broken))
    for cluster in record.clusters:
        x, y = places[cluster["name"]]
        marked = cluster["name"] in broken
        stroke, fill = (_RED, "#fdecea") if marked else ("#3d6fb6", "#eef3fb")
        parts.append(
            f'<rect x="{x - 62:.0f}" y="{y - 40:.0f}" width="124" height="80" rx="10" fill="{fill}" '
            f'stroke="{stroke}" stroke-width="{3 if marked else 1}"/>'
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
        if marked:
            parts.append(
                f'<text x="{x:.0f}" y="{y + 54:.0f}" text-anchor="middle" font-size="11" font-weight="bold" '
                f'fill="{_RED}">broken: see the diagnosis</text>'
            )
    for row, (key, color) in enumerate(_PAIR_COLORS.items()):
        y = height - legend + 14 + 22 * row
        parts.append(f'<line x1="10" y1="{y:.0f}" x2="40" y2="{y:.0f}" stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="48" y="{y + 4:.0f}" font-size="11">{_PAIR_WORDS[key]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _external_box(
    external: dict[str, Any], places: dict[str, tuple[float, float]], x: float, y: float, marked: bool
) -> str:
    """The external control plane: its cluster, istiod behind its ingress gateway, a dashed line to each cluster
    it serves (discovery, certificates and injection cross that gateway)."""
    stroke, fill = (_RED, "#fdecea") if marked else ("#6b4fa3", "#f3effa")
    parts = []
    for served in external.get("serves") or []:
        if served in places:
            sx, sy = places[served]
            parts.append(
                f'<line x1="{x:.0f}" y1="{y + 40:.0f}" x2="{sx:.0f}" y2="{sy - 40:.0f}" stroke="#6b4fa3" '
                f'stroke-width="1.5" stroke-dasharray="6 4" data-serves="{html.escape(served)}">'
                f"<title>{html.escape(external['name'])} serves {html.escape(served)}: xDS, certificates, injection"
                "</title></line>"
            )
    parts.append(
        f'<rect x="{x - 110:.0f}" y="{y - 40:.0f}" width="220" height="80" rx="10" fill="{fill}" stroke="{stroke}" '
        f'stroke-width="{3 if marked else 1.5}" data-external="{html.escape(external["name"])}"/>'
    )
    parts.append(
        f'<text x="{x:.0f}" y="{y - 16:.0f}" text-anchor="middle" font-weight="bold" font-size="14">'
        f"{html.escape(external['name'])}: external control plane</text>"
    )
    parts.append(
        f'<text x="{x:.0f}" y="{y + 2:.0f}" text-anchor="middle" font-size="11">istiod in external-istiod, no workloads</text>'
    )
    parts.append(f'<rect x="{x - 68:.0f}" y="{y + 12:.0f}" width="136" height="20" rx="4" fill="#fff" stroke="#888"/>')
    parts.append(
        f'<text x="{x:.0f}" y="{y + 26:.0f}" text-anchor="middle" font-size="10">ingress gw 15012/15017</text>'
    )
    if marked:
        parts.append(
            f'<text x="{x + 120:.0f}" y="{y:.0f}" font-size="11" font-weight="bold" fill="{_RED}">broken: see the diagnosis</text>'
        )
    return "".join(parts)


def _cause(outcome: CaseOutcome) -> str:
    """The failure's sentence without the pair it starts with (grouped pairs are listed beside it)."""
    pair = _pair_of(outcome)
    message = outcome.message or outcome.outcome
    if message.startswith(BROKEN_FROM_START):  # its findings are listed once, right under the verdict
        return BROKEN_FROM_START.rstrip(": ") + " (its findings are listed under the verdict)"
    if pair is not None:
        message = message.removeprefix(f"{pair[0]}->{pair[1]}: ")
    return message


def by_cause(outcomes: list[CaseOutcome]) -> list[tuple[str, str]]:
    """(which, cause): one entry per distinct cause, the cases it ended listed once, e.g. ``Reachability,
    MutualTLS (a->c, b->c)`` when both failed on the same pairs, in the order first seen."""
    causes: dict[str, dict[str, list[CaseOutcome]]] = {}
    for outcome in outcomes:
        causes.setdefault(_cause(outcome), {}).setdefault(outcome.short_name, []).append(outcome)
    found = []
    for cause, cases in causes.items():
        places: dict[str, list[str]] = {}
        for name, ended in cases.items():
            places.setdefault(_where(ended), []).append(name)
        which = "; ".join(f"{', '.join(names)}" + (f" ({where})" if where else "") for where, names in places.items())
        found.append((which, cause))
    return found


def _where(found: list[CaseOutcome]) -> str:
    places = [o.case_id.partition("[")[2].rstrip("]") for o in found]
    return ", ".join(place for place in places if place)


def verdict_html(record: RunRecord) -> str:
    """Per profile its result and counts, then every failed case, once per distinct cause (the cases, pairs
    or clusters it ended listed with it), then what does not apply here and what the backend does not
    support."""
    rows: list[str] = []
    lines: dict[str, list[str]] = {"failed": [], "not-applicable": [], "not-supported": [], "skipped": []}
    for profile in conformance_report(record)["profiles"]:
        stats = profile["statistics"]
        color = _RESULT_COLORS.get(profile["result"], _GREY)
        cells = "".join(f"<td class='n'>{stats[k]}</td>" for k in _COUNTED)
        result, why = profile["result"], ""
        if result == "unknown" and not any(stats.values()):
            # --profile, --features or -k left every case of it out: nothing was certified, nothing failed.
            result, why = "not selected", " title='no case of this profile was in this run'"
        rows.append(
            f"<tr><th>{html.escape(profile['name'])}</th>"
            f"<td class='badge' style='background:{color}'{why}>{html.escape(result)}</td>{cells}</tr>"
        )
        chosen = [o for o in record.outcomes if o.profile == profile["name"]]
        for kind, words in _LISTED.items():
            for which, cause in by_cause([o for o in chosen if o.outcome == kind]):
                lines[kind].append(
                    f"<div class='said meshfed-{kind}'><span style='color:{_WORD_COLORS[kind]};font-weight:bold'>"
                    f"{html.escape(profile['name'])} {words}:</span> {html.escape(which)}: {html.escape(cause)}</div>"
                )
    header = "".join(f"<th>{html.escape(k.replace('-', ' '))}</th>" for k in _COUNTED)
    return (
        "<h2>Verdict</h2><div class='wide'><table class='meshfed-verdict'><tr><th>profile</th><th>result</th>"
        f"{header}</tr>{''.join(rows)}</table></div>" + "".join(line for kind in _LISTED for line in lines[kind])
    )


_COUNTED = ("passed", "failed", "not-supported", "skipped", "not-applicable")
# Listed under the verdict, in this order: failures first, whatever their profile.
_LISTED = {
    "failed": "failed",
    "not-applicable": "does not apply here",
    "not-supported": "not supported here",
    "skipped": "skipped",
}


def _chip(outcome: CaseOutcome, label: str) -> str:
    color = _OUTCOME_COLORS.get(outcome.outcome, _GREY)
    detail = f"{outcome.short_name}: {outcome.outcome}" + (f": {outcome.message}" if outcome.message else "")
    return (
        f"<span class='chip' data-case='{html.escape(outcome.case_id, quote=True)}' "
        f"data-outcome='{outcome.outcome}' title='{html.escape(detail, quote=True)}' "
        f"style='background:{color};color:{_CHIP_TEXT.get(outcome.outcome, '#fff')}'>{html.escape(label)}</span>"
    )


def pair_matrix(record: RunRecord) -> str:
    """The pair cases as a matrix: a row per calling cluster, a column per called one, in each cell one chip
    per case (its outcome's colour, the failure's message on hover), and under it each distinct failure once,
    with the cases and pairs it ended."""
    pairs: dict[tuple[str, str], list[CaseOutcome]] = {}
    for outcome in record.outcomes:
        pair = _pair_of(outcome)
        if pair is not None:
            pairs.setdefault(pair, []).append(outcome)
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
            cells.append(f"<td style='border:1px solid #ddd'>{chips}</td>")
        rows.append(f"<tr><th>from {html.escape(source)}</th>{''.join(cells)}</tr>")
    legend = ", ".join(f"{html.escape(labels[c])} = {html.escape(c)}" for c in cases)
    colours = " ".join(
        f"<span class='chip' style='background:{color};color:{_CHIP_TEXT.get(kind, '#fff')}'>"
        f"{kind.replace('-', ' ')}</span>"
        for kind, color in _OUTCOME_COLORS.items()
    )
    failed = [o for found in pairs.values() for o in found if o.outcome == "failed"]
    failures = [
        f"<li>{html.escape(which)}: {html.escape(cause)}</li>"
        for which, cause in by_cause(sorted(failed, key=lambda o: o.case_id))
    ]
    return (
        "<h3>Every pair, every case</h3><div class='wide'><table class='meshfed-matrix'>"
        f"<tr><th></th>{header}</tr>{''.join(rows)}</table></div><p>{legend}</p><p>{colours}</p>"
        + (f"<ul class='meshfed-failures'>{''.join(failures)}</ul>" if failures else "")
    )


# pytest-html 4 writes its Environment table (Python, plugins) above the summary this module fills: the page
# is laid out as a column so that the verdict comes first, then the results with the filters that end the
# summary right above them, and pytest-html's Environment table last.
LAYOUT_CSS = (
    "<style>body{display:flex;flex-direction:column}"
    "#results-table,#results-table~*{order:1}#environment-header,#environment{order:2}</style>"
)


def summary_html(record: RunRecord) -> str:
    rows = [
        ("Backend", record.backend),
        ("Topology", record.topology),
        ("Istio version", record.istio_version),
        ("Clusters", ", ".join(f"{c['name']} ({c['network']}, {c['role']})" for c in record.clusters)),
        *(
            [
                (
                    "External control plane",
                    f"{record.external_control_plane['name']}, serving {', '.join(record.external_control_plane.get('serves') or [])}",
                )
            ]
            if record.external_control_plane
            else []
        ),
    ]
    rows += [(key, value) for key, value in record.environment.items()]
    if record.implementation:
        rows.append(("Implementation", ", ".join(f"{k}: {v}" for k, v in record.implementation.items())))
    out = [LAYOUT_CSS, STYLE, "<div class='meshfed'>", verdict_html(record)]
    if record.backend == "embedded":
        out.append(f"<p><strong>{html.escape(EMBEDDED_NOTE)}</strong></p>")
    if record.fault:
        out.append(
            f"<p style='color:{_RED}'><strong>Fault injected: {html.escape(record.fault['name'])}</strong>, "
            f"{html.escape(record.fault['title'])}. {html.escape(FAULT_NOTE)}</p>"
        )
    if record.provisioning_error:
        out.append(
            f"<p style='color:{_RED}'><strong>Provisioning failed:</strong> {html.escape(record.provisioning_error)}</p>"
        )
    if record.broken_from_start:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in record.broken_from_start)
        out.append(
            f"<p style='color:{_RED}'><strong>The mesh was broken from the start</strong> (no case could run on it):</p>"
            f"<ul>{items}</ul>"
        )
    out.append(pair_matrix(record))
    if record.diagnosis:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in record.diagnosis)
        out.append(f"<h3>Diagnosis (at the last failure)</h3><ul>{items}</ul>")
    out.append("<h2>Mesh under test</h2>")
    out.append(
        "<div class='wide'><table>"
        + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table></div>"
    )
    out.append(mesh_picture(record))
    latency_rows = []
    for pair in sorted(record.latencies):
        summary = record.latency_summary(pair)
        same, cross = summary.get("same"), summary.get("cross")
        cells = [f"{v[0]:.1f} / {v[1]:.1f}" if v else "-" for v in (same, cross)]
        latency_rows.append(
            f"<tr><td>{html.escape(pair)}</td><td class='n'>{cells[0]}</td><td class='n'>{cells[1]}</td></tr>"
        )
    if latency_rows:
        out.append(
            "<h3>Latency, median / p99 in ms (same-cluster vs cross-cluster: the price of the east-west hop)</h3>"
            "<div class='wide'><table><tr><th>pair</th><th>same cluster</th><th>cross cluster</th></tr>"
            + "".join(latency_rows)
            + "</table></div>"
        )
    counted = [o for o in record.outcomes if o.calls]
    if counted:
        call_rows = "".join(
            f"<tr><td>{html.escape(o.case_id)}</td>"
            + "".join(
                f"<td class='n'>{o.calls.get(k, 0)}</td>" for k in ("made", "failed", "steadyMade", "steadyFailed")
            )
            + "</tr>"
            for o in counted
        )
        out.append(
            "<h3>Calls each case made (a steady window's calls must all succeed)</h3>"
            "<div class='wide'><table><tr><th>case</th><th>calls</th><th>failed</th><th>in steady windows</th>"
            f"<th>of those failed</th></tr>{call_rows}</table></div>"
        )
    for case_id, steps in record.procedures.items():
        step_rows = "".join(
            f"<tr><td>{html.escape(step)}</td><td class='n'>{ok}</td><td class='n'>{failed}</td></tr>"
            for step, ok, failed in steps
        )
        out.append(
            f"<h3>{html.escape(case_id)}: calls during each step</h3>"
            f"<div class='wide'><table><tr><th>step</th><th>answered</th><th>failed</th></tr>{step_rows}</table></div>"
        )
    out.append("</div>")
    return "".join(out)
