"""``hush audit report --html FILE``: one self-contained page for review.

No scripts, no fonts, no images fetched from anywhere: inline CSS and SVG.
Its numbers come from :func:`hush.daemon.audit.queries.summary`, the same as
``hush audit summary --json`` (the timeline and the per-rule table from the same
module); every number cell carries ``data-app`` and ``data-metric`` so a test (or
a script) can read them back.
"""

from __future__ import annotations

import html
import sqlite3
import time
from datetime import datetime

from hush.daemon.audit.queries import by_rule, summary, timeline

# Every decision an audit row can carry (docs/audit.md), each its colour in the timeline and the legend.
COLORS = {
    "allow": "#6b7280", "passthrough": "#9ca3af", "strip": "#d97706", "block": "#059669",
    "tor": "#7c3aed", "delay": "#2563eb", "debounce": "#0d9488",
    "superseded": "#84cc16", "overflow": "#f97316", "shutdown": "#78716c", "abandoned": "#a8a29e",
    "tor-unavailable": "#dc2626", "refused": "#b91c1c", "revoked": "#0891b2",
}
OTHER = "#444"  # a decision this page does not know (written by a newer hush)
PREVENTED_LABELS = {
    "ip": "IP address kept from the site", "user_agent": "User-Agent withheld or replaced",
    "cookies": "cookies withheld", "referer": "Referer withheld", "accept_language": "Accept-Language withheld",
}


def _svg_timeline(bucket: int, points: list[tuple[float, str, int]]) -> str:
    if not points:
        return "<p>No records in this period.</p>"
    times = sorted({t for t, _, _ in points})
    stacks: dict[float, list[tuple[str, int]]] = {t: [] for t in times}
    for t, decision, n in points:
        stacks[t].append((decision, n))
    peak = max(sum(n for _, n in s) for s in stacks.values())
    width, height, pad = 760, 180, 30
    bar = min(40.0, max(2.0, (width - pad) / len(times) - 2))
    parts = [f'<svg role="img" aria-label="decisions over time" viewBox="0 0 {width} {height + 40}" '
             f'width="100%">']
    parts.append(f'<line x1="{pad}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>')
    parts.append(f'<text x="0" y="12" font-size="11">{peak}</text><text x="0" y="{height}" font-size="11">0</text>')
    for i, t in enumerate(times):
        x = pad + i * (bar + 2)
        y = float(height)
        for decision, n in sorted(stacks[t]):
            h = n / peak * (height - 10)
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                         f'fill="{COLORS.get(decision, OTHER)}"><title>{html.escape(_when(t))}: '
                         f'{n} {html.escape(decision)}</title></rect>')
    parts.append(f'<text x="{pad}" y="{height + 16}" font-size="11">{html.escape(_when(times[0]))}</text>')
    parts.append(f'<text x="{width}" y="{height + 16}" font-size="11" text-anchor="end">'
                 f'{html.escape(_when(times[-1] + bucket))}</text>')
    parts.append("</svg>")
    shown = dict(COLORS)
    if any(decision not in COLORS for _, decision, _ in points):
        shown["other"] = OTHER
    legend = " ".join(f'<span class="key" style="background:{c}"></span>{html.escape(d)}' for d, c in shown.items())
    return "".join(parts) + f'<p class="legend">{legend}</p>'


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _num(app: str, metric: str, value) -> str:
    return f'<td class="n" data-app="{html.escape(app)}" data-metric="{html.escape(metric)}">{value}</td>'


def render(conn: sqlite3.Connection, since: float | None = None, now: float | None = None) -> str:
    now = time.time() if now is None else now
    data = summary(conn, since)
    bucket, points = timeline(conn, since)
    esc = html.escape
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        "<title>hush audit report</title><style>",
        "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#111;padding:0 1em}",
        "h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}",
        "table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{padding:.3em .6em;border-bottom:1px solid #eee;"
        "text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}",
        ".key{display:inline-block;width:.8em;height:.8em;margin:0 .3em 0 1em}.muted{color:#666}",
        "</style></head><body>",
        "<h1>What your apps would have revealed, and what hush let through</h1>",
        f"<p class='muted'>Generated {esc(_when(now))} from the local audit"
        + (f", records since {esc(_when(since))}" if since else ", all records") + ".</p>",
        "<h2>Per app</h2><table><tr><th>app</th><th>requests</th><th>sites</th><th>IP reached the site</th>"
        + "".join(f"<th>{esc(label)}</th>" for label in PREVENTED_LABELS.values()) + "</tr>",
    ]
    for app, s in data["apps"].items():
        out.append(f"<tr><th>{esc(app)}</th>" + _num(app, "requests", s["requests"]) + _num(app, "sites", s["sites"])
                   + _num(app, "ip_exposed", s["ip_exposed"])
                   + "".join(_num(app, f"prevented.{k}", s["prevented"][k]) for k in PREVENTED_LABELS) + "</tr>")
    out.append("</table>")
    out.append("<h2>Decisions</h2><table><tr><th>app</th><th>decision</th><th>requests</th></tr>")
    for app, s in data["apps"].items():
        for decision, n in s["by_decision"].items():
            out.append(f"<tr><td>{esc(app)}</td><td>{esc(decision)}</td>{_num(app, 'decision.' + decision, n)}</tr>")
    out.append("</table><h2>Timeline</h2>" + _svg_timeline(bucket, points))
    out.append("<h2>Top sites</h2><table><tr><th>app</th><th>site</th><th>requests</th></tr>")
    for app, s in data["apps"].items():
        for top in s["top_sites"]:
            out.append(f"<tr><td>{esc(app)}</td><td>{esc(top['site'] or '-')}</td>"
                       f"<td class='n'>{top['requests']}</td></tr>")
    out.append("</table><h2>Decisions by rule</h2><table><tr><th>app</th><th>rule</th><th>decision</th>"
               "<th>requests</th></tr>")
    for app, rule, decision, n in by_rule(conn, since):
        out.append(f"<tr><td>{esc(app)}</td><td><code>{esc(rule)}</code></td><td>{esc(decision)}</td>"
                   f"<td class='n'>{n}</td></tr>")
    out.append("</table><p class='muted'>A leak is counted as prevented when the app's request carried it and the "
               "site did not receive it. URLs are kept at the audit's redaction level; see docs/audit.md.</p>")
    out.append("</body></html>\n")
    return "\n".join(out)
