"""A matrix run's report as one self-contained HTML file (no CDN, no script: opens offline and
in a mail attachment): a summary table, then per point its verdicts and, per judged metric, a
plot of its series (matplotlib, inline SVG) with the baseline band, the change points and
tonight's samples marked, and the environment of the compared runs.

Rendered by the client from the JSON report (``fleet matrix report --format html``): the
server needs no plotting library."""

from __future__ import annotations

import html
import io
from typing import Any

from fleet.models.matrix import point_label

_COLOURS = {"regression": "#c62828", "improvement": "#2e7d32", "invalid": "#6a1b9a",
            "missing": "#ef6c00", "not_enough_samples": "#616161", "unchanged": "#37474f",
            "skipped": "#9e9e9e"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#212121;max-width:1100px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 6px;border-top:1px solid #ddd;padding-top:14px}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5} .tag{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-size:12px}
.meta{color:#616161} .note{color:#5d4037} svg{max-width:100%;height:auto} code{font-size:12px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _tag(status: str) -> str:
    return f'<span class="tag" style="background:{_COLOURS.get(status, "#455a64")}">{_e(status.replace("_", " "))}</span>'


def _num(value: Any, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


def plot(metric: str, m: dict[str, Any]) -> str:
    """The series of one metric as an inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    series = m.get("series") or []
    if not series:
        return ""
    fig = Figure(figsize=(7.5, 2.6), dpi=96)
    ax = fig.add_subplot()
    xs = list(range(len(series)))
    index = {p["run"]: i for i, p in enumerate(series)}
    band = m.get("baseline_band")
    if band:
        ax.axhspan(band[0], band[1], color="#90caf9", alpha=0.35, lw=0, label="baseline (5-95%)")
    for i, p in enumerate(series):
        colour = "#9e9e9e" if p["invalid"] else ("#c62828" if i == len(series) - 1 and
                                                 m.get("status") == "regression" else "#1565c0")
        if p["samples"]:
            ax.scatter([i] * len(p["samples"]), p["samples"], s=9, color=colour, alpha=0.55, lw=0)
    med = [(i, p["median"]) for i, p in enumerate(series) if p["median"] is not None and not p["invalid"]]
    if med:
        ax.plot([i for i, _ in med], [v for _, v in med], color="#0d47a1", lw=1.2, label="run median")
    for run in m.get("change_points") or []:
        if run in index:
            ax.axvline(index[run] - 0.5, color="#ef6c00", ls="--", lw=1)
    if m.get("first_run") in index and m.get("status") in ("regression", "improvement"):
        ax.axvline(index[m["first_run"]] - 0.5, color=_COLOURS[m["status"]], lw=1.6,
                   label=f"{m['status']} from here")
    ax.set_xticks(xs[-12:] if len(xs) > 12 else xs)
    ax.set_xticklabels([series[i]["run"][-6:] for i in (xs[-12:] if len(xs) > 12 else xs)],
                       fontsize=7, rotation=30)
    ax.set_ylabel(metric, fontsize=8, parse_math=False)  # a name with $...$ is text, not TeX
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _flat(env: dict[str, Any]) -> dict[str, Any]:
    rows: dict[str, Any] = {"hosts": ", ".join(env.get("hosts") or []),
                            "tool": f"{env.get('tool')} {env.get('tool_version')}"}
    rows.update((k, v) for k, v in sorted((env.get("environment") or {}).items())
                if not isinstance(v, (dict, list)))
    return rows


def _environments(env: dict[str, Any], base: dict[str, Any]) -> str:
    """This run's environment beside the newest earlier run's; differences marked."""
    now, before = _flat(env), _flat(base) if base else {}
    head = "<tr><th></th><th>this run</th>" + (f"<th>compared with {_e(base.get('run'))}</th>" if base else "") + "</tr>"
    rows = []
    for k in list(now) + [k for k in before if k not in now]:
        differs = bool(base) and now.get(k) != before.get(k)
        style = ' style="background:#fff3e0"' if differs else ""
        cells = f"<td>{_e(now.get(k, ''))}</td>" + (f"<td>{_e(before.get(k, ''))}</td>" if base else "")
        rows.append(f"<tr{style}><th>{_e(k)}</th>{cells}</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def render(report: dict[str, Any]) -> str:
    s = report["summary"]
    out = ["<!doctype html><html lang=en><head><meta charset=utf-8>",
           f"<title>fleet matrix {_e(report['name'])} {_e(report['id'])}</title><style>{_CSS}</style></head><body>",
           f"<h1>fleet matrix {_e(report['name'])}: run {_e(report['id'])}</h1>",
           f"<div class=meta>{_e(report['state'])}, by {_e(report['user'])}; points: "
           + ", ".join(f"{v} {_e(k)}" for k, v in report["progress"].items()) + "</div>",
           "<h2>Summary</h2><table><tr>"
           + "".join(f"<th>{_tag(k)}</th>" for k in s) + "</tr><tr>"
           + "".join(f"<td>{v}</td>" for v in s.values()) + "</tr></table>",
           "<table><tr><th>point</th><th>verdict</th><th>what</th></tr>"]
    for p in report["points"]:
        label = point_label(p["values"])
        what = "; ".join(f"{k} {d['change_pct']:+.1f}%" for k, d in p["metrics"].items()
                         if d.get("status") in ("regression", "improvement") and d.get("change_pct") is not None)
        out.append(f'<tr><td><a href="#p{p["index"]}">{_e(label)}</a></td><td>{_tag(p["verdict"])}</td>'
                   f"<td>{_e(what or (p['notes'][0] if p['notes'] else ''))}</td></tr>")
    out.append("</table>")
    for p in report["points"]:
        label = point_label(p["values"])
        out.append(f'<h2 id="p{p["index"]}">{_e(label)} {_tag(p["verdict"])}</h2>')
        for note in p["notes"]:
            out.append(f"<div class=note>{_e(note)}</div>")
        for name, m in p["metrics"].items():
            out.append(f"<h3>{_e(name)} {_tag(m.get('status', '?'))}</h3>")
            out.append(f"<div>{_e(m.get('reason') or '')}</div>")
            if m.get("status") in ("regression", "improvement"):
                ci = m.get("ci_pct") or [None, None]
                out.append(f"<div>before {_num(m.get('before'))} &rarr; after {_num(m.get('after'))} "
                           f"({_num(m.get('change_pct'), '+.1f')}%, 95% CI {_num(ci[0], '+.1f')}.."
                           f"{_num(ci[1], '+.1f')}%), {_e(m.get('kind') or '')} from run "
                           f"<code>{_e(m.get('first_run'))}</code>; baseline runs "
                           + ", ".join(f"<code>{_e(r)}</code>" for r in m.get("baseline_runs") or []) + "</div>")
                for c in m.get("changes") or []:
                    out.append(f"<div class=note>changed: {_e(c)}</div>")
            if m.get("series"):
                out.append(plot(name, m))
        env, base = p.get("environment") or {}, p.get("baseline_environment") or {}
        if env:
            out.append(_environments(env, base))
        if p.get("comparison_key"):
            out.append(f"<div class=meta>comparison key <code>{_e(p['comparison_key'])}</code></div>")
    out.append("</body></html>")
    return "\n".join(out)
