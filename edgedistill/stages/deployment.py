"""The deployment table: every model a run produced (the teacher, the student at each precision) measured on each
target the way the gated model is, with speed-ups against the teacher on the same target and runtime, a
recommendation per device, and warnings when the student did not learn."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..backends import RUNTIMES
from ..config.schema import Budget, InputSpec, TargetSpec
from ..inputs.labeled import EvalSet
from ..results.report import TargetResult, device_label
from .validate import Int8Reference, validate_target

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
