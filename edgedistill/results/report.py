"""What a run found, typed: one TargetResult per target while measuring, the Report model that report.json holds
(pydantic, versioned by `schema_version`; `edgedistill report-schema` prints its JSON Schema), and the one exit-code
policy that the CLI, the Python API, junit.xml, summary.md and report.html all follow.

Readers take a report as written (a dict) or a Report: `as_report` validates a dict once, and everything after reads
attributes. A report written before `schema_version` existed still loads (each verdict's `verdict` comes from `passed`).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from ..backends.base import LatencyStats
from ..config.schema import Budget
from ..errors import BadInput, BudgetFailed, BudgetInconclusive, EdgeDistillError, TargetUnavailable

SCHEMA_VERSION = 1
"""report.json's schema version: raised on a breaking change (a field removed, renamed or given another meaning or
type); new fields do not raise it. Readers refuse a report of a newer version than theirs (docs/ci.md)."""

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
    "max_teacher_class_share": "<=",
}
_FAILS_AS = {"<=": ">", ">=": "<"}
RETRY_ROUNDS = 10
COLLAPSED_TEACHER_SHARE = 0.9  # one class with more of the pool's top-1 predictions than this: the teacher collapsed


# ------------------------------------------------------------------------------------------------ report.json's model


class Section(BaseModel):
    """A part of report.json. Every part keeps keys it does not type (`extra="allow"`), so a report read and written
    again loses nothing, and a field a newer edgedistill adds is kept; the typed fields are the documented ones."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    def as_dict(self) -> dict[str, Any]:
        """The section as report.json holds it: the keys it was given, nothing added."""
        return self.model_dump(mode="python", exclude_unset=True, by_alias=True)


Number = int | float  # kept as written: a count stays an integer (max_unreadable), a figure a float
Verdicts = Literal["pass", "fail", "inconclusive"]
Interval = Annotated[list[float], Field(min_length=2, max_length=2, description="[low, high] across the rounds")]


class EarlierMeasurement(Section):
    """A latency measurement a retry replaced (on_inconclusive: retry N)."""

    verdict: Verdicts | None = None
    reason: str | None = None
    measured: Number | None = None
    interval: Interval | None = None
    rounds: int | None = None


class Verdict(Section):
    """One budget of one target, judged."""

    budget: str = Field(description="the budget's name: p50_ms, p99_ms, min_accuracy, ... (the recipe's `budget` keys)")
    limit: Number | None = Field(None, description="the budget's limit")
    measured: Number | None = Field(None, description="the figure judged; null when it could not be measured (a fail)")
    verdict: Verdicts = Field(description="pass, fail or inconclusive (latency: the machine was too noisy to tell)")
    passed: bool = Field(description="true only for pass (kept for readers older than `verdict`)")
    basis: str = Field("", description="what was measured, in words")
    reason: str | None = Field(None, description="latency budgets: within, over, best_case_over, contended or straddles (docs/ci.md)")
    interval: Interval | None = None
    rounds: int | None = Field(None, description="latency rounds the median and interval come from")
    best_case_ms: float | None = Field(None, description="the fastest call, allowing for what other processes took")
    busy_elsewhere_cores: float | None = None
    retries: int | None = Field(None, description="re-timings made by on_inconclusive: retry N")
    earlier: list[EarlierMeasurement] | None = Field(None, description="the measurements the retries replaced")
    policy: Literal["fail", "pass"] | None = Field(None, description="the on_inconclusive policy that decided this verdict")
    measured_verdict: Verdicts | None = Field(None, description="the verdict as measured, where a policy decided it")

    @model_validator(mode="before")
    @classmethod
    def _verdict_from_passed(cls, data: Any) -> Any:
        """A report written before `verdict` existed has only `passed`; one with only `verdict` gets `passed`."""
        if isinstance(data, dict):
            if not data.get("verdict") and "passed" in data:
                data = {**data, "verdict": "pass" if data["passed"] else "fail"}
            if "passed" not in data and data.get("verdict"):
                data = {**data, "passed": data["verdict"] == "pass"}
        return data


def _latency_fields() -> dict[str, Any]:
    """backends.base.LatencyStats' summary fields, as report.json's `latency` types them: each one optional (a report
    may lack it), defaulting as in LatencyStats or to null, so a new latency figure is added there alone."""
    types = get_type_hints(LatencyStats)
    return {
        f.name: (
            types[f.name] if f.default is not MISSING else types[f.name] | None,
            Field(None if f.default is MISSING else f.default, description=f.metadata.get("description")),
        )
        for f in LatencyStats.summary_fields()
    }


Latency = create_model(
    "Latency",
    __base__=Section,
    __doc__="""Milliseconds per call at batch 1 (backends.base.LatencyStats): with several rounds, each figure is the median
    of the rounds' figures, the one the gate judges; `pooled` holds those of all calls together.""",
    **_latency_fields(),
)


class Throughput(Section):
    batch: int | None = None
    throughput_per_s: float | None = None


class BatchPoint(Section):
    batch: int
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput_per_s: float | None = None


class Comparison(Section):
    """A runtime's logits against the PyTorch fp32 student's on the same images."""

    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    max_rel_diff: float | None = None
    top1_agreement: float | None = None
    samples: int | None = None
    reference: str | None = None


class Facts(Section):
    """Where a target ran: runtime and its version, device, threads; open-ended (each runtime and host adds its own)."""

    runtime: str | None = None
    version: str | None = None
    device_model: str | None = None
    gpu: str | None = None
    hostname: str | None = None
    ssh: str | None = None
    cpu_model: str | None = None
    processor: str | None = None

    @field_validator("runtime", "version", "device_model", "gpu", "hostname", "ssh", "cpu_model", "processor", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> str | None:
        """Whatever a runtime or board reports there is shown as text: a run must never lose its report at the end
        because a device described itself with a number or a list."""
        return None if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


class Target(Section):
    """One target of the recipe: what was measured there and each budget's verdict."""

    name: str
    runtime: str = ""
    precision: str = "fp32"
    accuracy: float | None = None
    agreement: float | None = Field(None, description="top-1 agreement with the teacher")
    latency: Latency | None = None
    throughput: Throughput | None = None
    facts: Facts = Field(default_factory=Facts)
    verdicts: list[Verdict] = Field(default_factory=list)
    error: str | None = Field(None, description="why the target could not be measured (exit 4); null when it was")
    int8_drop: float | None = None
    comparison: Comparison | None = None
    batch_sweep: list[BatchPoint] = Field(default_factory=list)
    passed: bool = Field(False, description="measured, and every verdict pass")
    budget: dict[str, Number] = Field(default_factory=dict, description="the target's budgets as the recipe set them")

    @model_validator(mode="before")
    @classmethod
    def _passed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, "passed": _target_passed(data)}
        return data


class DeploymentRow(Section):
    """One model on one target in the deployment table: the teacher, or the student at one precision."""

    target: str
    model: str = Field(description="teacher or student")
    precision: str = "fp32"
    runtime: str = ""
    device: str = "-"
    gated: bool = Field(False, description="the target's gated model (its verdicts are the target's)")
    accuracy: float | None = None
    agreement: float | None = None
    accuracy_from: str | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput_per_s: float | None = None
    throughput_batch: int | None = None
    bytes: int | None = None
    speedup: float | None = Field(None, description="the teacher's p50 over this model's, same target")
    throughput_speedup: float | None = None
    comparison: Comparison | None = None
    error: str | None = None


class Recommendation(Section):
    """Per device, the fastest student within half a point of the fp32 student (target null: none was)."""

    device: str
    target: str | None = None
    runtime: str | None = None
    precision: str | None = None
    p50_ms: float | None = None
    speedup: float | None = None
    drop: float | None = None
    basis: str | None = None
    reason: str | None = None


class Deployment(Section):
    rows: list[DeploymentRow] | None = None
    recommendation: list[Recommendation] = Field(default_factory=list)


class EvalInfo(Section):
    name: str | None = None
    samples: int | None = None
    labeled: bool | None = None
    unreadable: int | None = None
    unreadable_examples: list[str] = Field(default_factory=list)


class Teacher(Section):
    arch: str | None = None
    parameters: int | None = None
    accuracy: float | None = None
    runtime: str | None = None
    feature_layer: str | None = None


class Student(Section):
    arch: str | None = None
    parameters: int | None = None
    onnx_bytes: int | None = None
    int8_onnx_bytes: int | None = None
    accuracy: float | None = None
    agreement: float | None = None
    scored_in: str | None = None
    feature_layer: str | None = None
    kept_epoch: int | None = None
    keep: str | None = None
    epochs: int | None = None


class Int8(Section):
    """student.int8.onnx against the fp32 student on ONNX Runtime CPU, plus int8.json's facts (open-ended)."""

    method: str | None = None
    calibration_samples: int | None = None
    runtime: str | None = None
    basis: str | None = Field(None, description="accuracy, or teacher agreement without labels")
    fp32: float | None = None
    int8: float | None = None
    drop: float | None = None
    int8_agrees_with_fp32: float | None = None
    samples: int | None = None


class ModelFile(Section):
    """`validate MODEL.onnx`: the model file gated on its own."""

    path: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    opset: int | None = None
    quantized: bool | None = None
    input: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None


class Coverage(Section):
    class_: int = Field(alias="class")
    level: str = Field(description="well, thinly or poorly")
    selected: int = 0
    quota: int = 0
    pool_predicted: int = 0
    mean_confidence: float = 0.0
    advice: str | None = None


class Selection(Section):
    """selection.json: what the teacher picked from the pool (open-ended: each strategy adds its own facts)."""

    strategy: str | None = None
    scored: int | None = None
    selected: int | None = None
    pool_predicted_per_class: list[int] | None = None
    selected_per_class: list[int] | None = None
    coverage: list[Coverage] | None = None


class StageThroughput(Section):
    images_per_s: float | None = None
    bare_forward_images_per_s: float | None = None
    bare_step_images_per_s: float | None = None
    ratio: float | None = None


class RunThroughput(Section):
    select: StageThroughput | None = None
    distill: StageThroughput | None = None


class Parity(Section):
    top1_agreement: float | None = None
    max_abs_diff: float | None = None


class Plan(Section):
    """The plan that chose the student (plan.json; results/plan.py reads its parts)."""

    teacher: str | None = None
    classes: int | None = None
    input: list[int] | None = None
    targets: list[dict[str, Any]] = Field(default_factory=list)
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    chosen: dict[str, Any] | None = None
    why: str | None = None


_ORDER = (
    "schema_version",
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
    "plan",
    "targets",
    "versions",
)


class Report(Section):
    """report.json. `compress` fills the run's sections (teacher ... history); `validate MODEL.onnx` fills `model`.
    A section a run did not make is left out of the file (None here)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, title="edgedistill report.json")

    schema_version: int = Field(SCHEMA_VERSION, description="raised on a breaking change; absent in reports before 1")
    name: str = ""
    passed: bool = Field(False, description="every target measured and every verdict pass (exit code 0 needs less)")
    model: ModelFile | None = None
    eval: EvalInfo = Field(default_factory=EvalInfo)
    teacher: Teacher | None = None
    student: Student | None = None
    warnings: list[str] = Field(default_factory=list)
    int8: Int8 | None = None
    deployment: Deployment | None = None
    selection: Selection | None = None
    throughput: RunThroughput | None = None
    parity: Parity | None = None
    history: list[dict[str, Any]] = Field(default_factory=list, description="per epoch: loss parts and held-out scores")
    plan: Plan | None = None
    targets: list[Target] = Field(default_factory=list)
    versions: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_version_and_passed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            version = data.get("schema_version")
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ValueError(f"schema_version {version} is newer than this edgedistill reads ({SCHEMA_VERSION}); upgrade edgedistill")
            targets = data.get("targets") if isinstance(data.get("targets"), list) else []
            data = {**data, "passed": all(isinstance(t, (dict, Target)) and _target_passed(t) for t in targets)}
        return data

    def as_json(self) -> dict[str, Any]:
        """report.json's content: the sections given, in a fixed order, with schema_version and passed; a collapsed
        teacher (selection) is named among the warnings, whoever wrote the others."""
        values = self.model_dump(mode="python", exclude_unset=True, by_alias=True)
        values |= {"schema_version": self.schema_version, "passed": self.passed}
        collapse = teacher_collapse_warning(values.get("selection"))
        if collapse:
            listed = list(values.get("warnings") or [])
            values["warnings"] = listed if collapse in listed else [*listed, collapse]
        return {**{key: values[key] for key in _ORDER if key in values}, **{k: v for k, v in values.items() if k not in _ORDER}}

    @classmethod
    def read(cls, path: Path) -> Report:
        """report.json from a file; BadInput (exit 2) naming the file when it is missing, not JSON or not a report."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(f"{path.parent}: no report.json; run `edgedistill validate` (or compress) for this run first") from None
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: not valid JSON ({exc})") from None
        return as_report(data, path)


def as_report(report: Report | dict, source: object = "report.json") -> Report:
    """The Report a reader works on: validated once from report.json's dict (any version up to SCHEMA_VERSION)."""
    if isinstance(report, Report):
        return report
    if not isinstance(report, dict):
        raise BadInput(f"{source}: not a report edgedistill wrote (a JSON object expected)")
    try:
        return Report.model_validate(report)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"]) or "report"
        raise BadInput(f"{source}: not a report this edgedistill reads: {where}: {err['msg']}") from None


def report_schema() -> dict[str, Any]:
    """report.json's JSON Schema (`edgedistill report-schema`)."""
    schema = Report.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


# ------------------------------------------------------------------------------------------------ while measuring


def parse_on_inconclusive(policy: str) -> tuple[str, int]:
    """("retry", N), ("fail", 0) or ("pass", 0) from a target's `on_inconclusive` (TargetSpec checks the spelling)."""
    kind, _, count = policy.strip().partition(" ")
    if kind == "retry" and count.strip().isdigit():
        return "retry", int(count)
    if kind in ("fail", "pass") and not count:
        return kind, 0
    raise ValueError(f"on_inconclusive {policy!r}: use fail, pass or retry N (e.g. retry 2)")


def decide_inconclusive(verdicts: list[dict], policy: str) -> list[dict]:
    """`on_inconclusive: fail` or `pass`: each inconclusive verdict becomes that, with `policy` and the verdict it was
    measured as (`measured_verdict`) recorded, so the report says the policy, not the measurement, decided it."""
    if policy not in ("fail", "pass"):
        return verdicts
    return [
        {**v, "verdict": policy, "passed": policy == "pass", "policy": policy, "measured_verdict": "inconclusive"}
        if verdict_of(v) == "inconclusive"
        else v
        for v in verdicts
    ]


def teacher_class_share(selection: dict | Selection | None) -> dict | None:
    """{"class", "share", "scored"}: the class the teacher predicts most often (top-1) over the whole scored pool and its
    share, from selection.json's pool_predicted_per_class; None without one (no labels are needed)."""
    if isinstance(selection, Selection):
        counts = selection.pool_predicted_per_class
    else:
        counts = (selection or {}).get("pool_predicted_per_class")
    scored = sum(counts or [])
    if not scored:
        return None
    top = max(range(len(counts)), key=counts.__getitem__)
    return {"class": top, "share": counts[top] / scored, "scored": scored}


def teacher_collapse_warning(selection: dict | Selection | None, names: list[str] | None = None) -> str | None:
    """The warning for a teacher that puts over COLLAPSED_TEACHER_SHARE of the pool in one class: its soft labels then
    teach one class, whatever the pool holds (a wrong `input` normalization or broken weights, most often)."""
    found = teacher_class_share(selection)
    if found is None or found["share"] <= COLLAPSED_TEACHER_SHARE:
        return None
    name = names[found["class"]] if names and found["class"] < len(names) else str(found["class"])
    return (
        f"the teacher put {found['share']:.1%} of the {found['scored']:,} scored pool images in one class ({name}): it has "
        "collapsed onto one class (check the teacher's weights and its input mean/std); the student can learn little from it"
    )


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


# ------------------------------------------------------------------------------------------------ reading a report


def verdict_of(verdict: Verdict | dict) -> str:
    """pass, fail or inconclusive; a report written before `verdict` existed has only `passed`."""
    if isinstance(verdict, Verdict):
        return verdict.verdict
    return verdict.get("verdict") or ("pass" if verdict.get("passed") else "fail")


def _target_passed(target: Target | dict) -> bool:
    if isinstance(target, Target):
        return target.error is None and all(v.verdict == "pass" for v in target.verdicts)
    verdicts = target.get("verdicts") or []  # as given: a malformed one is for field validation to name
    if not isinstance(verdicts, list):
        return False
    return not target.get("error") and all(isinstance(v, (dict, Verdict)) and verdict_of(v) == "pass" for v in verdicts)


def _target(target: Target | dict) -> Target:
    return target if isinstance(target, Target) else Target.model_validate({"name": "-", **target})


def target_verdict(target: Target | dict) -> str:
    """A target's verdict: unavailable, fail, inconclusive, pass, or "no budgets" when it was measured but not gated."""
    t = _target(target)
    if t.error:
        return "unavailable"
    states = {v.verdict for v in t.verdicts}
    return next((s for s in ("fail", "inconclusive", "pass") if s in states), "no budgets")


def exit_code(report: Report | dict) -> int:
    """4 when a target could not be measured (its budgets are unknown), else 3 when a budget failed, else 5 when a
    budget is inconclusive, else 0 (also when nothing was gated: no targets, or targets without budgets)."""
    targets = as_report(report).targets
    if any(t.error for t in targets):
        return EXIT_TARGET_UNAVAILABLE
    verdicts = {v.verdict for t in targets for v in t.verdicts}
    if "fail" in verdicts:
        return EXIT_BUDGET_FAILED
    if "inconclusive" in verdicts:
        return EXIT_INCONCLUSIVE
    return EXIT_PASSED


def gate_headline(report: Report | dict) -> str:
    """The gate's verdict in words, the same in the terminal, summary.md and report.html."""
    r = as_report(report)
    code = exit_code(r)
    if code != EXIT_PASSED:
        return {
            EXIT_BUDGET_FAILED: "budget failed",
            EXIT_TARGET_UNAVAILABLE: "target unavailable",
            EXIT_INCONCLUSIVE: "budget inconclusive",
        }[code]
    if not r.targets:
        return "nothing gated: no targets"
    if not any(t.verdicts for t in r.targets):
        return "nothing gated: no budgets set"
    return "all budgets met"


def retry_command(report: Report | dict, target: str, run_dir: object = None) -> str:
    """The command that re-measures an inconclusive target with more rounds: for a run, every target of its recipe
    (with --target it would be a what-if, which leaves the run's verdict as it was)."""
    r = as_report(report)
    if r.model is not None:
        return f"edgedistill validate {r.model.path or 'MODEL.onnx'} --rounds {RETRY_ROUNDS} (with the same options)"
    return f"edgedistill validate --run-dir {run_dir or 'RUN_DIR'} --rounds {RETRY_ROUNDS}"


def gate_notes(report: Report | dict) -> list[tuple[str, str, str | None]]:
    """(target, what it means, the command to retry or None) for each inconclusive or noisy target: the notes under
    the budget tables of summary.md and report.html."""
    r = as_report(report)
    notes = []
    for t in r.targets:
        if any(v.verdict == "inconclusive" for v in t.verdicts):
            notes.append(
                (
                    t.name,
                    "the machine was too busy or too noisy to tell pass from fail (exit 5); retry on a quieter machine",
                    retry_command(r, t.name),
                )
            )
        if t.latency is not None and t.latency.noisy:
            notes.append(
                (
                    t.name,
                    f"noisy: the rounds' median latency differed by {t.latency.round_spread or 0:.0%} (over 10%): the "
                    "machine's speed changed while it was measured",
                    None,
                )
            )
    return notes


def gate_error(report: Report | dict, run_dir: object = None) -> EdgeDistillError | None:
    """The error a failed gate ends with, carrying the report (report.json's dict); None when every budget is met (or
    nothing was gated)."""
    r = as_report(report)
    code = exit_code(r)
    if code == EXIT_PASSED:
        return None
    targets = r.targets
    if code == EXIT_TARGET_UNAVAILABLE:
        error: EdgeDistillError = TargetUnavailable("; ".join(f"{t.name}: {t.error}" for t in targets if t.error))
    elif code == EXIT_BUDGET_FAILED:
        failed = [f"{t.name}: " + ", ".join(_short(v) for v in t.verdicts if v.verdict == "fail") for t in targets if _has(t, "fail")]
        error = BudgetFailed("budget failed: " + "; ".join(failed))
    else:
        unsure = [t for t in targets if _has(t, "inconclusive")]
        detail = "; ".join(f"{t.name}: " + ", ".join(_short(v) for v in t.verdicts if v.verdict == "inconclusive") for t in unsure)
        error = BudgetInconclusive(
            f"budget inconclusive: {detail}; the machine was too busy or too noisy to tell pass from fail. Retry on a "
            f"quieter machine with more rounds: {retry_command(r, ','.join(t.name for t in unsure), run_dir)}; or say "
            "what inconclusive means with --on-inconclusive fail|pass|'retry N' (a target's on_inconclusive)"
        )
    error.report = report if isinstance(report, dict) else report.as_json()
    return error


def _has(target: Target, verdict: str) -> bool:
    return any(v.verdict == verdict for v in target.verdicts)


def _short(verdict: Verdict) -> str:
    """`p99_ms 3.214 ms vs limit 2 ms`, with the rounds' interval where there is one."""
    budget, interval = verdict.budget, verdict.interval
    spread = f" (interval {format_figure(budget, interval[0])} to {format_figure(budget, interval[1])})" if interval else ""
    return f"{budget} {format_figure(budget, verdict.measured)}{spread} vs limit {format_figure(budget, verdict.limit)}"


def format_figure(budget: str, value: float | None) -> str:
    if value is None:
        return "-"
    if budget == "max_unreadable":
        return f"{int(value)} file(s)"
    if budget == "max_output_diff":
        return f"{value:.4g}"
    return f"{value:.4g} ms" if budget.endswith("_ms") else f"{value:.2%}"


def verdict_message(verdict: Verdict | dict) -> str:
    """`p99_ms: measured 3.214 ms > limit 2 ms (latency at batch 1)`: the figure, the limit, what was measured, and
    which case of latency_verdict it is (`reason`): a best case over the limit, a machine too busy to tell, an interval
    that straddles the limit; then the retries made and the on_inconclusive policy that decided it, if any."""
    v = verdict if isinstance(verdict, Verdict) else Verdict.model_validate(verdict)
    budget, state = v.budget, v.verdict
    measured_as, reason = v.measured_verdict or state, v.reason
    relation = _PASSES_WHEN.get(budget, "vs")
    if measured_as == "fail" or reason == "contended":
        relation = _FAILS_AS.get(relation, relation)
    elif measured_as == "inconclusive":
        relation = "but its interval straddles the"
    text = f"{budget}: measured {format_figure(budget, v.measured)} {relation} limit {format_figure(budget, v.limit)}"
    if reason == "best_case_over":
        text += (
            f"; even its best case ({format_figure(budget, v.best_case_ms)}) is over the limit, so it fails however busy the machine was"
        )
    elif reason == "contended":
        cores = v.busy_elsewhere_cores
        text += (
            f", but other processes used {cores if cores is not None else 'most'} cores; the fastest calls were within the "
            "limit, so the machine may be what was slow"
        )
    text += f" ({v.basis})"
    if v.retries:
        text += f"; after {v.retries} retr{'y' if v.retries == 1 else 'ies'} with more rounds"
    if v.policy:
        text += f"; inconclusive, decided {state} by the policy on_inconclusive: {v.policy}"
    return text


def device_label(target: Target | dict) -> str:
    """The most specific name the facts hold for where the target ran."""
    facts = target.facts if isinstance(target, Target) else Facts.model_validate(target.get("facts") or {})
    for name in (facts.device_model, facts.gpu, facts.hostname):
        if name:
            return str(name)
    return str(facts.ssh or facts.cpu_model or facts.processor or "-")


def throughput_rows(report: Report | dict) -> list[tuple[str, float, str, float, float]]:
    """(stage, images/s, ceiling name, ceiling images/s, ratio) for pool scoring and training, where measured."""
    rates = as_report(report).throughput or RunThroughput()
    rows = []
    stages = (("pool scoring", rates.select, "bare teacher forward"), ("training", rates.distill, "bare distillation step"))
    for stage, t, ceiling in stages:
        if t is None:
            continue
        bare = t.bare_forward_images_per_s if t.bare_forward_images_per_s is not None else t.bare_step_images_per_s
        if t.ratio is not None and bare:
            rows.append((stage, t.images_per_s, ceiling, bare, t.ratio))
    return rows


def deployment_rows(report: Report | dict) -> list[DeploymentRow]:
    """The deployment table's rows (teacher, student at each precision, per target); a report written before the
    table existed gets its gated rows back from `targets`, without speed-ups."""
    r = as_report(report)
    if r.deployment is not None and r.deployment.rows is not None:
        return r.deployment.rows
    student = r.student or Student()
    rows = []
    for t in r.targets:
        latency, throughput = t.latency or Latency(), t.throughput or Throughput()
        rows.append(
            DeploymentRow(
                target=t.name,
                model="student",
                precision=t.precision,
                runtime=t.runtime,
                device=device_label(t),
                gated=True,
                accuracy=t.accuracy,
                agreement=t.agreement,
                p50_ms=latency.p50_ms,
                p99_ms=latency.p99_ms,
                throughput_per_s=throughput.throughput_per_s,
                throughput_batch=throughput.batch,
                bytes=student.int8_onnx_bytes if t.precision == "int8" else student.onnx_bytes,
                comparison=t.comparison,
                error=t.error,
            )
        )
    return rows


def recommendation_lines(report: Report | dict) -> list[str]:
    """`device: openvino int8 on target cpu-ov, 0.41 ms, 6.2x the teacher (drop 0.10 points)`, one per device."""
    r = as_report(report)
    lines = []
    for rec in r.deployment.recommendation if r.deployment is not None else []:
        if rec.target is None:
            lines.append(f"{rec.device}: {rec.reason}")
            continue
        speedup = f", {rec.speedup:.1f}x the teacher" if rec.speedup else ""
        lines.append(
            f"{rec.device}: {rec.runtime} {rec.precision} (target {rec.target}), {rec.p50_ms:.3g} ms at batch 1{speedup}, "
            f"{rec.basis} {100 * (rec.drop or 0):.2f} points from the fp32 student"
        )
    return lines
