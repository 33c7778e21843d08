"""The HTML pages of `simulate --out` and `report --out`: one self-contained file each.

Charts are plotly figures; plotly.js is inlined once per page (about 4.8 MB, the price of a
file that opens with no network, mailed or attached to a ticket). Every chart div carries a
`data-chart` name so a test (and a reader's browser tools) can find it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import plotly.graph_objects as go  # type: ignore[import-untyped]
from plotly.offline import get_plotlyjs  # type: ignore[import-untyped]

BASELINE = "#8c9bb0"
CANDIDATE = "#2f6fdf"
PALETTE = ["#2f6fdf", "#e07b39", "#3aa67a", "#c94c6a", "#8a63d2", "#c9a227", "#4bb4c9",
           "#7d8597"]

_STYLE = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2430; background: #f5f7fa; }
header { background: #1d2430; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; color: #b8c2d0; }
main { padding: 16px 32px 48px; max-width: 1280px; }
.tiles { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 20px; }
.tile { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 150px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.tile b { display: block; font-size: 24px; }
.tile span { color: #5b6677; font-size: 13px; }
/* auto-fill, not auto-fit: plotly sizes each chart when its own script runs, while the page is
   still parsing; auto-fit collapses the empty tracks, so the first chart was drawn full width
   and then overflowed its column once the second card arrived */
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 16px; }
.card { background: #fff; border-radius: 8px; padding: 8px 12px; min-width: 0; overflow: hidden;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.flags { background: #fff4e5; border-left: 4px solid #e07b39; padding: 8px 16px;
         border-radius: 4px; margin-bottom: 16px; }
.ok { background: #e9f7ef; border-left: 4px solid #3aa67a; padding: 8px 16px; border-radius: 4px;
      margin-bottom: 16px; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #e3e7ee;
         vertical-align: top; }
th { background: #eef1f6; }
.notes { color: #5b6677; font-size: 13px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _chart(name: str, fig: go.Figure, height: int = 360) -> str:
    fig.update_layout(height=height, margin={"l": 50, "r": 20, "t": 48, "b": 40},
                      paper_bgcolor="#fff", plot_bgcolor="#fff",
                      font={"family": "-apple-system, Segoe UI, Roboto, sans-serif"},
                      legend={"orientation": "h", "y": -0.15})
    div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"chart-{name}",
                      config={"displaylogo": False, "responsive": True})
    return f'<div class="card" data-chart="{_e(name)}">{div}</div>'


def _tiles(items: Iterable[tuple[str, Any]]) -> str:
    return '<div class="tiles">' + "".join(
        f'<div class="tile"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in items
    ) + "</div>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# once the layout is final, fit every chart to its card (the grid may have moved since it drew)
_RESIZE = ("<script>window.addEventListener('load', () => document.querySelectorAll("
           "'.js-plotly-plot').forEach(p => Plotly.Plots.resize(p)));</script>")


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>"
        f"<main>{body}</main>{_RESIZE}</body></html>"
    )


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _span(rng: dict[str, Any]) -> str:
    return f"{rng.get('from') or 'the beginning'} to {rng.get('to') or 'now'}"


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def report_page(r: dict[str, Any]) -> str:
    waiting = r["assigned"] - r["accepted"] - r["rejected"]
    parts = [_tiles([
        ("SQLs", r["sql"]), ("MQL -> SQL", _pct(r["mql_to_sql_rate"])),
        # a low acceptance rate in a young week is mostly leads sales has not judged yet
        (f"acceptance ({r['accepted']} of {r['assigned']} assigned; {waiting} without a"
         " verdict yet)", _pct(r["acceptance_rate"])),
        ("rejection rate", _pct(r["rejection_rate"])),
        ("speed to lead p50", _seconds(r["first_touch_p50_seconds"])),
        ("SLA breach rate", _pct(r["sla_breach_rate"])),
    ])]
    if r["flags"]:
        parts.append('<div class="flags"><b>Diagnostics crossed</b><ul>' + "".join(
            f"<li>{_e(f['message'])}</li>" for f in r["flags"]) + "</ul></div>")
    else:
        parts.append('<div class="ok">No published diagnostic is crossed.</div>')
    charts = []

    funnel = go.Figure(go.Funnel(
        y=["MQL", "SQL", "assigned", "accepted"],
        x=[r["mql"], r["sql"], r["assigned"], r["accepted"]],
        textinfo="value", marker={"color": PALETTE[:4]}))
    funnel.update_layout(title="Funnel")
    charts.append(_chart("funnel", funnel))

    reasons = r["rejections_by_reason"]
    mix = go.Figure(go.Bar(x=list(reasons.values()), y=list(reasons.keys()), orientation="h",
                           marker={"color": PALETTE[1]}))
    mix.update_layout(title=f"Rejection reasons ({r['rejected']} rejections)",
                      yaxis={"autorange": "reversed"},
                      xaxis={"tickformat": ",d", "rangemode": "tozero",
                             **({"dtick": 1} if max(reasons.values(), default=0) <= 10 else {})})
    charts.append(_chart("reasons", mix))

    speed = go.Figure()
    samples = r["first_touch_samples_by_pool"]
    unit, per = _unit(max((v for values in samples.values() for v in values), default=0.0))
    for i, (pool, values) in enumerate(samples.items()):
        speed.add_trace(go.Box(y=[v / per for v in values], name=pool, boxpoints="all",
                               jitter=0.4, marker={"color": PALETTE[i % len(PALETTE)]}))
    speed.update_layout(title=f"Speed to lead by pool ({unit} to first touch)",
                        yaxis={"title": unit, "rangemode": "tozero"}, showlegend=False)
    charts.append(_chart("speed", speed))

    breach = r["sla_breach_rate_by"]["pool"]
    sla = go.Figure(go.Bar(x=list(breach.keys()), y=[v["rate"] or 0 for v in breach.values()],
                           marker={"color": PALETTE[3]}, name="breach rate"))
    sla.add_hline(y=r["sla_escalation_line"], line_dash="dash", line_color="#1d2430",
                  annotation_text="escalation line")
    sla.update_layout(title="SLA breach rate by pool", yaxis={"tickformat": ".0%"})
    charts.append(_chart("sla", sla))

    trend = go.Figure()
    days = [row["day"] for row in r["trend"]]
    # a line needs days to join: a range of a day or three reads better as grouped bars
    as_bars = len(days) < 4
    for i, column in enumerate(("mql", "sql", "assigned", "accepted", "rejected",
                                "sla_breached")):
        color = PALETTE[i % len(PALETTE)]
        ys = [row[column] for row in r["trend"]]
        trend.add_trace(go.Bar(x=days, y=ys, name=column, marker={"color": color}) if as_bars
                        else go.Scatter(x=days, y=ys, mode="lines+markers", name=column,
                                        line={"color": color}))
    trend.update_layout(title="Per day", xaxis={"type": "category"},
                        barmode="group")
    charts.append(_chart("trend", trend))
    parts.append('<div class="grid">' + "".join(charts) + "</div>")

    parts.append("<h2>SQLs by path, pool, channel and campaign</h2>")
    rows: list[tuple[str, str, Any]] = []
    for name, counts in (("path", r["sql_by_path"]), ("pool", r["sql_by_pool"]),
                         ("channel (first touch)", r["sql_by_channel"]["first_touch"]),
                         ("channel (trigger)", r["sql_by_channel"]["trigger"]),
                         ("campaign (first touch)", r["sql_by_campaign"]["first_touch"]),
                         ("campaign (trigger)", r["sql_by_campaign"]["trigger"])):
        rows += [(name, k, v) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    parts.append(_table(("by", "value", "SQLs"), rows))
    parts.append("<h2>Speed to lead and SLA breaches</h2>")
    srows = []
    for group in ("class", "pool", "rep"):
        speeds = r["first_touch_seconds"][f"by_{group}"]
        for name, row in r["sla_breach_rate_by"][group].items():
            s = speeds.get(name, {})
            srows.append((group, name, _seconds(s.get("p50")), _seconds(s.get("p90")),
                          row["met"], row["breached"], _pct(row["rate"])))
    parts.append(_table(("by", "name", "first touch p50", "p90", "met", "breached",
                         "breach rate"), srows))
    parts.append('<p class="notes">First touch by class and pool: from the lead\'s first'
                 " assignment, how long the lead waited. By rep: from that rep's own"
                 " assignment, so a rep who took over after someone else's breach is not"
                 " charged with the wait before.</p>")
    q = r["queue"]
    parts.append(f"<p>Queue: {q['queued']} queued, {q['still_queued']} still queued; time in"
                 f" queue p50 {_seconds(q['seconds_p50'])}, p90 {_seconds(q['seconds_p90'])},"
                 f" max {_seconds(q['seconds_max'])}.</p>")
    return _page("leadrouter weekly review", f"{_span(r['range'])} · {r.get('source', '')}",
                 "".join(parts))


def _unit(largest: float) -> tuple[str, float]:
    """The axis unit for durations up to `largest` seconds: a demo's answers come in
    seconds, a real week's in minutes or hours."""
    if largest < 180:
        return "seconds", 1.0
    if largest < 3 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def _reasons(by_reason: dict[str, int]) -> str:
    return f" ({', '.join(f'{k} {v}' for k, v in by_reason.items())})" if by_reason else ""


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


# --------------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------------


def _pair(name: str, title: str, labels: Sequence[str], b: Sequence[float],
          c: Sequence[float]) -> str:
    fig = go.Figure([go.Bar(name="baseline", x=list(labels), y=list(b),
                            marker={"color": BASELINE}),
                     go.Bar(name="candidate", x=list(labels), y=list(c),
                            marker={"color": CANDIDATE})])
    fig.update_layout(title=title, barmode="group")
    return _chart(name, fig)


def simulate_page(s: dict[str, Any]) -> str:
    b, c = s["baseline"], s["candidate"]
    d = s["changed_by_direction"]
    parts = [_tiles([
        ("SQL baseline -> candidate", f"{b['sql']} -> {c['sql']}"),
        ("MQL baseline -> candidate", f"{b['mql']} -> {c['mql']}"),
        ("leads whose outcome changes", s["changed"]),
        ("SQLs added / dropped", f"{d['sql_added']} / {d['sql_dropped']}"),
        ("queued baseline -> candidate", f"{b['queued']} -> {c['queued']}"),
        ("replay speed", f"{s['replay']['events_per_second']:,} ev/s"),
    ])]
    charts = []
    paths = sorted(set(b["sql_by_path"]) | set(c["sql_by_path"]))
    labels = ["MQL", "SQL", *[f"SQL {p}" for p in paths]]
    charts.append(_pair("stages", "MQLs and SQLs", labels,
                        [b["mql"], b["sql"], *[b["sql_by_path"].get(p, 0) for p in paths]],
                        [c["mql"], c["sql"], *[c["sql_by_path"].get(p, 0) for p in paths]]))
    pools = sorted(set(b["assigned_by_pool"]) | set(c["assigned_by_pool"]))
    charts.append(_pair("pools", "Assignments per pool", pools,
                        [b["assigned_by_pool"].get(p, 0) for p in pools],
                        [c["assigned_by_pool"].get(p, 0) for p in pools]))
    reps = sorted(set(b["peak_open_by_rep"]) | set(c["peak_open_by_rep"]))
    load = go.Figure([
        go.Bar(name="baseline peak open", x=reps, marker={"color": BASELINE},
               y=[b["peak_open_by_rep"].get(r, {}).get("peak_open", 0) for r in reps]),
        go.Bar(name="candidate peak open", x=reps, marker={"color": CANDIDATE},
               y=[c["peak_open_by_rep"].get(r, {}).get("peak_open", 0) for r in reps]),
        go.Scatter(name="capacity (max_open_leads)", x=reps, mode="markers",
                   marker={"symbol": "line-ew-open", "size": 28, "color": "#c94c6a",
                           "line": {"width": 3}},
                   y=[(c["peak_open_by_rep"].get(r) or b["peak_open_by_rep"].get(r) or {})
                      .get("max_open_leads") for r in reps]),
    ])
    load.update_layout(title="Peak open leads per rep against capacity", barmode="group")
    charts.append(_chart("capacity", load))
    evidence = s["sales_evidence"]
    verdicts = ["accepted", "converted", "rejected", "disqualified", "released", "no_verdict"]
    judged = go.Figure([
        go.Bar(name=v, x=["SQLs the candidate adds", "SQLs the candidate drops"],
               y=[evidence["sql_added"][v], evidence["sql_dropped"][v]],
               marker={"color": PALETTE[i % len(PALETTE)]})
        for i, v in enumerate(verdicts)])
    judged.update_layout(title="How sales judged those leads in the history", barmode="stack")
    charts.append(_chart("evidence", judged))
    funnel = go.Figure([
        go.Funnel(name="baseline", y=["MQL", "SQL", "assigned"],
                  x=[b["mql"], b["sql"], sum(b["assigned_by_pool"].values())],
                  marker={"color": BASELINE}),
        go.Funnel(name="candidate", y=["MQL", "SQL", "assigned"],
                  x=[c["mql"], c["sql"], sum(c["assigned_by_pool"].values())],
                  marker={"color": CANDIDATE})])
    funnel.update_layout(title="Funnel")
    charts.append(_chart("funnel", funnel))
    parts.append('<div class="grid">' + "".join(charts) + "</div>")
    parts.append("<h2>Leads whose outcome changes (sample)</h2>")
    parts.append(_table(("lead", "baseline", "candidate", "sales in history", "why"), (
        (row["lead_id"], row["baseline_stage"], row["candidate_stage"],
         row["sales_judgement"], "; ".join(row["why"])) for row in s["changed_leads"])))
    for side, label in (("sql_dropped", "dropped"), ("sql_added", "added")):
        e = evidence[side]
        parts.append(f"<p>SQLs {label}: {e['leads']} leads; accepted {e['accepted']}, converted"
                     f" {e['converted']}, rejected {e['rejected']}"
                     f"{_e(_reasons(e['rejected_by_reason']))}, no verdict"
                     f" {e['no_verdict']}.</p>")
    parts.append('<div class="notes"><ul>' + "".join(
        f"<li>{_e(n)}</li>" for n in s["notes"]) + "</ul></div>")
    subtitle = (f"{_span(s['range'])} · baseline {b['rules_version']} · candidate"
                f" {c['rules_version']} · {s['history']['events']:,} events")
    return _page("leadrouter simulate", subtitle, "".join(parts))
