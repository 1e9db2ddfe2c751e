"""The HTML report's header: what was tested, a picture of the mesh, and the price of the east-west hop."""

from __future__ import annotations

import html
import math

from meshfed.report.model import EMBEDDED_NOTE, RunRecord

_COLORS = {True: "#2e9d48", False: "#d23b3b", None: "#9aa0a6"}


def mesh_picture(record: RunRecord) -> str:
    """An SVG: clusters on a circle with their network and east-west gateway, one arrow per ordered
    pair, green when the pair was reachable, red when not, grey when untested."""
    names = [c["name"] for c in record.clusters]
    count = len(names)
    width, height, radius = 640, 360, 120 if count > 2 else 190
    cx, cy = width / 2, height / 2
    places = {}
    for index, name in enumerate(names):
        angle = math.pi + 2 * math.pi * index / count
        places[name] = (cx + radius * math.cos(angle), cy + radius * math.sin(angle) * (0.8 if count > 2 else 0))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="mesh">']
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
    out = ["<h2>Mesh under test</h2>"]
    if record.backend == "embedded":
        out.append(f"<p><strong>{html.escape(EMBEDDED_NOTE)}</strong></p>")
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
    for case_id, steps in record.procedures.items():
        step_rows = "".join(
            f"<tr><td>{html.escape(step)}</td><td>{ok}</td><td>{failed}</td></tr>" for step, ok, failed in steps
        )
        out.append(
            f"<h3>{html.escape(case_id)}: calls during each step</h3>"
            f"<table><tr><th>step</th><th>answered</th><th>failed</th></tr>{step_rows}</table>"
        )
    return "".join(out)
