"""The CI gate files: JUnit XML for test reporters, a markdown table for job summaries.

Both are read from report.json (validated once into results.report.Report, then read by attribute), so
`edgedistill report RUN_DIR` and a re-gated run write the same files a full `compress` does.
"""

from __future__ import annotations

import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from ..atomic import atomic_write_text
from .plan import plan_markdown, plan_of
from .report import (
    EXIT_BUDGET_FAILED,
    EXIT_INCONCLUSIVE,
    EXIT_PASSED,
    EXIT_TARGET_UNAVAILABLE,
    Report,
    Teacher,
    as_report,
    deployment_rows,
    exit_code,
    format_figure,
    gate_headline,
    gate_notes,
    recommendation_lines,
    target_verdict,
    throughput_rows,
    verdict_message,
)

_JUNIT_KIND = {"pass": None, "fail": "failure", "inconclusive": "skipped"}
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: object) -> str:
    return _XML_ILLEGAL.sub("?", str(text))


def junit_xml(report: Report | dict) -> str:
    """One testcase per target and budget (classname = target): failed budgets are <failure>, unmeasured ones <error>,
    inconclusive ones <skipped> (the gate could not tell); a report without targets is one skipped testcase."""
    r = as_report(report)
    cases = []
    for target in r.targets:
        budgets = list(target.budget)
        if target.error:
            cases += [(target.name, name, "error", target.error) for name in budgets or ["available"]]
        elif not target.verdicts:
            cases.append((target.name, "available", None, "measured; no budgets set"))
        else:
            cases += [(target.name, v.budget, _JUNIT_KIND[v.verdict], verdict_message(v)) for v in target.verdicts]
    if not r.targets:
        cases.append(("edgedistill", "gate", "skipped", "nothing gated: the recipe has no targets"))
    failures = sum(kind == "failure" for *_, kind, _ in cases)
    errors = sum(kind == "error" for *_, kind, _ in cases)
    skipped = sum(kind == "skipped" for *_, kind, _ in cases)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    root = ET.Element("testsuites", name="edgedistill", tests=str(len(cases)), failures=str(failures), errors=str(errors), time="0")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=_clean(f"edgedistill {r.name}"),
        tests=str(len(cases)),
        failures=str(failures),
        errors=str(errors),
        skipped=str(skipped),
        time="0",
        timestamp=stamp,
    )
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("eval", r.eval.name),
        ("student", r.student.arch if r.student else None),
        ("teacher", r.teacher.arch if r.teacher else None),
        ("exit_code", exit_code(r)),
        ("schema_version", r.schema_version),
    ):
        ET.SubElement(properties, "property", name=key, value=_clean(value))
    for classname, name, kind, message in cases:
        case = ET.SubElement(suite, "testcase", classname=_clean(classname), name=_clean(name), time="0")
        if kind == "failure":
            ET.SubElement(case, "failure", message=_clean(message), type="BudgetFailed").text = _clean(message)
        elif kind == "error":
            ET.SubElement(case, "error", message=_clean(message), type="TargetUnavailable").text = _clean(message)
        elif kind == "skipped":
            ET.SubElement(case, "skipped", message=_clean(message)).text = _clean(message)
        else:
            ET.SubElement(case, "system-out").text = _clean(message)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


_HEADLINE_MARK = {EXIT_PASSED: "✅", EXIT_BUDGET_FAILED: "❌", EXIT_TARGET_UNAVAILABLE: "⚠️", EXIT_INCONCLUSIVE: "❔"}
_VERDICT_MARK = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "❔ inconclusive"}


def _gate_notes(report: Report) -> list[str]:
    """What an inconclusive verdict or a noisy measurement means, and how to retry, under the budget table."""
    notes = [
        f"{'❔' if command else '~'} {_cell(name)}: {_cell(text)}" + (f": `{_cell(command)}`" if command else "")
        for name, text, command in gate_notes(report)
    ]
    return ["", *notes] if notes else []


_VERDICT_CELL = {**_VERDICT_MARK, "unavailable": "⚠️ unavailable", "no budgets": "no budgets"}


def _kib(value: int | None) -> str:
    return "-" if value is None else f"{value / 1024:,.0f} KiB"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def summary_markdown(report: Report | dict) -> str:
    """A table for $GITHUB_STEP_SUMMARY (or any CI job page that renders markdown)."""
    r = as_report(report)
    code = exit_code(r)
    words = gate_headline(r)
    headline = f"{'➖' if words.startswith('nothing gated') else _HEADLINE_MARK[code]} {words}"
    teacher, student, evaluation = r.teacher or Teacher(), r.student, r.eval
    lines = [f"### edgedistill `{_cell(r.name)}`: {headline} (exit {code})", ""]
    if student is not None:
        lines += [
            f"Student `{_cell(student.arch)}`: {student.parameters or 0:,} parameters, "
            f"{(student.onnx_bytes or 0) / 1024:.0f} KiB ONNX. Teacher `{_cell(teacher.arch)}`: "
            f"{teacher.parameters or 0:,} parameters, accuracy {_percent(teacher.accuracy)}. "
            f"Eval set: {_cell(evaluation.name)} ({evaluation.samples} images"
            f"{', labeled' if evaluation.labeled else ', teacher agreement only'}).",
            "",
        ]
    gated = {t.name: t for t in r.targets}
    lines += [
        "| target | device | model | runtime | accuracy | agreement | p50 ms | p99 ms | images/s | size | speed-up | result |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for row in deployment_rows(r):
        if row.gated:
            result = _VERDICT_CELL[target_verdict(gated[row.target]) if row.target in gated else "no budgets"]
        else:
            result = "⚠️ not measured" if row.error else "not gated"
        rate = "-" if row.throughput_per_s is None else f"{row.throughput_per_s:,.0f} (batch {row.throughput_batch})"
        lines.append(
            f"| {_cell(row.target)} | {_cell(row.device)} | {row.model} {row.precision} | {_cell(row.runtime)} | "
            f"{_percent(row.accuracy)} | {_percent(row.agreement)} | {_ms(row.p50_ms)} | {_ms(row.p99_ms)} | {rate} | "
            f"{_kib(row.bytes)} | {_times(row.speedup)} | {result} |"
        )
    lines += [f"\nRecommended: {line}" for line in recommendation_lines(r)]
    lines += [f"\n⚠️ **Warning:** {_cell(w)}" for w in r.warnings]
    lines += ["", "| target | budget | measured | limit | result |", "|---|---|--:|--:|---|"]
    for t in r.targets:
        if t.error:
            lines.append(f"| {_cell(t.name)} | {_cell(', '.join(t.budget) or '-')} | - | - | ⚠️ {_cell(t.error)} |")
            continue
        for v in t.verdicts:
            lines.append(
                f"| {_cell(t.name)} | {v.budget} | {format_figure(v.budget, v.measured)} | "
                f"{format_figure(v.budget, v.limit)} | {_VERDICT_MARK[v.verdict]} ({_cell(v.basis)}) |"
            )
        if not t.verdicts:
            lines.append(f"| {_cell(t.name)} | - | - | - | no budgets set |")
    if not r.targets:
        lines.append("| - | - | - | - | ➖ nothing gated: the recipe has no targets |")
    lines += _gate_notes(r)
    rates = throughput_rows(r)
    if rates:
        lines += ["", "| stage | images/s | ceiling | ratio |", "|---|--:|---|--:|"]
        lines += [f"| {stage} | {rate:,.0f} | {ceiling} {bare:,.0f}/s | {ratio:.2f} |" for stage, rate, ceiling, bare, ratio in rates]
    if plan := plan_markdown(plan_of(r)):
        lines += ["", plan]
    return "\n".join(lines) + "\n"


GATE_FILES = ("junit.xml", "summary.md")


def write_gate_files(run_dir: Path, report: Report | dict) -> None:
    r = as_report(report, Path(run_dir) / "report.json")
    atomic_write_text(Path(run_dir) / "junit.xml", junit_xml(r))
    atomic_write_text(Path(run_dir) / "summary.md", summary_markdown(r))
