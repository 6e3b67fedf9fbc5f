"""What a run found, typed: one TargetResult per target, the Report that report.json holds, and the one exit-code
policy that the CLI, the Python API, junit.xml, summary.md and report.html all follow."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config.schema import Budget
from ..errors import BudgetFailed, EdgeDistillError, TargetUnavailable

EXIT_PASSED = 0
EXIT_BUDGET_FAILED = BudgetFailed.exit_code
EXIT_TARGET_UNAVAILABLE = TargetUnavailable.exit_code
_PASSES_WHEN = {"p99_ms": "<=", "min_accuracy": ">=", "max_accuracy_drop": "<=", "max_unreadable": "<=", "max_int8_drop": "<="}
_FAILS_AS = {"<=": ">", ">=": "<"}
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
    latency_samples_ms: list[float] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return self.error is None and all(v["passed"] for v in self.verdicts)


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
            "int8",
            "selection",
            "throughput",
            "parity",
            "history",
            "targets",
            "versions",
        )
        values = {**self.__dict__, "passed": self.passed}
        return {key: values[key] for key in order if values[key] is not _ABSENT}


def exit_code(report: dict) -> int:
    """4 when a target could not be measured (its budgets are unknown), else 3 when a budget failed, else 0."""
    targets = report.get("targets", [])
    if any(t.get("error") for t in targets):
        return EXIT_TARGET_UNAVAILABLE
    if not all(t.get("passed") for t in targets):
        return EXIT_BUDGET_FAILED
    return EXIT_PASSED


def gate_error(report: dict) -> EdgeDistillError | None:
    """The error a failed gate ends with, carrying the report; None when every budget is met."""
    code = exit_code(report)
    if code == EXIT_PASSED:
        return None
    if code == EXIT_TARGET_UNAVAILABLE:
        error: EdgeDistillError = TargetUnavailable("; ".join(f"{t['name']}: {t['error']}" for t in report["targets"] if t["error"]))
    else:
        failed = [
            f"{t['name']}: "
            + ", ".join(f"{v['budget']} {v['measured']:.4g} vs limit {v['limit']:.4g}" for v in t["verdicts"] if not v["passed"])
            for t in report["targets"]
            if not t["passed"]
        ]
        error = BudgetFailed("budget failed: " + "; ".join(failed))
    error.report = report
    return error


def format_figure(budget: str, value: float | None) -> str:
    if value is None:
        return "-"
    if budget == "max_unreadable":
        return f"{int(value)} file(s)"
    return f"{value:.4g} ms" if budget.endswith("_ms") else f"{value:.2%}"


def verdict_message(verdict: dict) -> str:
    """`p99_ms: measured 3.214 ms > limit 2.000 ms (latency at batch 1)`: the figure, the limit and what was measured."""
    budget = verdict["budget"]
    relation = _PASSES_WHEN.get(budget, "vs")
    if not verdict["passed"]:
        relation = _FAILS_AS.get(relation, relation)
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
    return str(facts.get("ssh") or facts.get("processor") or "-")


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
