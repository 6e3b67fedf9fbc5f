"""What a run found, typed: one TargetResult per target, the Report that report.json holds, and the one exit-code
policy that the CLI, the Python API, junit.xml, summary.md and report.html all follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config.schema import Budget
from ..errors import BudgetFailed, BudgetInconclusive, EdgeDistillError, TargetUnavailable

EXIT_PASSED = 0
EXIT_BUDGET_FAILED = BudgetFailed.exit_code
EXIT_TARGET_UNAVAILABLE = TargetUnavailable.exit_code
EXIT_INCONCLUSIVE = BudgetInconclusive.exit_code
_PASSES_WHEN = {
    "p50_ms": "<=",
    "p90_ms": "<=",
    "p99_ms": "<=",
    "mean_ms": "<=",
    "min_accuracy": ">=",
    "max_accuracy_drop": "<=",
    "max_unreadable": "<=",
    "max_int8_drop": "<=",
    "max_output_diff": "<=",
    "min_agreement_with_fp32": ">=",
}
_FAILS_AS = {"<=": ">", ">=": "<"}
RETRY_ROUNDS = 10
_ABSENT: Any = object()


@dataclass
class TargetResult:
    name: str
    runtime: str
    accuracy: float | None = None
    agreement: float | None = None
    latency: dict | None = None
    throughput: dict | None = None
    facts: dict = field(default_factory=dict)
    verdicts: list[dict] = field(default_factory=list)
    error: str | None = None
    precision: str = "fp32"
    int8_drop: float | None = None
    comparison: dict | None = None
    batch_sweep: list[dict] = field(default_factory=list)
    latency_samples_ms: list[float] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """Measured and every verdict "pass": an inconclusive budget is not a pass."""
        return self.error is None and all(verdict_of(v) == "pass" for v in self.verdicts)


def target_entry(result: TargetResult, budget: Budget) -> dict:
    """A target's entry in report.json (its raw latency samples go to latency_samples.json)."""
    return {k: v for k, v in result.__dict__.items() if k != "latency_samples_ms"} | {
        "passed": result.passed,
        "budget": budget.model_dump(exclude_none=True),
    }


@dataclass
class Report:
    """report.json: `compress` fills the run's sections (teacher ... history); `validate MODEL.onnx` fills `model`."""

    name: str
    eval: dict
    targets: list[dict]
    versions: dict
    model: dict = _ABSENT
    teacher: dict = _ABSENT
    student: dict = _ABSENT
    int8: dict | None = _ABSENT
    deployment: dict = _ABSENT
    warnings: list = _ABSENT
    selection: dict = _ABSENT
    throughput: dict = _ABSENT
    parity: dict = _ABSENT
    history: list = _ABSENT

    @property
    def passed(self) -> bool:
        return all(t["passed"] for t in self.targets)

    def as_json(self) -> dict:
        order = (
            "name",
            "passed",
            "model",
            "eval",
            "teacher",
            "student",
            "warnings",
            "int8",
            "deployment",
            "selection",
            "throughput",
            "parity",
            "history",
            "targets",
            "versions",
        )
        values = {**self.__dict__, "passed": self.passed}
        return {key: values[key] for key in order if values[key] is not _ABSENT}


def verdict_of(verdict: dict) -> str:
    """pass, fail or inconclusive; a report written before `verdict` existed has only `passed`."""
    return verdict.get("verdict") or ("pass" if verdict["passed"] else "fail")


def target_verdict(target: dict) -> str:
    """A target's verdict: unavailable, fail, inconclusive, pass, or "no budgets" when it was measured but not gated."""
    if target.get("error"):
        return "unavailable"
    states = {verdict_of(v) for v in target.get("verdicts", [])}
    return next((s for s in ("fail", "inconclusive", "pass") if s in states), "no budgets")


def exit_code(report: dict) -> int:
    """4 when a target could not be measured (its budgets are unknown), else 3 when a budget failed, else 5 when a
    budget is inconclusive, else 0 (also when nothing was gated: no targets, or targets without budgets)."""
    targets = report.get("targets", [])
    if any(t.get("error") for t in targets):
        return EXIT_TARGET_UNAVAILABLE
    verdicts = {verdict_of(v) for t in targets for v in t.get("verdicts", [])}
    if "fail" in verdicts:
        return EXIT_BUDGET_FAILED
    if "inconclusive" in verdicts:
        return EXIT_INCONCLUSIVE
    return EXIT_PASSED


def gate_headline(report: dict) -> str:
    """The gate's verdict in words, the same in the terminal, summary.md and report.html."""
    code = exit_code(report)
    if code != EXIT_PASSED:
        return {
            EXIT_BUDGET_FAILED: "budget failed",
            EXIT_TARGET_UNAVAILABLE: "target unavailable",
            EXIT_INCONCLUSIVE: "budget inconclusive",
        }[code]
    targets = report.get("targets", [])
    if not targets:
        return "nothing gated: no targets"
    if not any(t.get("verdicts") for t in targets):
        return "nothing gated: no budgets set"
    return "all budgets met"


def retry_command(report: dict, target: str, run_dir: object = None) -> str:
    """The command that re-measures an inconclusive target with more rounds."""
    if report.get("model"):
        return f"edgedistill validate {report['model'].get('path', 'MODEL.onnx')} --rounds {RETRY_ROUNDS} (with the same options)"
    return f"edgedistill validate --run-dir {run_dir or 'RUN_DIR'} --target {target} --rounds {RETRY_ROUNDS}"


def gate_notes(report: dict) -> list[tuple[str, str, str | None]]:
    """(target, what it means, the command to retry or None) for each inconclusive or noisy target: the notes under
    the budget tables of summary.md and report.html."""
    notes = []
    for t in report.get("targets", []):
        if any(verdict_of(v) == "inconclusive" for v in t.get("verdicts", [])):
            notes.append(
                (
                    t["name"],
                    "the machine was too busy or too noisy to tell pass from fail (exit 5); retry on a quieter machine",
                    retry_command(report, t["name"]),
                )
            )
        latency = t.get("latency") or {}
        if latency.get("noisy"):
            notes.append(
                (
                    t["name"],
                    f"noisy: the rounds' median latency differed by {latency['round_spread']:.0%} (over 10%): the machine's "
                    "speed changed while it was measured",
                    None,
                )
            )
    return notes


def gate_error(report: dict, run_dir: object = None) -> EdgeDistillError | None:
    """The error a failed gate ends with, carrying the report; None when every budget is met (or nothing was gated)."""
    code = exit_code(report)
    if code == EXIT_PASSED:
        return None
    targets = report["targets"]
    if code == EXIT_TARGET_UNAVAILABLE:
        error: EdgeDistillError = TargetUnavailable("; ".join(f"{t['name']}: {t['error']}" for t in targets if t["error"]))
    elif code == EXIT_BUDGET_FAILED:
        failed = [
            f"{t['name']}: " + ", ".join(_short(v) for v in t["verdicts"] if verdict_of(v) == "fail") for t in targets if _has(t, "fail")
        ]
        error = BudgetFailed("budget failed: " + "; ".join(failed))
    else:
        unsure = [t for t in targets if _has(t, "inconclusive")]
        detail = "; ".join(
            f"{t['name']}: " + ", ".join(_short(v) for v in t["verdicts"] if verdict_of(v) == "inconclusive") for t in unsure
        )
        error = BudgetInconclusive(
            f"budget inconclusive: {detail}; the machine was too busy or too noisy to tell pass from fail. Retry on a "
            f"quieter machine with more rounds: {retry_command(report, ','.join(t['name'] for t in unsure), run_dir)}"
        )
    error.report = report
    return error


def _has(target: dict, verdict: str) -> bool:
    return any(verdict_of(v) == verdict for v in target.get("verdicts", []))


def _short(verdict: dict) -> str:
    """`p99_ms 3.214 ms vs limit 2 ms`, with the rounds' interval where there is one."""
    budget, interval = verdict["budget"], verdict.get("interval")
    spread = f" (interval {format_figure(budget, interval[0])} to {format_figure(budget, interval[1])})" if interval else ""
    return f"{budget} {format_figure(budget, verdict['measured'])}{spread} vs limit {format_figure(budget, verdict['limit'])}"


def format_figure(budget: str, value: float | None) -> str:
    if value is None:
        return "-"
    if budget == "max_unreadable":
        return f"{int(value)} file(s)"
    if budget == "max_output_diff":
        return f"{value:.4g}"
    return f"{value:.4g} ms" if budget.endswith("_ms") else f"{value:.2%}"


def verdict_message(verdict: dict) -> str:
    """`p99_ms: measured 3.214 ms > limit 2.000 ms (latency at batch 1)`: the figure, the limit and what was measured;
    an inconclusive one says its interval straddles the limit."""
    budget, state = verdict["budget"], verdict_of(verdict)
    relation = _PASSES_WHEN.get(budget, "vs")
    if state == "fail":
        relation = _FAILS_AS.get(relation, relation)
    elif state == "inconclusive":
        relation = "but its interval straddles the"
    return (
        f"{budget}: measured {format_figure(budget, verdict['measured'])} {relation} limit "
        f"{format_figure(budget, verdict['limit'])} ({verdict['basis']})"
    )


def device_label(target: dict) -> str:
    """The most specific name the facts hold for where the target ran."""
    facts = target.get("facts") or {}
    for key in ("device_model", "gpu", "hostname"):
        if facts.get(key):
            return str(facts[key])
    return str(facts.get("ssh") or facts.get("cpu_model") or facts.get("processor") or "-")


def throughput_rows(report: dict) -> list[tuple[str, float, str, float, float]]:
    """(stage, images/s, ceiling name, ceiling images/s, ratio) for pool scoring and training, where measured."""
    rates = report.get("throughput") or {}
    rows = []
    for stage, key, ceiling in (("pool scoring", "select", "bare teacher forward"), ("training", "distill", "bare distillation step")):
        t = rates.get(key) or {}
        bare = t.get("bare_forward_images_per_s", t.get("bare_step_images_per_s"))
        if t.get("ratio") is not None and bare:
            rows.append((stage, t["images_per_s"], ceiling, bare, t["ratio"]))
    return rows


def deployment_rows(report: dict) -> list[dict]:
    """The deployment table's rows (teacher, student at each precision, per target); a report written before the
    table existed gets its gated rows back from `targets`, without speed-ups."""
    rows = (report.get("deployment") or {}).get("rows")
    if rows is not None:
        return rows
    student = report.get("student") or {}
    rows = []
    for t in report.get("targets", []):
        latency, throughput = t.get("latency") or {}, t.get("throughput") or {}
        int8 = t.get("precision") == "int8"
        rows.append(
            {
                "target": t["name"],
                "model": "student",
                "precision": t.get("precision", "fp32"),
                "runtime": t["runtime"],
                "device": device_label(t),
                "gated": True,
                "accuracy": t.get("accuracy"),
                "agreement": t.get("agreement"),
                "p50_ms": latency.get("p50_ms"),
                "p99_ms": latency.get("p99_ms"),
                "throughput_per_s": throughput.get("throughput_per_s"),
                "throughput_batch": throughput.get("batch"),
                "bytes": student.get("int8_onnx_bytes") if int8 else student.get("onnx_bytes"),
                "speedup": None,
                "throughput_speedup": None,
                "comparison": t.get("comparison"),
                "error": t.get("error"),
            }
        )
    return rows


def recommendation_lines(report: dict) -> list[str]:
    """`device: openvino int8 on target cpu-ov, 0.41 ms, 6.2x the teacher (drop 0.10 points)`, one per device."""
    lines = []
    for r in (report.get("deployment") or {}).get("recommendation") or []:
        if r.get("target") is None:
            lines.append(f"{r['device']}: {r['reason']}")
            continue
        speedup = f", {r['speedup']:.1f}x the teacher" if r.get("speedup") else ""
        lines.append(
            f"{r['device']}: {r['runtime']} {r['precision']} (target {r['target']}), {r['p50_ms']:.3g} ms at batch 1{speedup}, "
            f"{r['basis']} {100 * r['drop']:.2f} points from the fp32 student"
        )
    return lines
