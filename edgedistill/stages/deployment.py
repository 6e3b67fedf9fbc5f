"""The run's validate stage: each target gated (stages/validate.py, the one validation path), and the deployment table:
every model a run produced (the teacher, the student at each precision) measured on each target the way the gated
model is, with speed-ups against the teacher on the same target and runtime, a recommendation per device, and warnings
when the student did not learn. The report is assembled from the stages' typed results."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..backends import RUNTIMES
from ..config.schema import Budget, InputSpec, TargetSpec
from ..inputs.labeled import EvalSet
from ..models.factory import count_parameters
from ..models.teachers import teacher_format
from ..results.gate import GATE_FILES
from ..results.html import write_report_html
from ..results.report import TargetResult, device_label, teacher_class_share, verdict_of
from .export import ExportStage, engine_file, target_file
from .stage import Progress, RunContext, Stage, load_student, log
from .validate import Gated, Int8Reference, Reference, measure_int8, predict_torch, validate_and_report, validate_target

RECOMMEND_MAX_DROP = 0.005  # a precision is recommended only within half a point of the fp32 student
NEAR_CHANCE = 1.5  # a student scoring under 1.5x chance learned nothing
FAR_BELOW_TEACHER = 0.2  # or one 20 points under its teacher


def deployment_row(result: TargetResult, model: str, gated: bool, path: Path | None, accuracy_from: str) -> dict:
    latency, throughput = result.latency or {}, result.throughput or {}
    return {
        "target": result.name,
        "model": model,
        "precision": result.precision,
        "runtime": result.runtime,
        "device": device_label({"facts": result.facts}),
        "gated": gated,
        "accuracy": result.accuracy,
        "agreement": result.agreement,
        "accuracy_from": accuracy_from,
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "throughput_per_s": throughput.get("throughput_per_s"),
        "throughput_batch": throughput.get("batch"),
        "bytes": path.stat().st_size if path is not None and path.is_file() else None,
        "comparison": result.comparison,
        "error": result.error,
    }


def models_to_time(target: TargetSpec, model_for: Callable[[str], Path | None], teacher_model: Path | None) -> list[tuple[str, str, Path]]:
    """(model, precision, file) for each entry of `target.also_time` the run has and the runtime runs, besides the
    gated model itself."""
    runtime = RUNTIMES[target.runtime]
    chosen = []
    for kind in target.also_time:
        if kind == "teacher":
            if teacher_model is not None:
                chosen.append(("teacher", "fp32", teacher_model))
        elif kind != target.precision and kind in runtime.precisions and (path := model_for(kind)) is not None:
            chosen.append(("student", kind, path))
    return chosen


def measure_target(
    target: TargetSpec,
    gated: TargetResult,
    gated_model: Path,
    others: list[tuple[str, str, Path]],
    eval_set: EvalSet,
    spec: InputSpec,
    teacher_pred: np.ndarray,
    teacher_accuracy: float | None,
    reference_logits: np.ndarray,
    int8_reference: Int8Reference | None,
    on_progress: Callable[[int], None] | None = None,
    engine_for: Callable[[str], Path | None] = lambda precision: None,
    teacher_scored_in: str = "pytorch",
) -> list[dict]:
    """The gated model's row and one for each of `others` (models_to_time), measured ungated, teacher first.

    The teacher is timed only; its accuracy is the one `teacher_scored_in` measured (PyTorch, or ONNX Runtime for an
    ONNX teacher): running a large teacher over the evaluation set on a small device would cost more than the whole
    validation."""
    rows = [deployment_row(gated, "student", True, gated_model, "this runtime")]
    no_images = EvalSet("none (latency only)", eval_set.images[:0], None)
    for model, precision, path in others:
        copy = target.model_copy(update={"precision": precision, "budget": Budget()})
        if model == "teacher":
            result = validate_target(copy, path, no_images, spec, None, None, sweep=False)
            result.accuracy = teacher_accuracy
            rows.insert(0, deployment_row(result, "teacher", False, path, teacher_scored_in))
            continue
        result = validate_target(
            copy,
            path,
            eval_set,
            spec,
            teacher_pred,
            teacher_accuracy,
            on_progress,
            int8_reference=int8_reference,
            reference_logits=reference_logits,
            sweep=False,
            engine_path=engine_for(precision),
        )
        rows.append(deployment_row(result, "student", False, path, "this runtime"))
    teacher = next((r for r in rows if r["model"] == "teacher" and r["p50_ms"]), None)
    for row in rows:
        row["speedup"] = teacher["p50_ms"] / row["p50_ms"] if teacher and row["p50_ms"] else None
        rates = (row["throughput_per_s"], teacher["throughput_per_s"]) if teacher else (None, None)
        row["throughput_speedup"] = rates[0] / rates[1] if all(rates) else None
    return rows


def recommend(rows: list[dict], fp32_score: float, basis: str, max_drop: float = RECOMMEND_MAX_DROP) -> list[dict]:
    """Per device, the fastest student (runtime and precision) whose score is within `max_drop` of the PyTorch fp32
    student's; a device where none is gets an entry saying so."""
    key = "accuracy" if basis == "accuracy" else "agreement"
    advice = []
    for device in dict.fromkeys(r["device"] for r in rows if r["model"] == "student"):
        measured = [r for r in rows if r["model"] == "student" and r["device"] == device and not r["error"] and r["p50_ms"]]
        within = [r for r in measured if r[key] is not None and fp32_score - r[key] <= max_drop]
        if not within:
            advice.append({"device": device, "target": None, "reason": f"no student within {max_drop:.1%} of the fp32 {basis}"})
            continue
        best = min(within, key=lambda r: r["p50_ms"])
        advice.append(
            {
                "device": device,
                "target": best["target"],
                "runtime": best["runtime"],
                "precision": best["precision"],
                "p50_ms": best["p50_ms"],
                "speedup": best["speedup"],
                "drop": fp32_score - best[key],
                "basis": basis,
                "reason": f"fastest student within {max_drop:.1%} of the fp32 {basis}",
            }
        )
    return advice


def student_warnings(score: float, basis: str, num_classes: int, teacher_accuracy: float | None) -> list[str]:
    """A student that learned nothing must not end a run with a normal-looking table."""
    chance = 1.0 / num_classes
    if score <= NEAR_CHANCE * chance:
        return [
            f"the student is near chance level ({basis} {score:.1%}; chance is {chance:.1%} for {num_classes} classes): "
            "distillation failed; check the pool's coverage in selection.json and the recipe's distill.lr and epochs"
        ]
    if basis == "accuracy" and teacher_accuracy is not None and teacher_accuracy - score > FAR_BELOW_TEACHER:
        return [
            f"the student is {100 * (teacher_accuracy - score):.0f} points below its teacher ({score:.1%} vs "
            f"{teacher_accuracy:.1%}): the pool may cover the teacher's classes poorly (see the coverage advice), or "
            "the student may need more epochs or capacity"
        ]
    return []


WHAT_IF_DIR = "what-if"  # where `validate --run-dir --set/--target` writes its report, beside the run's own


class ValidateStage(Stage):
    """Gates every target on the student file its runtime runs, times the run's other models for the deployment
    table, and writes report.json (with the gate files and report.html). A what-if (RunContext.what_if) writes its
    report to WHAT_IF_DIR and records nothing."""

    name = "validate"
    sections = ("teacher", "eval", "targets")
    after = ("select", "export")
    files = ("teacher", "eval")
    writes = ("report.json", "latency_samples.json", *GATE_FILES, "report.html")

    def extra_inputs(self, ctx: RunContext) -> dict:
        """Rounds say how well a budget is measured, not what it is (validate --rounds): not an input."""
        return {"targets": [{k: v for k, v in t.items() if k != "rounds"} for t in ctx.recipe.section("targets")["targets"]]}

    def run(self, ctx: RunContext, progress: Progress) -> None:
        r, run = ctx.student_recipe, ctx.run
        eval_set, spec = ctx.eval_set(), r.teacher.input
        teacher = ctx.teacher
        teacher_pred = predict_torch(teacher, eval_set.images, spec).argmax(1)
        teacher_acc = float((teacher_pred == eval_set.labels).mean()) if eval_set.labels is not None else None
        student = load_student(r, run)
        student_logits = predict_torch(student, eval_set.images, spec)
        basis = "accuracy" if eval_set.labels is not None else "teacher agreement"
        student_score = float((student_logits.argmax(1) == (eval_set.labels if eval_set.labels is not None else teacher_pred)).mean())
        selection, exported, trained = ctx.result("select"), ctx.result("export"), ctx.result("distill")
        int8_summary, int8_reference = None, None
        if r.export.int8.enabled and (run / "student.int8.onnx").is_file():
            measured, int8_reference = measure_int8(run / "student.onnx", run / "student.int8.onnx", eval_set, spec, teacher_pred)
            int8_summary = (exported.int8.as_dict() if exported.int8 is not None else {}) | measured
        reference = Reference(teacher_pred, teacher_acc, student_logits, int8_reference, teacher_class_share(selection.as_dict()))
        teacher_onnx = ExportStage.teacher_file(ctx)
        teacher_runtime = teacher_format(r.teacher.arch).runtime
        engine_for = lambda target, precision: run.artifact(name) if (name := engine_file(target, precision)) else None
        gated = []
        for target in r.targets:
            resolved = target.resolved(r)
            if ctx.rounds is not None:
                resolved = resolved.model_copy(update={"rounds": ctx.rounds})
            gated.append(Gated(resolved, target_file(run.path, target), engine_for(target, target.precision)))
        rows = []

        def progress_of(item: Gated) -> Callable[[int], None]:
            task = progress.add_task(f"validate: {item.target.name}", total=len(eval_set.images), info=item.target.runtime)
            return lambda n: progress.advance(task, n)

        def time_other_models(item: Gated, res: TargetResult) -> None:
            """The deployment table's rows of this target: the gated model and the others it also times, ungated."""
            target = item.target
            log.info("validate %s: %s", target.name, res)
            model_for = lambda precision: path if (path := target_file(run.path, target, precision)).is_file() else None
            others = models_to_time(target, model_for, teacher_onnx)
            students = sum(model == "student" for model, *_ in others)
            other_task = progress.add_task(f"validate: {target.name}, other models", total=len(eval_set.images) * students, info="")
            rows.extend(
                measure_target(
                    target,
                    res,
                    item.model,
                    others,
                    eval_set,
                    spec,
                    teacher_pred,
                    teacher_acc,
                    student_logits,
                    int8_reference,
                    on_progress=lambda n: progress.advance(other_task, n),
                    engine_for=lambda precision: engine_for(target, precision),
                    teacher_scored_in=teacher_runtime,
                )
            )

        def sections(results: list[TargetResult]) -> dict:
            """The run's sections of report.json, from the stages' typed results, beside the eval set and targets
            every validation reports."""
            for row in rows:
                if row["error"] and not row["gated"]:
                    log.warning("validate %s: %s %s not measured: %s", row["target"], row["model"], row["precision"], row["error"])
            planned = {"plan": plan.plan if (plan := ctx.result("plan")) is not None else None} if ctx.applies("plan") else {}
            return planned | {
                "teacher": {
                    "arch": r.teacher.arch,
                    "parameters": count_parameters(teacher),
                    "accuracy": teacher_acc,
                    "runtime": teacher_runtime,
                    "feature_layer": trained.feature_layers.get("teacher"),
                },
                "student": {
                    "arch": r.student.arch,
                    "parameters": count_parameters(student),
                    "onnx_bytes": (run / "student.onnx").stat().st_size,
                    "int8_onnx_bytes": (run / "student.int8.onnx").stat().st_size if int8_summary else None,
                    "accuracy": student_score if eval_set.labels is not None else None,
                    "agreement": float((student_logits.argmax(1) == teacher_pred).mean()),
                    "scored_in": "pytorch",
                    "feature_layer": trained.feature_layers.get("student"),
                    "kept_epoch": trained.kept_epoch,
                    "keep": r.distill.keep,
                    "epochs": r.distill.epochs,
                },
                "int8": int8_summary,
                "deployment": {"rows": rows, "recommendation": recommend(rows, student_score, basis)},
                "warnings": student_warnings(student_score, basis, r.teacher.num_classes, teacher_acc),
                "selection": selection,
                "throughput": {"select": selection.as_dict().get("throughput"), "distill": trained.throughput},
                "parity": exported.parity,
                "history": trained.history,
            }

        # a what-if's report goes beside the run's, which stays the gate's verdict
        _, results = validate_and_report(
            run,
            r.name,
            gated,
            eval_set,
            spec,
            reference,
            sections=sections,
            prefix=WHAT_IF_DIR + "/" if ctx.what_if else "",
            progress=progress_of,
            then=time_other_models,
        )
        if ctx.what_if:
            return
        self._write_report_html(ctx)
        unsettled = [
            t.name for t in results if (t.latency or {}).get("contended") or any(verdict_of(v) == "inconclusive" for v in t.verdicts)
        ]
        if unsettled:
            log.info("validate: %s measured on a busy machine or inconclusive: the next run measures again", ", ".join(unsettled))
        run.mark_done("validate", ctx.inputs("validate"), ["report.json", "latency_samples.json"], final=not unsettled)

    @staticmethod
    def _write_report_html(ctx: RunContext) -> None:
        """report.html beside the run's report.json, which validate_and_report wrote with the gate files."""
        ctx.run.artifact("report.html")
        try:
            write_report_html(ctx.run.path)
        except Exception as exc:  # the gate's verdict must not hinge on drawing a plot
            log.exception("report.html")
            ctx.console.print(
                f"[yellow]validate: report.html not written ({type(exc).__name__}: {exc}); `edgedistill report {ctx.run.path}` retries"
            )
