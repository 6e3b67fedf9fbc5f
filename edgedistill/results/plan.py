"""The plan's candidates table for the terminal, markdown (plan.md, summary.md) and HTML (plan.html, report.html), with
the latency-versus-agreement plot; all from the plan dict (plan.json, or report.json's `plan`)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ..atomic import atomic_write_text

FITS = {"fit": "fits", "miss": "misses", "inconclusive": "inconclusive", "unmeasured": "not measured"}
FIT_MARK = {"fit": "✅", "miss": "❌", "inconclusive": "❔", "unmeasured": "⚠️"}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _latency_cell(t: dict) -> tuple[str, str]:
    """(p50, p99 with its interval across rounds) of one candidate on one target."""
    if t.get("error"):
        return "error", "error"
    lat = t.get("latency") or {}
    interval = lat.get("p99_interval")
    p99 = _ms(lat.get("p99_ms")) + (f" [{_ms(interval[0])}-{_ms(interval[1])}]" if interval else "")
    return _ms(lat.get("p50_ms")), p99


def _agreement(row: dict) -> str:
    return "-" if row.get("probe_agreement") is None else f"{row['probe_agreement']:.1%}"


def plan_rows(plan: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the candidates table: architecture, parameters, MFLOPs, p50 and p99 (with its interval)
    per target and precision, fits, probe agreement, chosen."""
    header = ["candidate", "params", "MFLOPs"]
    for t in plan["targets"]:
        label = f"{t['name']} {t['precision']}"
        header += [f"{label} p50 ms", f"{label} p99 ms"]
    header += ["fits", "agree", "chosen"]
    rows = []
    for row in plan["candidates"]:
        cells = [row["arch"], f"{row['parameters']:,}", "-" if row.get("mflops") is None else f"{row['mflops']:.3g}"]
        for t in row["targets"]:
            cells += list(_latency_cell(t))
        cells += [FITS[row["fits"]], _agreement(row), "chosen" if row.get("chosen") else ""]
        rows.append(cells)
    return header, rows


def budget_line(plan: dict) -> str:
    parts = []
    for t in plan["targets"]:
        budget = ", ".join(f"{k} {v:g}" for k, v in t["budget"].items()) or "no latency budget"
        parts.append(f"{t['name']} ({t['runtime']} {t['precision']}): {budget}")
    return "; ".join(parts)


def plan_lines(plan: dict) -> list[str]:
    """The lines under the table: budgets, cache use, the choice and why, or the nearest misses and their fixes."""
    c = plan.get("cache") or {}
    lines = [
        f"budgets: {budget_line(plan)}",
        f"latency cache: {c.get('hits', 0)} hit(s), {c.get('misses', 0)} timed ({c.get('path')})",
    ]
    if plan.get("chosen"):
        lines.append(f"chosen: {plan['chosen']['arch']}: {plan['why']}")
    else:
        lines.append(f"no student chosen: {plan.get('why')}")
        for miss in plan.get("near_misses") or []:
            over = f", {miss['over_by']:.0%} over" if miss.get("over_by") is not None else ""
            lines.append(f"nearest: {miss['arch']} ({FITS[miss['fits']]}{over}): {'; '.join(miss['fixes'])}")
    return lines


def plan_table(plan: dict, title: str | None = None):
    """The candidates table as a rich Table, for the terminal."""
    from rich import box
    from rich.table import Table

    header, rows = plan_rows(plan)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in header:
        table.add_column(col, justify="left" if col == "candidate" else "right", no_wrap=True)
    for row, cells in zip(plan["candidates"], rows):
        table.add_row(*cells, style="bold" if row.get("chosen") else None)
    return table


def print_plan(console, plan: dict | None) -> None:
    """The plan's table and lines on a rich console; nothing for a run without a plan."""
    if not plan:
        return
    input_ = "x".join(str(v) for v in plan["input"])
    console.print(
        plan_table(plan, f"plan: {len(plan['candidates'])} candidates for {plan['teacher']} ({input_}, {plan['classes']} classes)")
    )
    for line in plan_lines(plan):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def plan_markdown(plan: dict | None) -> str:
    """The plan as a markdown section (summary.md, plan.md); empty for a run without a plan."""
    if not plan:
        return ""
    header, rows = plan_rows(plan)
    marks = [FIT_MARK[row["fits"]] + " " + cells[-3] for row, cells in zip(plan["candidates"], rows)]
    text = ["## Choose the student", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, cells, mark in zip(plan["candidates"], rows, marks):
        shown = [f"**{c}**" if row.get("chosen") and c else c for c in cells[:-3]] + [
            mark,
            cells[-2],
            "**chosen**" if row.get("chosen") else "",
        ]
        text.append("| " + " | ".join(shown) + " |")
    text.append("")
    text += [f"- {line}" for line in plan_lines(plan)]
    return "\n".join(text) + "\n"


def agreement_plot(plan: dict | None) -> str | None:
    """Latency (the first target's first latency budget's figure, else its p99) against probe agreement, the budget
    as a vertical line; an <img> tag, or None when no candidate was probed."""
    if not plan or not plan["targets"]:
        return None
    target = plan["targets"][0]
    figure = next(iter(target["budget"]), "p99_ms")
    points = []
    for row in plan["candidates"]:
        t = row["targets"][0]
        value = (t.get("latency") or {}).get(figure)
        if value is not None and row.get("probe_agreement") is not None:
            points.append((value, row["probe_agreement"], row["arch"], row.get("chosen")))
    if not points:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6), dpi=96)
    ax = fig.add_subplot(1, 1, 1)
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.15, top=0.9)
    for x, y, name, chosen in points:
        ax.scatter([x], [y], color="#d95f02" if chosen else "#1f5fa8", s=40, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    limit = target["budget"].get(figure)
    if limit is not None:
        ax.axvline(limit, color="#b22222", linestyle="--", label=f"budget {figure} {limit:g} ms")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel(f"{figure.replace('_ms', '')} latency on {target['name']} ({target['precision']}), ms")
    ax.set_ylabel("probe agreement with teacher")
    ax.set_title("fitting candidates probed: latency vs agreement", fontsize=10)
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="latency versus probe agreement" src="data:image/png;base64,{data}">'


def plan_html(plan: dict | None) -> str:
    """The plan as an HTML section (report.html, plan.html): table, lines, plot; empty for a run without a plan."""
    if not plan:
        return ""
    header, rows = plan_rows(plan)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        ("<tr style='font-weight:bold'>" if row.get("chosen") else "<tr>") + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for row, cells in zip(plan["candidates"], rows)
    )
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in plan_lines(plan))
    plot = agreement_plot(plan) or '<p class="muted">no candidate was probed</p>'
    return f"<h2>Choose the student</h2><table><tr>{head}</tr>{body}</table>{lines}{plot}"


def plan_page(plan: dict, name: str) -> str:
    """plan.html: the plan alone, for `edgedistill plan` (no validation, so no report.html)."""
    style = "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgedistill plan: {html.escape(name)}</title>'
        f"<style>{style}</style></head><body>\n<h1>edgedistill plan: {html.escape(name)}</h1>{plan_html(plan)}\n</body></html>\n"
    )


PLAN_PAGES = ("plan.md", "plan.html")


def write_plan_files(directory: Path, plan: dict, name: str) -> None:
    """plan.md and plan.html beside plan.json: what `edgedistill plan` leaves for a CI job page."""
    atomic_write_text(Path(directory) / "plan.md", f"# edgedistill plan: {name}\n\n" + plan_markdown(plan))
    atomic_write_text(Path(directory) / "plan.html", plan_page(plan, name))


def plan_of(report: object) -> dict | None:
    """The plan section of a report: report.json's dict, or the Report model a reader validated it into (where
    `plan` is an extra key); None for a run without candidates."""
    if isinstance(report, dict):
        plan = report.get("plan")
    else:
        plan = getattr(report, "plan", None)
        if plan is None:
            plan = (getattr(report, "model_extra", None) or {}).get("plan")
    return plan.model_dump() if hasattr(plan, "model_dump") else plan
