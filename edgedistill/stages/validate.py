"""Validate: accuracy and teacher agreement of the exported model, latency on each target, budget verdicts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from ..atomic import atomic_write_json
from ..backends import RUNTIMES, check_target, create_runner, option_keys
from ..backends.base import LatencyStats, time_rounds
from ..backends.onnxruntime import OnnxRuntimeRunner
from ..config.schema import Budget, InputSpec, TargetSpec
from ..errors import BadInput, EdgeDistillError
from ..inputs.images import normalize
from ..inputs.labeled import EvalSet, read_class_folders
from ..models.onnx_info import onnx_info
from ..results.gate import GATE_FILES, write_gate_files
from ..results.report import Report, TargetResult, decide_inconclusive, parse_on_inconclusive, target_entry
from ..results.rundir import RunDir, package_versions


def predict_torch(model: nn.Module, images: np.ndarray, spec: InputSpec, batch: int = 512) -> np.ndarray:
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    with torch.inference_mode():
        return np.concatenate(
            [
                model(normalize(torch.from_numpy(images[i : i + batch]).to(device), spec)).float().cpu().numpy()
                for i in range(0, len(images), batch)
            ]
        )


LATENCY_FIGURES = {"p50_ms": "p50 latency", "p90_ms": "p90 latency", "p99_ms": "p99 latency", "mean_ms": "mean latency"}
COMPARISON_BASIS = "vs the PyTorch fp32 student on the same inputs"
# budgets that need a teacher or the PyTorch student, which `validate MODEL.onnx` has not
REFERENCE_BUDGETS = ("max_accuracy_drop", "max_int8_drop", "max_output_diff", "min_agreement_with_fp32", "max_teacher_class_share")


def _verdict(budget: str, limit: float, measured: float | None, verdict: str, basis: str, **extra: object) -> dict:
    """A verdict dict: `verdict` is pass, fail or inconclusive; `passed` (what readers before `verdict` existed use) is
    true only for pass, so an inconclusive budget never reads as met."""
    return {
        "budget": budget,
        "limit": limit,
        "measured": measured,
        **extra,
        "verdict": verdict,
        "passed": verdict == "pass",
        "basis": basis,
    }


def _pass_or_fail(ok: bool) -> str:
    return "pass" if ok else "fail"


def latency_verdict(budget: str, limit: float, latency: LatencyStats) -> dict:
    """The median of the rounds' figure with its interval (median_interval), and the verdict's case in `reason`:

    - `within`: the whole interval is within the limit: pass, busy machine or not (load only adds time);
    - `over`: the whole interval is over the limit on a machine that was not contended: fail;
    - `best_case_over`: the interval is over the limit on a contended machine, and even the best case
      (LatencyStats.best_case_ms: the fastest call, allowing for the most other processes can have slowed it) is over
      the limit: fail, since load only adds time;
    - `contended`: the interval is over the limit, but other processes left the model less than a core and the best
      case is within it: the machine may be what was slow, inconclusive;
    - `straddles`: the interval straddles the limit (the machine was too noisy to tell): inconclusive."""
    median, low, high, coverage = latency.gate_figure(budget)
    best = latency.best_case_ms()
    basis = f"{LATENCY_FIGURES[budget]} at batch 1"
    if latency.rounds > 1:
        basis += f": median of {latency.rounds} rounds, {coverage:.0%} interval {low:.4g}-{high:.4g} ms"
    if high <= limit:
        verdict, reason = "pass", "within"
    elif low <= limit:
        verdict, reason = "inconclusive", "straddles"
    elif not latency.contended:
        verdict, reason = "fail", "over"
    elif best > limit:
        verdict, reason = "fail", "best_case_over"
        basis += (
            f"; fastest call {latency.min_ms:.4g} ms while other processes used {latency.busy_elsewhere_cores:.1f} cores, "
            f"at best {best:.4g} ms unhindered"
        )
    else:
        verdict, reason = "inconclusive", "contended"
        basis += f"; fastest call {latency.min_ms:.4g} ms"
    extra = {"interval": [low, high], "rounds": latency.rounds, "reason": reason, "best_case_ms": round(best, 5)}
    if latency.busy_elsewhere_cores is not None:
        extra["busy_elsewhere_cores"] = round(latency.busy_elsewhere_cores, 2)
    return _verdict(budget, limit, median, verdict, basis, **extra)


def budget_verdicts(
    budget: Budget,
    latency: LatencyStats | None,
    accuracy: float | None,
    teacher_accuracy: float | None,
    agreement: float | None,
    int8_drop: tuple[float, str] | None = None,
    unreadable: int = 0,
    *,
    comparison: dict | None = None,
    teacher_class_share: dict | None = None,
) -> list[dict]:
    """One verdict per budget; without labels, accuracy budgets are judged on teacher agreement. Latency budgets are
    judged across rounds (latency_verdict); `comparison` is compare_outputs' dict, None when no PyTorch reference ran;
    `teacher_class_share` is stages.select.teacher_class_share of the run's selection stats (a collapsed teacher)."""
    measured_acc = accuracy if accuracy is not None else agreement
    basis = "accuracy" if accuracy is not None else "teacher agreement"
    if accuracy is not None and teacher_accuracy is not None:
        drop = teacher_accuracy - accuracy
    else:
        drop = 1.0 - agreement if agreement is not None else None
    verdicts = []
    for name in LATENCY_FIGURES:
        limit = getattr(budget, name)
        if limit is not None:
            verdicts.append(
                latency_verdict(name, limit, latency) if latency else _verdict(name, limit, None, "fail", "latency not measured")
            )
    if budget.min_accuracy is not None:
        verdicts.append(
            _verdict("min_accuracy", budget.min_accuracy, measured_acc, _pass_or_fail(measured_acc >= budget.min_accuracy), basis)
        )
    if budget.max_accuracy_drop is not None:
        verdicts.append(
            _verdict(
                "max_accuracy_drop",
                budget.max_accuracy_drop,
                drop,
                _pass_or_fail(drop <= budget.max_accuracy_drop),
                f"teacher minus student {basis}",
            )
        )
    if budget.max_unreadable is not None:
        verdicts.append(
            _verdict(
                "max_unreadable",
                budget.max_unreadable,
                unreadable,
                _pass_or_fail(unreadable <= budget.max_unreadable),
                "files of the evaluation set that could not be read",
            )
        )
    if budget.max_int8_drop is not None:
        measured, int8_basis = int8_drop if int8_drop is not None else (None, "no INT8 model was measured")
        verdicts.append(
            _verdict(
                "max_int8_drop",
                budget.max_int8_drop,
                measured,
                _pass_or_fail(measured is not None and measured <= budget.max_int8_drop),
                int8_basis,
            )
        )
    for name, key, within in (
        ("max_output_diff", "max_abs_diff", lambda m, limit: m <= limit),
        ("min_agreement_with_fp32", "top1_agreement", lambda m, limit: m >= limit),
    ):
        limit = getattr(budget, name)
        if limit is None:
            continue
        measured = (comparison or {}).get(key)
        if measured is None:
            verdicts.append(_verdict(name, limit, None, "fail", "not measured: no PyTorch fp32 student ran on this target's inputs"))
        else:
            samples = comparison.get("samples")
            verdicts.append(
                _verdict(
                    name,
                    limit,
                    measured,
                    _pass_or_fail(within(measured, limit)),
                    f"{key} {COMPARISON_BASIS}" + (f" ({samples} images)" if samples else ""),
                )
            )
    if budget.max_teacher_class_share is not None:
        limit = budget.max_teacher_class_share
        if teacher_class_share is None:
            verdicts.append(_verdict("max_teacher_class_share", limit, None, "fail", "not measured: no selection stats of a scored pool"))
        else:
            share = teacher_class_share["share"]
            verdicts.append(
                _verdict(
                    "max_teacher_class_share",
                    limit,
                    share,
                    _pass_or_fail(share <= limit),
                    f"the teacher's top-1 class {teacher_class_share['class']} over the {teacher_class_share['scored']} scored pool images",
                )
            )
    return verdicts


@dataclass
class Int8Reference:
    """The fp32 student's score on the eval set, and the drop student.int8.onnx shows on ONNX Runtime CPU."""

    fp32_score: float
    cpu_drop: float
    basis: str


def measure_int8(
    fp32_model: Path, int8_model: Path, eval_set: EvalSet, spec: InputSpec, teacher_pred: np.ndarray | None
) -> tuple[dict, Int8Reference]:
    """Both models on ONNX Runtime CPU over the same eval set: accuracy (teacher agreement without labels) and the drop."""
    x = normalize(torch.from_numpy(eval_set.images), spec).numpy()
    preds = {}
    for key, path in (("fp32", fp32_model), ("int8", int8_model)):
        runner = OnnxRuntimeRunner(path)
        preds[key] = np.concatenate([runner.infer(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1)
    truth, basis = (eval_set.labels, "accuracy") if eval_set.labels is not None else (teacher_pred, "teacher agreement")
    fp32_score, int8_score = (float((preds[k] == truth).mean()) for k in ("fp32", "int8"))
    summary = {
        "basis": basis,
        "fp32": fp32_score,
        "int8": int8_score,
        "drop": fp32_score - int8_score,
        "int8_agrees_with_fp32": float((preds["int8"] == preds["fp32"]).mean()),
        "samples": len(x),
        "runtime": "onnxruntime CPU",
    }
    return summary, Int8Reference(fp32_score, fp32_score - int8_score, basis)


def validate_target(
    target: TargetSpec,
    model: Path,
    eval_set: EvalSet,
    spec: InputSpec,
    teacher_pred: np.ndarray | None,
    teacher_accuracy: float | None,
    on_progress: Callable[[int], None] | None = None,
    *,
    int8_reference: Int8Reference | None = None,
    duration_s: float | None = None,
    reference_logits: np.ndarray | None = None,
    sweep: bool = True,
    engine_path: Path | None = None,
    teacher_class_share: dict | None = None,
) -> TargetResult:
    """Runs the exported model on one target; a target that fails to run is recorded, not fatal for the others.

    Without teacher predictions (a model validated on its own) agreement stays None; an empty eval set
    measures latency only. `duration_s` times batch 1 for that long instead of `target.iterations` calls
    (local onnxruntime and tensorrt runners only). `reference_logits` (the PyTorch fp32 student's on the same images)
    make the cross-runtime comparison; `sweep` times every one of `target.batch_sizes`, else only the largest;
    `engine_path` receives the engine plan a TensorRT runtime built; `teacher_class_share` judges
    max_teacher_class_share (budget_verdicts).

    An inconclusive latency verdict is handled here, as `target.on_inconclusive` says: `retry N` re-times up to N times
    with twice the rounds and calls each time (the last measurement is kept, each verdict records `retries` and the
    `earlier` measurements); `fail`/`pass` decide it (results.report.decide_inconclusive).
    """
    result = TargetResult(target.name, target.runtime, precision=target.precision)
    runner = None
    try:
        runner = create_runner(target, model)
        x = normalize(torch.from_numpy(eval_set.images), spec).numpy()
        if len(x):
            chunk = getattr(runner, "infer_batch", 256) or len(x)
            logits = []
            for i in range(0, len(x), chunk):
                logits.append(runner.infer(x[i : i + chunk]))
                if on_progress:
                    on_progress(len(x[i : i + chunk]))
            logits = np.concatenate(logits)
            pred = logits.argmax(1)
            if reference_logits is not None:
                result.comparison = compare_outputs(logits, reference_logits)
            if teacher_pred is not None:
                result.agreement = float((pred == teacher_pred).mean())
            if eval_set.labels is not None:
                result.accuracy = float((pred == eval_set.labels).mean())
        int8_drop = _int8_drop(result, int8_reference)
        result.int8_drop = int8_drop[0] if int8_drop else None

        def judge(stats: LatencyStats) -> list[dict]:
            return budget_verdicts(
                target.budget,
                stats,
                result.accuracy,
                teacher_accuracy,
                result.agreement,
                int8_drop,
                len(eval_set.unreadable),
                comparison=result.comparison,
                teacher_class_share=teacher_class_share,
            )

        latency = time_rounds(runner, 1, target.warmup, target.iterations, target.rounds, duration_s)
        result.verdicts = judge(latency)
        policy, retries = parse_on_inconclusive(target.on_inconclusive)
        earlier: list[dict] = []
        while policy == "retry" and len(earlier) < retries and any(_unsure_latency(v) for v in result.verdicts):
            earlier.append({v["budget"]: _measurement(v) for v in result.verdicts if v["budget"] in LATENCY_FIGURES})
            factor = 2 ** len(earlier)
            latency = time_rounds(
                runner,
                1,
                target.warmup,
                target.iterations * factor,
                min(100, target.rounds * factor),
                duration_s * factor if duration_s else None,
            )
            result.verdicts = judge(latency)
        for v in result.verdicts:
            if earlier and v["budget"] in LATENCY_FIGURES:
                v["retries"] = len(earlier)
                v["earlier"] = [e[v["budget"]] for e in earlier if v["budget"] in e]
        if policy in ("fail", "pass"):
            result.verdicts = decide_inconclusive(result.verdicts, policy)
        result.latency = latency.as_dict()
        result.latency_samples_ms = [round(float(v), 5) for v in latency.samples_ms]
        batches = sorted(set(target.batch_sizes)) if sweep else [max(target.batch_sizes)]
        fixed = onnx_info(model).batch if model.suffix == ".onnx" else None
        batches = [fixed] if fixed else batches  # a model exported for one batch size runs only that one
        for b in batches:
            stats = latency if b == 1 else runner.time(b, max(1, target.warmup // 4), max(10, target.iterations // 10))
            result.batch_sweep.append({k: getattr(stats, k) for k in ("batch", "p50_ms", "p99_ms", "throughput_per_s")})
        result.throughput = {"batch": result.batch_sweep[-1]["batch"], "throughput_per_s": result.batch_sweep[-1]["throughput_per_s"]}
        result.facts = runner.facts()
        if engine_path is not None and runner.save_engine(engine_path):
            result.facts["engine_plan"] = engine_path.name
    except EdgeDistillError as exc:
        if exc.exit_code == 2:
            raise
        result.error = str(exc)
    finally:
        if runner is not None:
            runner.close()
    return result


def _unsure_latency(verdict: dict) -> bool:
    return verdict["budget"] in LATENCY_FIGURES and verdict["verdict"] == "inconclusive"


def _measurement(verdict: dict) -> dict:
    """What a retry replaced: the earlier verdict of one latency budget, for the record."""
    return {k: verdict.get(k) for k in ("verdict", "reason", "measured", "interval", "rounds")}


def compare_outputs(logits: np.ndarray, reference: np.ndarray) -> dict:
    """As polygraphy's comparator: how far a runtime's logits are from the PyTorch student's on the same images.

    `max_rel_diff` is relative to the reference's largest |logit|, not elementwise: logits near zero would make an
    elementwise ratio meaningless."""
    diff = np.abs(logits.astype(np.float64) - reference.astype(np.float64))
    scale = float(np.abs(reference).max()) or 1.0
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "max_rel_diff": float(diff.max() / scale),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "samples": len(logits),
        "reference": "PyTorch fp32 student",
    }


def _int8_drop(result: TargetResult, reference: Int8Reference | None) -> tuple[float, str] | None:
    """An int8 target's own drop from the fp32 student; any other target is judged on the CPU INT8 model's drop."""
    if reference is None:
        return None
    if result.precision != "int8":
        return reference.cpu_drop, f"fp32 minus INT8 student {reference.basis}, student.int8.onnx on onnxruntime CPU"
    score = result.accuracy if reference.basis == "accuracy" else result.agreement
    if score is None:
        return None
    return reference.fp32_score - score, f"fp32 student minus this INT8 target's {reference.basis}"


def model_input_spec(model: Path, mean: list[float] | None = None, std: list[float] | None = None) -> tuple[InputSpec, dict]:
    """Input size and channels from the ONNX input; mean/std from the arguments, else from edgedistill's metadata."""
    info = onnx_info(model)
    channels, height, width = info.image_input("an image classifier")
    if channels not in (1, 3):
        raise BadInput(f"{model}: input has {channels or 'a dynamic number of'} channels; image classifiers here take 1 or 3")
    if height is None or height != width:
        raise BadInput(f"{model}: input is {height or '?'}x{width or '?'}; a fixed square input size is needed")
    meta = info.metadata
    mean, std = mean or meta.get("mean"), std or meta.get("std")
    if not mean or not std:
        raise BadInput(f"{model} records no mean/std; pass them, e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225")
    mean, std = (list(v) * channels if len(v) == 1 else list(v) for v in (mean, std))
    try:
        return InputSpec(channels=channels, size=height, mean=mean, std=std), meta
    except ValidationError as exc:
        raise BadInput(f"--mean/--std: {exc.errors()[0]['msg']}") from None


# The model-file mode's settings beside the target's (TargetSpec's fields, budget included): what a model on its own
# needs that a recipe says elsewhere. `also_time` is left out: a model file has no other models to time.
MODEL_FILE_OPTIONS = ("labeled", "mean", "std", "limit", "duration_s")


def model_file_target_fields() -> tuple[str, ...]:
    """The target keys `validate MODEL.onnx` takes: every target's (but also_time) and every runtime's options."""
    return (*(name for name in TargetSpec.model_fields if name != "also_time"), *option_keys())


@dataclass
class Reference:
    """What a run compares the gated model with: the teacher's predictions and accuracy on the eval set, the PyTorch
    fp32 student's logits, the INT8 student's score (measure_int8) and the teacher's class share of the scored pool.
    A model file validated on its own has none of them."""

    teacher_pred: np.ndarray
    teacher_accuracy: float | None
    student_logits: np.ndarray
    int8: Int8Reference | None = None
    teacher_class_share: dict | None = None


@dataclass
class Gated:
    """One target to validate: its spec (paths resolved, invocation overrides applied), the model file it gates, and
    where the engine plan a TensorRT runtime builds goes (None: not kept)."""

    target: TargetSpec
    model: Path
    engine_path: Path | None = None


def eval_summary(eval_set: EvalSet) -> dict:
    """report.json's `eval` section."""
    return {
        "name": eval_set.name,
        "samples": len(eval_set.images),
        "labeled": eval_set.labels is not None,
        "unreadable": len(eval_set.unreadable),
        "unreadable_examples": eval_set.unreadable[:5],
    }


def validate_and_report(
    run: RunDir,
    name: str,
    gated: list[Gated],
    eval_set: EvalSet,
    spec: InputSpec,
    reference: Reference | None = None,
    *,
    sections: Callable[[list[TargetResult]], dict] = lambda results: {},
    prefix: str = "",
    duration_s: float | None = None,
    progress: Callable[[Gated], Callable[[int], None] | None] = lambda gated: None,
    then: Callable[[Gated, TargetResult], None] = lambda gated, result: None,
) -> tuple[dict, list[TargetResult]]:
    """The one validation path of `compress`, `validate --run-dir` and `validate MODEL.onnx` (and the Python API's
    `validate`): validates each target in turn (validate_target), then writes latency_samples.json, report.json and the
    CI gate files under `run`/`prefix`, and returns the report and the targets' results.

    `reference` is what a run compares with (None for a model on its own: no agreement, comparison or INT8 drop);
    `sections(results)` gives the report's other sections (Report's fields: `model` for a model file, teacher ...
    history and plan for a run); `progress(gated)` returns the progress callback of that target's
    eval images; `then(gated, result)` runs after each target (the run's deployment table times its other models)."""
    results = []
    for item in gated:
        result = validate_target(
            item.target,
            item.model,
            eval_set,
            spec,
            reference.teacher_pred if reference else None,
            reference.teacher_accuracy if reference else None,
            progress(item),
            int8_reference=reference.int8 if reference else None,
            duration_s=duration_s,
            reference_logits=reference.student_logits if reference else None,
            engine_path=item.engine_path,
            teacher_class_share=reference.teacher_class_share if reference else None,
        )
        results.append(result)
        then(item, result)
    report = Report(
        name=name,
        eval=eval_summary(eval_set),
        targets=[target_entry(result, item.target.budget) for result, item in zip(results, gated)],
        versions=package_versions(),
        **sections(results),
    ).as_json()
    atomic_write_json(
        run.artifact(f"{prefix}latency_samples.json"),
        {t.name: {"batch": 1, "samples_ms": t.latency_samples_ms} for t in results if t.latency_samples_ms},
    )
    atomic_write_json(run.artifact(f"{prefix}report.json"), report)
    run.artifact(*(f"{prefix}{file}" for file in GATE_FILES))
    write_gate_files(run.path / prefix, report)
    return report, results


def model_file_target(given: dict | None = None) -> TargetSpec:
    """The target of `validate MODEL.onnx` from the options given (TargetSpec's fields, `budget` a Budget or its dict);
    every one not given is the schema's default, and the target is named after its runtime unless `name` is given."""
    given = dict(given or {})
    fields = model_file_target_fields()
    unknown = [key for key in given if key not in fields]
    if unknown:
        raise BadInput(f"{unknown[0]}: a model file is validated with {', '.join(fields)}")
    try:
        target = TargetSpec(**{"name": "-", **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        raise BadInput(f"{where}: {err['msg']}" if where else err["msg"]) from None
    return target if "name" in given else target.model_copy(update={"name": target.runtime})


def validate_model_file(
    model: Path,
    out_dir: Path,
    target: TargetSpec | dict | None = None,
    *,
    labeled: Path | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    limit: int | None = None,
    duration_s: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Gates any ONNX image classifier, not only edgedistill's: accuracy on a labeled folder, latency on one target.

    `target` is a TargetSpec, or the options given for one (model_file_target: the rest are the schema's defaults).
    Writes report.json, latency_samples.json and the CI gate files to `out_dir` (validate_and_report, as `compress`
    does); returns the report.
    """
    model = Path(model)
    target = target if isinstance(target, TargetSpec) else model_file_target(target)
    budget = target.budget
    needs_reference = [name for name in REFERENCE_BUDGETS if getattr(budget, name) is not None]
    if needs_reference:
        usable = [name for name in Budget.model_fields if name not in REFERENCE_BUDGETS]
        raise BadInput(
            f"--budget {needs_reference[0]}: a model on its own has no teacher or PyTorch fp32 reference; "
            f"--budget takes {', '.join(usable)} here"
        )
    if target.runtime not in RUNTIMES:
        raise BadInput(f"--runtime {target.runtime!r}: use one of {', '.join(RUNTIMES)}")
    if duration_s is not None and not RUNTIMES[target.runtime].timed_by_duration:
        raise BadInput(f"--duration: {target.runtime} runs a fixed number of calls; use --iterations")
    if budget.min_accuracy is not None and labeled is None:
        raise BadInput("--budget min_accuracy needs --labeled FOLDER (one subfolder of images per class)")
    spec, meta = model_input_spec(model, mean, std)
    info = onnx_info(model)
    if info.num_classes() is None:
        name, dims = info.outputs[0] if info.outputs else ("(none)", ())
        raise BadInput(
            f"{model}: not an image classifier: its output {name!r} has shape {list(dims)}, not (batch, classes) "
            "logits; give the model's classification output"
        )
    if info.quantized and RUNTIMES[target.runtime].builds_engine and target.precision == "fp32":
        target = target.model_copy(update={"precision": "int8"})  # TensorRT only honours Q/DQ ranges with INT8 enabled
    check_target(target)
    if labeled is not None:
        eval_set = read_class_folders(
            Path(labeled), spec, meta.get("class_names") or None, info.num_classes(), limit, what="--labeled", sorted_fallback=True
        )
    else:
        eval_set = EvalSet("none (latency only)", np.zeros((0, spec.channels, spec.size, spec.size), np.uint8), None)
    described = {
        "path": str(model.resolve()),
        "sha256": info.digest(),
        "bytes": model.stat().st_size,
        "opset": info.opset,
        "quantized": info.quantized,
        "input": spec.model_dump(),
        "metadata": {k: v for k, v in meta.items() if k != "class_names"},
    }
    run = RunDir(out_dir)
    run.open()  # before measuring: a folder of someone else's files, or one in use, is refused first
    try:
        report, _ = validate_and_report(
            run,
            model.stem,
            [Gated(target, model)],
            eval_set,
            spec,
            sections=lambda results: {"model": described},
            duration_s=duration_s,
            progress=lambda gated: on_progress,
        )
        return report
    finally:
        run.close()
