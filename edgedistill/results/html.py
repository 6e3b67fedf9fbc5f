"""report.html: one self-contained page per run (plots embedded as PNG) to judge a run without tools.

Built only from files in the run dir (report.json, read once into results.report.Report, with selection.json's data
inside it; selected.npz, latency_samples.json, student.json), so `edgedistill report RUN_DIR` can rebuild it anywhere.
Figures use matplotlib's object API with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_text
from .plan import plan_html, plan_of
from .report import (
    Coverage,
    Report,
    Selection,
    Student,
    Target,
    Teacher,
    deployment_rows,
    device_label,
    exit_code,
    format_figure,
    gate_headline,
    gate_notes,
    recommendation_lines,
    throughput_rows,
    verdict_message,
)
from .selection import load_selection

GRID_CLASSES = 20
GRID_PER_CLASS = 8
POOL_COLOR, SELECTED_COLOR = "#9db4d6", "#1f5fa8"
PALETTE = ["#1f5fa8", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d", "#666666"]
SHOWN_FACTS = (
    "runtime",
    "version",
    "tensorrt",
    "precision",
    "device_model",
    "soc",
    "gpu",
    "l4t",
    "jetpack",
    "power_mode",
    "system",
    "processor",
    "cpus",
    "intra_op_threads",
    "ssh",
    "hostname",
    "note",
)


def _figure(width: float, height: float, **margins: float):
    """Fixed margins instead of constrained layout: the same look at half the drawing time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96)
    fig.subplots_adjust(
        **{
            "left": 0.8 / width,
            "right": 1 - 0.2 / width,
            "bottom": 0.75 / height,
            "top": 1 - 0.4 / height,
            "wspace": 0.3,
            "hspace": 0.7,
            **margins,
        }
    )
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def class_histogram(selection: Selection, class_names: list[str]) -> str:
    pool = np.asarray(selection.pool_predicted_per_class or [], dtype=float)
    chosen = np.asarray(selection.selected_per_class or [], dtype=float)
    k = max(len(pool), len(chosen))
    fig = _figure(max(6.0, min(16.0, 0.45 * k + 2)), 3.6)
    ax_pool, ax_sel = fig.subplots(1, 2)
    ticks = np.arange(k)
    for ax, values, color, title in (
        (ax_pool, pool, POOL_COLOR, f"pool: teacher's top class ({int(pool.sum()):,} images)"),
        (ax_sel, chosen, SELECTED_COLOR, f"selection ({int(chosen.sum()):,} images)"),
    ):
        ax.bar(ticks[: len(values)], values, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("images")
        if k <= 30:
            ax.set_xticks(ticks, class_names[:k], rotation=90 if max(map(len, class_names[:k] or [""])) > 3 else 0, fontsize=8)
    return _img(fig, "teacher-predicted class histogram of the pool and of the selection")


def selection_grid(npz: Path, class_names: list[str]) -> str | None:
    """One mosaic image (rows: classes, left to right: falling teacher confidence); one imshow keeps it fast."""
    selection = load_selection(npz)
    images, probs = selection.images, selection.probs
    if not len(images):
        return None
    top, confidence = probs.argmax(1), probs.max(1)
    classes = [c for c in range(probs.shape[1]) if (top == c).any()][:GRID_CLASSES]
    _, channels, height, width = images.shape
    pad = max(1, height // 14)
    cell_h, cell_w = height + pad, width + pad
    mosaic = np.full((len(classes) * cell_h + pad, GRID_PER_CLASS * cell_w + pad, 3), 255, np.uint8)
    for row, c in enumerate(classes):
        members = np.flatnonzero(top == c)
        for col, index in enumerate(members[np.argsort(-confidence[members])][:GRID_PER_CLASS]):
            image = images[index]
            rgb = np.repeat(image[:1], 3, 0) if channels == 1 else image[:3]
            y, x = pad + row * cell_h, pad + col * cell_w
            mosaic[y : y + height, x : x + width] = np.transpose(rgb, (1, 2, 0))
    labels = [class_names[c] if c < len(class_names) else str(c) for c in classes]
    width = 0.75 * GRID_PER_CLASS + 1.0 + 0.07 * max(map(len, labels))
    fig = _figure(width, 0.75 * len(classes) + 0.9, left=(0.75 + 0.07 * max(map(len, labels))) / width)
    ax = fig.subplots()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([pad + row * cell_h + height / 2 for row in range(len(classes))], labels, fontsize=9)
    ax.set_xticks([])
    ax.set_ylabel("teacher's class")
    ax.set_xlabel("most confident first")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _img(fig, "most confident selected pool images per class")


def learning_curves(history: list[dict]) -> str | None:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    scores = [k for k in ("agreement", "accuracy", "holdout_agreement") if k in history[0]]
    losses = [k for k in history[0] if k not in ("epoch", "lr", "train_seconds", *scores) and isinstance(history[0][k], (int, float))]
    fig = _figure(11, 3.6)
    ax_loss, ax_score = fig.subplots(1, 2)
    for i, key in enumerate(losses):
        ax_loss.plot(epochs, [h.get(key) for h in history], marker="o", color=PALETTE[i % len(PALETTE)], label=key)
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_loss.set_title("distillation loss (per-epoch mean)", fontsize=10)
    ax_loss.set_xlabel("epoch")
    ax_loss.legend(fontsize=8)
    for i, key in enumerate(scores):
        ax_score.plot(epochs, [h.get(key) for h in history], marker="o", color=PALETTE[i], label=key)
    ax_score.set_title("student on the eval set", fontsize=10)
    ax_score.set_xlabel("epoch")
    ax_score.set_ylim(0, 1.02)
    if scores:
        ax_score.legend(fontsize=8)
    return _img(fig, "learning curves")


def latency_histograms(targets: list[Target], samples: dict) -> str | None:
    measured = [t for t in targets if (samples.get(t.name) or {}).get("samples_ms")]
    if not measured:
        return None
    fig = _figure(11, 3.0 * len(measured), hspace=0.5)
    axes = fig.subplots(len(measured), 1, squeeze=False)
    for ax, target in zip((row[0] for row in axes), measured):
        values = np.asarray(samples[target.name]["samples_ms"])
        ax.hist(values, bins=min(60, max(10, len(values) // 4)), color=SELECTED_COLOR, alpha=0.85)
        # the figures the gate and every table use (median of the rounds'), else those of these samples (older reports)
        latency = target.latency
        if latency is not None and latency.pooled and latency.p99_ms is not None:
            p50, p99, rounds = latency.p50_ms, latency.p99_ms, f", median of {latency.rounds} rounds"
        else:
            (p50, p99), rounds = np.percentile(values, [50, 99]), ""
        ax.axvline(p50, color="#1b9e77", linestyle="--", label=f"p50 {p50:.4g} ms{rounds}")
        ax.axvline(p99, color="#d95f02", linestyle="--", label=f"p99 {p99:.4g} ms{rounds}")
        limit = target.budget.get("p99_ms")
        if limit is not None and limit <= 2 * values.max():
            ax.axvline(limit, color="#c00000", linewidth=2, label=f"p99 budget {limit:g} ms")
        elif limit is not None:
            ax.plot([], [], color="#c00000", linewidth=2, label=f"p99 budget {limit:g} ms (off scale)")
        ax.set_title(
            f"{target.name}: latency at batch {samples[target.name].get('batch', 1)} ({len(values)} runs) on {device_label(target)}",
            fontsize=10,
        )
        ax.set_xlabel("ms")
        ax.set_ylabel("runs")
        ax.legend(fontsize=8)
    return _img(fig, "latency histograms per target")


def _esc(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def _verdict_rows(report: Report) -> str:
    rows = []
    for t in report.targets:
        if t.error:
            budgets = ", ".join(t.budget) or "-"
            rows.append(
                f'<tr class="error"><td>{_esc(t.name)}</td><td>{_esc(budgets)}</td><td>-</td><td>-</td>'
                f"<td>unavailable: {_esc(t.error)}</td></tr>"
            )
        for v in t.verdicts:
            rows.append(
                f'<tr class="{v.verdict}"><td>{_esc(t.name)}</td><td>{_esc(v.budget)}</td>'
                f"<td>{_esc(format_figure(v.budget, v.measured))}</td><td>{_esc(format_figure(v.budget, v.limit))}</td>"
                f"<td>{_VERDICT_WORD[v.verdict]}: {_esc(verdict_message(v))}</td></tr>"
            )
        if not t.error and not t.verdicts:
            rows.append(f'<tr><td>{_esc(t.name)}</td><td colspan="4">no budgets set</td></tr>')
    if not report.targets:
        rows.append('<tr><td colspan="5">nothing gated: the recipe has no targets</td></tr>')
    for name, text, command in gate_notes(report):
        css = ' class="inconclusive"' if command else ""
        shown = _esc(text) + (f": <code>{_esc(command)}</code>" if command else "")
        rows.append(f'<tr{css}><td>{_esc(name)}</td><td colspan="4">{shown}</td></tr>')
    return "".join(rows)


_VERDICT_WORD = {"pass": "pass", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _deployment_rows(report: Report) -> str:
    """Teacher and student at each precision on each target, with speed-ups and the comparison against PyTorch."""
    facts_of = {t.name: t.facts for t in report.targets}
    rows = []
    for r in deployment_rows(report):
        facts = facts_of[r.target].as_dict() if r.gated and r.target in facts_of else {}
        shown = "; ".join(f"{k}: {facts[k]}" for k in SHOWN_FACTS if facts.get(k) not in (None, "", []))
        c = r.comparison
        versus = "-" if c is None else f"top-1 {c.top1_agreement or 0:.2%}, max |diff| {c.max_abs_diff or 0:.2g}"
        rate = "-" if r.throughput_per_s is None else f"{r.throughput_per_s:,.0f} (batch {r.throughput_batch})"
        times = lambda v: "-" if v is None else f"{v:.1f}x"
        size = "-" if r.bytes is None else f"{r.bytes / 1024:,.0f} KiB"
        css = ' class="error"' if r.error else (' class="teacher"' if r.model == "teacher" else "")
        rows.append(
            f"<tr{css}><td>{_esc(r.target)}</td><td>{_esc(r.model)} {_esc(r.precision)}"
            f"{' (gated)' if r.gated else ''}</td><td>{_esc(r.runtime)}</td><td>{_esc(r.device)}</td>"
            f"<td>{_percent(r.accuracy)}</td><td>{_percent(r.agreement)}</td>"
            f"<td>{_esc(format_figure('p50_ms', r.p50_ms))}</td><td>{_esc(format_figure('p99_ms', r.p99_ms))}</td>"
            f"<td>{rate}</td><td>{size}</td>"
            f"<td>{times(r.speedup)}</td><td>{times(r.throughput_speedup)}</td><td>{_esc(versus)}</td>"
            f'<td class="facts">{_esc(shown or r.error or "")}</td></tr>'
        )
    return (
        "<table><tr><th>target</th><th>model</th><th>runtime</th><th>device</th><th>accuracy</th><th>agreement</th>"
        "<th>p50</th><th>p99</th><th>images/s</th><th>size</th><th>speed-up (p50)</th><th>speed-up (images/s)</th>"
        f"<th>vs PyTorch student</th><th>facts</th></tr>{''.join(rows)}</table>"
    )


def _batch_sweep(targets: list[Target]) -> str:
    """Each gated model's latency and throughput per batch size."""
    rows = [
        f"<tr><td>{_esc(t.name)}</td><td>{b.batch}</td><td>{_esc(format_figure('p50_ms', b.p50_ms))}</td>"
        f"<td>{_esc(format_figure('p99_ms', b.p99_ms))}</td><td>{_esc(_rate(b.throughput_per_s))}</td></tr>"
        for t in targets
        for b in t.batch_sweep
    ]
    if not rows:
        return ""
    return (
        "<h2>Batch sizes</h2><table><tr><th>target</th><th>batch</th><th>p50</th><th>p99</th><th>images/s</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _coverage_table(coverage: list[Coverage], names: list[str]) -> str:
    """How well the pool covers each class, worst first, with what to do where it falls short."""
    order = {"poorly": 0, "thinly": 1, "well": 2}
    rows = []
    for c in sorted(coverage, key=lambda c: (order.get(c.level, 3), c.class_)):
        name = names[c.class_] if c.class_ < len(names) else c.class_
        rows.append(
            f'<tr class="covered-{_esc(c.level)}"><td>{_esc(name)}</td><td>{_esc(c.level)}</td>'
            f"<td>{c.selected:,} / {c.quota:,}</td><td>{c.mean_confidence:.2f}</td>"
            f"<td>{c.pool_predicted:,}</td><td>{_esc(c.advice or '')}</td></tr>"
        )
    return (
        "<table><tr><th>class</th><th>covered</th><th>selected / quota</th><th>teacher confidence</th>"
        f"<th>pool images it predicts</th><th>what to do</th></tr>{''.join(rows)}</table>"
    )


def _class_names(run_dir: Path, k: int) -> list[str]:
    try:
        names = json.loads((run_dir / "student.json").read_text()).get("class_names")
    except (OSError, json.JSONDecodeError):
        names = None
    return [str(n) for n in names] if names and len(names) >= k else [str(i) for i in range(k)]


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1150px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f2f4f7}tr.pass td:last-child{color:#116611}
tr.fail td,tr.error td,tr.covered-poorly td{background:#fde8e8}tr.covered-thinly td{background:#fff6e0}
tr.teacher td{color:#555}.warning{background:#fff3cd;border:1px solid #e0b400;padding:6px 10px}
td.facts{font-size:11px;color:#555;max-width:420px}img{max-width:100%;display:block;margin:6px 0}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;color:#fff;font-weight:600}
.v0{background:#1b7f3b}.v3{background:#c62828}.v4{background:#b26a00}.v5{background:#5e5e9e}.vnothing{background:#777}
tr.inconclusive td{background:#ececf8}.muted{color:#666;font-size:13px}
"""


def _kept(student: Student) -> str:
    if not student.kept_epoch or student.keep != "best":
        return ""
    return (
        f", the weights of epoch {student.kept_epoch} of {student.epochs}, chosen by teacher agreement on "
        "selected images it never trained on (no labels read)"
    )


def build_report_html(run_dir: Path) -> str:
    run_dir = Path(run_dir)
    report = Report.read(run_dir / "report.json")
    try:
        samples = json.loads((run_dir / "latency_samples.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        samples = {}
    targets = report.targets
    selection = report.selection or Selection()
    k = len(selection.pool_predicted_per_class or selection.selected_per_class or [])
    names = _class_names(run_dir, k)
    code = exit_code(report)
    verdict = gate_headline(report)
    teacher, student, evaluation, parity = report.teacher or Teacher(), report.student, report.eval, report.parity

    sections = [
        f"<h1>edgedistill report: {_esc(report.name)}</h1>",
        f'<p><span class="verdict v{"nothing" if verdict.startswith("nothing gated") else code}">{verdict} (exit {code})</span></p>',
    ]
    sections += [f'<p class="warning">Warning: {_esc(w)}</p>' for w in report.warnings]
    if student is not None:
        ran_in = f" (run in {_esc(teacher.runtime)})" if teacher.runtime else ""
        top1 = parity.top1_agreement if parity is not None else None
        max_diff = parity.max_abs_diff if parity is not None else None
        sections.append(
            f"<p>Student <b>{_esc(student.arch)}</b>: {student.parameters or 0:,} parameters, "
            f"{(student.onnx_bytes or 0) / 1024:.0f} KiB ONNX{_kept(student)}. Teacher <b>{_esc(teacher.arch)}</b>: "
            f"{teacher.parameters or 0:,} parameters, accuracy "
            f"{'-' if teacher.accuracy is None else format(teacher.accuracy, '.2%')}{ran_in}. "
            f"Eval set: {_esc(evaluation.name)} ({_esc(evaluation.samples)} images). "
            + (
                f"Feature loss: teacher layer <code>{_esc(teacher.feature_layer)}</code>, student layer "
                f"<code>{_esc(student.feature_layer)}</code>. "
                if teacher.feature_layer
                else ""
            )
            + f"ONNX vs PyTorch: top-1 agreement {_esc(top1)}, "
            f"max |diff| {_esc(None if max_diff is None else format(max_diff, '.2g'))}.</p>"
        )
    sections += [
        "<h2>Budgets</h2>",
        f"<table><tr><th>target</th><th>budget</th><th>measured</th><th>limit</th><th>verdict</th></tr>{_verdict_rows(report)}</table>",
        "<h2>Deployment</h2>",
        _deployment_rows(report),
        *[f"<p>Recommended: {_esc(line)}</p>" for line in recommendation_lines(report)],
        _batch_sweep(targets),
        plan_html(plan_of(report)),
    ]
    rates = throughput_rows(report)
    if rates:
        sections += [
            "<h2>Throughput</h2>",
            "<table><tr><th>stage</th><th>images/s</th><th>ceiling</th><th>ceiling images/s</th><th>ratio</th></tr>"
            + "".join(
                f"<tr><td>{stage}</td><td>{rate:,.0f}</td><td>{ceiling}</td><td>{bare:,.0f}</td><td>{ratio:.2f}</td></tr>"
                for stage, rate, ceiling, bare, ratio in rates
            )
            + "</table>",
        ]
    if selection.coverage:
        sections += ["<h2>Pool coverage</h2>", _coverage_table(selection.coverage, names)]
    plots = [
        ("Latency", lambda: latency_histograms(targets, samples)),
        ("Selection from the pool", lambda: class_histogram(selection, names) if k else None),
        (
            "Selected pool images (most confident per class)",
            lambda: selection_grid(run_dir / "selected.npz", names) if (run_dir / "selected.npz").is_file() else None,
        ),
        ("Learning curves", lambda: learning_curves(report.history)),
    ]
    for title, draw in plots:
        image = draw()
        sections.append(f"<h2>{_esc(title)}</h2>" + (image or '<p class="muted">no data in this run</p>'))
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgedistill: {_esc(report.name)}</title>'
        f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def write_report_html(run_dir: Path) -> Path:
    path = Path(run_dir) / "report.html"
    atomic_write_text(path, build_report_html(run_dir))
    return path
