"""Plan: choose the student for the device before distilling it (docs/plan.md).

Every candidate (student.candidates, or the zoo's ladder for `arch: auto`) is built untrained, exported, made into
the precision each target runs (INT8 Q/DQ calibrated on a few selected pool images, FP16) and timed on that target
exactly as the gate times the student (validate_target: the same runner, warm-up, rounds, retries and verdict
statistics). A candidate fits when every latency budget of every target passes: an inconclusive verdict is not a fit.
Among those that fit, the `probe_top` largest get a short distillation probe (`probe_steps` steps on the selection's
training split) and the one that agrees most with the teacher on the selection's hold-out is chosen: no label and no
evaluation image is read. Timings are cached by architecture, input shape, classes, precision, runtime, timing
settings and device facts in a JSON file that runs and machines of the same kind can share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from ..atomic import atomic_write_json
from ..backends import RUNTIMES, runtime_options
from ..backends.base import LatencyStats, machine_facts
from ..config.schema import Budget, InputSpec, Recipe, StudentSpec, TargetSpec
from ..errors import BadInput, BudgetFailed, EdgeDistillError, TargetUnavailable
from ..inputs.labeled import EvalSet
from ..models.factory import build_student_model, count_parameters, model_structure, student_candidates
from ..results import report
from ..results.plan import PLAN_PAGES, print_plan, write_plan_files
from ..version import __version__
from .distill import distill
from .export import export_onnx, first_line, make_file
from .stage import Progress, RunContext, Stage
from .validate import LATENCY_FIGURES, latency_verdict, predict_torch, validate_target

log = logging.getLogger("edgedistill")

PLAN_FILE = "plan.json"  # the whole plan: every candidate, its timings and verdicts, the probe, the choice
CHOICE_FILE = "plan_choice.json"  # the chosen student only: the plan stage's recorded output, what distill depends on
PROBE_FILE = "plan_probe.json"  # probe agreements of this run, keyed by what they depend on: a re-plan does not retrain
CACHE_ENV = "EDGEDISTILL_LATENCY_CACHE"
CACHE_VERSION = 1


def default_cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgedistill" / "latency-cache.json")


def cache_path(recipe: Recipe) -> Path:
    configured = recipe.student.plan.cache
    return recipe.resolve(configured) if configured is not None else default_cache_path()


# ---------------------------------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    arch: str
    feature_layer: str | None
    model: nn.Module
    parameters: int
    mflops: float | None


def model_mflops(model: nn.Module, spec: InputSpec) -> float | None:
    """Floating-point operations of one image, in millions, as torch's FlopCounterMode counts them (a multiply-add is
    2); None when the model cannot be traced by it."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.zeros(1, spec.channels, spec.size, spec.size))
        return counter.get_total_flops() / 1e6
    except Exception:  # an exotic user model: the table shows "-"
        return None
    finally:
        model.train(was_training)


def build_candidates(recipe: Recipe, where: str = "student") -> list[Candidate]:
    """Every candidate built once at the teacher's input and classes; a name that is unknown, or a model that cannot
    take the teacher's input, is one BadInput line naming the candidate, before any timing."""
    t = recipe.teacher
    found = []
    for arch, layer in student_candidates(recipe.student, t.input.channels, t.input.size):
        try:
            torch.manual_seed(recipe.seed)
            model = build_student_model(arch, t.num_classes, t.input, layer, recipe.base_dir).eval()
        except BadInput as exc:
            raise BadInput(f"{where}: candidate {arch!r}: {exc}") from None
        found.append(Candidate(arch, layer, model, count_parameters(model), model_mflops(model, t.input)))
    return found


# ---------------------------------------------------------------------------------------------------- latency cache


def _runtime_version(runtime: str) -> str | None:
    for dist in {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",), "tensorrt": ("tensorrt",)}.get(runtime, ()):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def device_facts(target: TargetSpec) -> dict:
    """What a timing depends on besides the model, known before anything runs: the runtime and its version here, or
    the ssh destination and the runtime's path there; the CPU model and usable cores of this machine; the target's
    threads, providers and timing settings. Two machines with the same facts share cache entries."""
    options = runtime_options(target)
    facts: dict = {
        "runtime": target.runtime,
        "threads": getattr(options, "threads", 1),
        "providers": getattr(options, "providers", None),
        "warmup": target.warmup,
        "iterations": target.iterations,
        "rounds": target.rounds,
    }
    if target.ssh:
        facts["ssh"] = target.ssh
        facts["remote"] = getattr(options, "trtexec", None) or getattr(options, "remote_python", "python3")
    else:
        here = machine_facts()
        facts.update(
            version=_runtime_version(target.runtime),
            cpu_model=here["cpu_model"],
            usable_cpus=here["usable_cpus"],
            machine=here["machine"],
        )
        if target.runtime == "trtexec":
            facts["trtexec"] = options.trtexec
    return facts


def cache_key(arch: str, model: nn.Module, num_classes: int, spec: InputSpec, precision: str, target: TargetSpec) -> dict:
    return {
        "arch": arch,
        "structure": model_structure(model),
        "input": [spec.channels, spec.size, spec.size],
        "classes": num_classes,
        "precision": precision,
        **device_facts(target),
    }


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


class LatencyCache:
    """{"version": 1, "entries": {digest: {"key", "latency", "facts", "measured_at"}}} in one JSON file. Reads
    tolerate a missing or corrupt file (nothing cached); writes merge with what is on disk under a file lock, so runs
    sharing the file never lose each other's entries. Only measurements that were neither contended nor noisy are
    stored: a figure the machine may have spoiled is measured again next time."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.entries: dict[str, dict] = self._read()
        self.hits = self.misses = 0

    def _read(self) -> dict[str, dict]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("plan: latency cache %s not readable (%s); timing anew", self.path, exc)
            return {}
        return data.get("entries", {}) if isinstance(data, dict) and data.get("version") == CACHE_VERSION else {}

    def get(self, key: dict) -> dict | None:
        entry = self.entries.get(_digest(key))
        if entry is not None and entry.get("key") == json.loads(json.dumps(key, default=str)):
            self.hits += 1
            return entry
        self.misses += 1
        return None

    def put(self, key: dict, latency: dict, facts: dict) -> None:
        if latency.get("contended") or latency.get("noisy"):
            return
        entry = {"key": key, "latency": latency, "facts": facts, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.entries[_digest(key)] = json.loads(json.dumps(entry, default=str))
        if self.path is None:
            return
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            on_disk = self._read()
            on_disk.update({_digest(key): self.entries[_digest(key)]})
            atomic_write_json(self.path, {"version": CACHE_VERSION, "entries": on_disk})
            self.entries = on_disk | self.entries


# ---------------------------------------------------------------------------------------------------- timing


def latency_budget(budget: Budget) -> Budget:
    """The latency part of a target's budget: what a plan judges (accuracy needs a trained student)."""
    return Budget(**{name: getattr(budget, name) for name in LATENCY_FIGURES if getattr(budget, name) is not None})


def latency_stats(latency: dict) -> LatencyStats:
    fields = set(LatencyStats.__dataclass_fields__) - {"samples_ms"}
    return LatencyStats(**{k: v for k, v in latency.items() if k in fields})


def judge(target: TargetSpec, latency: dict) -> list[dict]:
    """The gate's latency verdicts (latency_verdict) of every latency budget of the target, as measured: an
    inconclusive verdict stays inconclusive whatever `on_inconclusive` says, as a plan never calls it a fit."""
    stats = latency_stats(latency)
    return [latency_verdict(name, limit, stats) for name in LATENCY_FIGURES if (limit := getattr(target.budget, name)) is not None]


def time_model(target: TargetSpec, model: Path, spec: InputSpec) -> tuple[dict | None, dict, str | None]:
    """(latency, facts, error) of a model file on a target, measured by validate_target as the gate measures: batch 1,
    the target's warm-up, iterations and rounds, and its `on_inconclusive` retries; no evaluation images."""
    timed = target.model_copy(update={"budget": latency_budget(target.budget), "batch_sizes": [1], "also_time": []})
    nothing = EvalSet("none (plan: latency only)", np.zeros((0, spec.channels, spec.size, spec.size), np.uint8), None)
    result = validate_target(timed, model, nothing, spec, None, None, sweep=False)
    return result.latency, result.facts, result.error


def precision_file(
    target: TargetSpec, fp32: Path, calibration: np.ndarray, recipe: Recipe, made: dict[str, Path], student: nn.Module | None = None
) -> Path:
    """The file a target runs at its precision, made once per candidate (`made`) by the maker its runtime's row names
    (backends/runtime.py), as the export stage makes it: fp32 itself, the INT8 copy of the runtime's kind calibrated on
    selected pool images, the FP16 copy, or a file of the runtime's own (LiteRT's .tflite, from the PyTorch student)."""
    artifact = RUNTIMES[target.runtime].artifact_for(target.precision)
    if artifact.make is None:
        return fp32
    if artifact.file not in made:
        out = fp32.with_name(f"candidate.{artifact.file}")
        make_file(artifact, recipe, fp32, out, calibration, student, max_samples=recipe.student.plan.calibration)
        made[artifact.file] = out
    return made[artifact.file]


# ---------------------------------------------------------------------------------------------------- probe


def probe_schedule(train: int, batch: int, steps: int) -> tuple[int, int, int]:
    """(images, epochs, batch) that give `steps` optimizer steps (at least) on at most all of `train` images."""
    batch = max(2, min(batch, train))
    per_epoch = max(1, min(train // batch, steps))
    return per_epoch * batch, math.ceil(steps / per_epoch), batch


def probe_agreement(
    teacher: nn.Module,
    candidate: Candidate,
    train: np.ndarray,
    holdout: np.ndarray,
    holdout_pred: np.ndarray,
    recipe: Recipe,
    compute=None,
) -> float:
    """Teacher agreement on the selection's hold-out of the candidate after `plan.probe_steps` distillation steps on
    the selection's training split, with the recipe's losses and augmentation: labels are never read."""
    r, spec = recipe, recipe.teacher.input
    images, epochs, batch = probe_schedule(len(train), r.distill.batch_size, r.student.plan.probe_steps)
    order = np.sort(np.random.default_rng(r.seed).permutation(len(train))[:images])
    torch.manual_seed(r.seed)
    student = build_student_model(candidate.arch, r.teacher.num_classes, spec, candidate.feature_layer, r.base_dir)
    settings = r.distill.model_copy(update={"epochs": epochs, "batch_size": batch, "keep": "last", "resample": None})
    result = distill(teacher, student, np.asarray(train[order]), settings, r.class_drop, spec, r.seed, compute=compute)
    return float((predict_torch(result.student.cpu(), holdout, spec).argmax(1) == holdout_pred).mean())


# ---------------------------------------------------------------------------------------------------- the plan


def _fits(row: dict) -> str:
    """fit, miss, inconclusive or unmeasured over all targets of a candidate's row."""
    verdicts = [v["verdict"] for t in row["targets"] for v in t["verdicts"]]
    if any(t["error"] for t in row["targets"]):
        return "unmeasured"
    if "fail" in verdicts:
        return "miss"
    if "inconclusive" in verdicts:
        return "inconclusive"
    return "fit"


def _shortfall(row: dict) -> float:
    """How far the candidate is from fitting: the largest measured/limit ratio of its latency budgets."""
    ratios = [v["measured"] / v["limit"] for t in row["targets"] for v in t["verdicts"] if v["measured"] is not None]
    return max(ratios, default=math.inf)


def near_misses(plan: dict, limit: int = 3) -> list[dict]:
    """The candidates closest to fitting, each with what would make it fit: a looser budget (the median it measured,
    per target and budget), another precision the runtime runs, a smaller input (latency taken as proportional to
    pixels, a rough guide only)."""
    rows = sorted((r for r in plan["candidates"] if r["fits"] != "fit"), key=_shortfall)[:limit]
    out = []
    for row in rows:
        fixes, ratio = [], _shortfall(row)
        for t in row["targets"]:
            for v in t["verdicts"]:
                if v["verdict"] != "pass" and v["measured"] is not None:
                    fixes.append(f"{t['target']}: {v['budget']} >= {v['interval'][1]:.3g} ms (measured {v['measured']:.3g})")
            others = [p for p in RUNTIMES[t["runtime"]].precisions if p != t["precision"]]
            if others and any(v["verdict"] != "pass" for v in t["verdicts"]):
                fixes.append(f"{t['target']}: try precision {' or '.join(others)}")
        size = plan["input"][1]
        if math.isfinite(ratio) and ratio > 1:
            fixes.append(f"a smaller input: about {max(8, int(size / math.sqrt(ratio)))} px instead of {size} (a guess: latency ~ pixels)")
        out.append({"arch": row["arch"], "fits": row["fits"], "over_by": None if not math.isfinite(ratio) else ratio - 1, "fixes": fixes})
    return out


def plan_students(
    recipe: Recipe,
    teacher: nn.Module,
    train: np.ndarray,
    holdout: np.ndarray,
    work_dir: Path,
    *,
    compute=None,
    probe_cache: dict | None = None,
    probe_key: dict | None = None,
    on_step: Callable[[str], None] | None = None,
) -> dict:
    """The plan of a recipe with candidates: every candidate timed on every target (from the cache where it can),
    the fitting ones probed, one chosen. Returns the plan dict (PLAN_FILE) with `chosen` None when none fits;
    `probe_cache` (arch -> agreement, filled in place) spares a re-plan the probe, valid for `probe_key`."""
    r, spec = recipe, recipe.teacher.input
    say = on_step or (lambda _: None)
    started = time.perf_counter()
    candidates = build_candidates(r)
    cache = LatencyCache(cache_path(r))
    targets = [t.resolved(r) for t in r.targets]
    timed_s = 0.0
    rows = []
    for c in candidates:
        row = {"arch": c.arch, "feature_layer": c.feature_layer, "parameters": c.parameters, "mflops": c.mflops, "targets": []}
        made: dict[str, Path] = {}
        with tempfile.TemporaryDirectory(prefix=".plan.", suffix=".part", dir=work_dir) as scratch:
            for target in targets:
                key = cache_key(c.arch, c.model, r.teacher.num_classes, spec, target.precision, target)
                entry = cache.get(key)
                if entry is not None and any(v["verdict"] == "inconclusive" for v in judge(target, entry["latency"])):
                    entry = None  # a cached figure this budget cannot settle is measured again, like the gate's retry
                    cache.hits, cache.misses = cache.hits - 1, cache.misses + 1
                error = None
                if entry is not None:
                    latency, facts, source = entry["latency"], entry["facts"], "cache"
                else:
                    say(f"timing {c.arch} on {target.name} ({target.runtime} {target.precision})")
                    t0 = time.perf_counter()
                    try:  # a candidate the exporters or the quantizer cannot take is recorded, not fatal
                        if "fp32" not in made:
                            made["fp32"] = export_onnx(c.model, spec, Path(scratch) / "candidate.onnx", r.teacher.class_names)
                        model = precision_file(target, made["fp32"], train, r, made, c.model)
                    except Exception as exc:  # BadInput from our exporter, or whatever torch.onnx or ORT raise
                        model, error = None, f"not exported at {target.precision}: {first_line(exc)}"
                    latency, facts = None, {}
                    if model is not None:
                        latency, facts, error = time_model(target, model, spec)  # a target's BadInput ends the plan
                    timed_s += time.perf_counter() - t0
                    source = "measured"
                verdicts = judge(target, latency) if latency is not None else []
                if source == "measured" and latency is not None and error is None and all(v["verdict"] != "inconclusive" for v in verdicts):
                    cache.put(key, latency, facts)  # an inconclusive figure is measured again next time, never kept
                row["targets"].append(
                    {
                        "target": target.name,
                        "runtime": target.runtime,
                        "precision": target.precision,
                        "latency": None
                        if latency is None
                        else {
                            k: latency.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "rounds", "noisy", "contended")
                        }
                        | {"p50_interval": _interval(latency, "p50_ms"), "p99_interval": _interval(latency, "p99_ms")},
                        "verdicts": verdicts,
                        "source": source,
                        "facts": {
                            k: facts.get(k)
                            for k in ("version", "cpu_model", "usable_cpus", "device_model", "gpu", "tensorrt", "power_mode")
                            if facts.get(k) is not None
                        },
                        "error": error,
                    }
                )
        row["fits"] = _fits(row)
        rows.append(row)
        log.info("plan: %s %s", c.arch, row["fits"])
    fitting = [row for row in rows if row["fits"] == "fit"]
    plan: dict = {
        "teacher": r.teacher.arch,
        "input": [spec.channels, spec.size, spec.size],
        "classes": r.teacher.num_classes,
        "targets": [
            {
                "name": t.name,
                "runtime": t.runtime,
                "precision": t.precision,
                "budget": latency_budget(t.budget).model_dump(exclude_none=True),
            }
            for t in targets
        ],
        "candidates": rows,
        "cache": {"path": str(cache.path) if cache.path else None, "hits": cache.hits, "misses": cache.misses},
        "probe": {
            "steps": r.student.plan.probe_steps,
            "top": r.student.plan.probe_top,
            "batch_size": r.distill.batch_size,
            "train_images": len(train),
            "holdout_images": len(holdout),
            "basis": "teacher agreement on the selection's hold-out (no labels)",
        },
        "chosen": None,
        "why": None,
        "seconds": {"timing": round(timed_s, 2)},
    }
    if not fitting:
        plan["near_misses"] = near_misses(plan)
        plan["why"] = "no candidate meets every latency budget of every target"
        plan["seconds"]["total"] = round(time.perf_counter() - started, 2)
        return plan
    ranked = sorted(fitting, key=lambda row: (row["parameters"], row["mflops"] or 0), reverse=True)
    probed = ranked[: r.student.plan.probe_top]
    t0 = time.perf_counter()
    if r.student.plan.probe_steps > 0 and len(holdout) and len(train) >= 2 and len(probed) > 1:
        holdout_pred = predict_torch(teacher, holdout, spec).argmax(1)
        by_arch = {c.arch: c for c in candidates}
        for row in probed:
            key = _digest({"arch": row["arch"], "feature_layer": row["feature_layer"], **(probe_key or {})})
            if probe_cache is not None and key in probe_cache:
                row["probe_agreement"] = probe_cache[key]
                continue
            say(f"probing {row['arch']} ({r.student.plan.probe_steps} steps)")
            row["probe_agreement"] = probe_agreement(teacher, by_arch[row["arch"]], train, holdout, holdout_pred, r, compute)
            if probe_cache is not None:
                probe_cache[key] = row["probe_agreement"]
        best = max(probed, key=lambda row: (row["probe_agreement"], -row["parameters"]))
        others = sorted((row for row in probed if row is not best), key=lambda row: -row["probe_agreement"])
        plan["why"] = (
            f"highest teacher agreement on the selection's {len(holdout)} held-out images after a "
            f"{r.student.plan.probe_steps}-step distillation probe, among the {len(probed)} largest of {len(fitting)} "
            f"fitting candidates ({best['probe_agreement']:.1%}; next {others[0]['arch']} {others[0]['probe_agreement']:.1%})"
        )
    else:
        best = probed[0]
        reason = (
            "the only fitting candidate"
            if len(fitting) == 1
            else "probe off (probe_steps: 0)"
            if r.student.plan.probe_steps == 0
            else "probe_top: 1"
            if len(probed) == 1
            else "no hold-out images to probe on"
        )
        plan["why"] = f"the largest of {len(fitting)} fitting candidates ({reason})"
    unsure = [row["arch"] for row in rows if row["fits"] == "inconclusive"]
    if unsure:
        plan["why"] += f"; not considered, inconclusive on this machine: {', '.join(unsure)} (plan again on a quieter one)"
    plan["seconds"]["probe"] = round(time.perf_counter() - t0, 2)
    plan["seconds"]["total"] = round(time.perf_counter() - started, 2)
    plan["chosen"] = {"arch": best["arch"], "feature_layer": best["feature_layer"]}
    for row in rows:
        row["chosen"] = row is best
    return plan


def _interval(latency: dict, name: str) -> list[float] | None:
    values = (latency.get("per_round") or {}).get(name)
    if not values:
        return None
    _, low, high, _ = latency_stats(latency).gate_figure(name)
    return [low, high]


def no_fit_error(plan: dict) -> EdgeDistillError:
    """Exit 4 when a target could not be measured at all, else exit 3 (BudgetFailed) naming the nearest miss."""
    rows = plan["candidates"]
    if rows and all(row["fits"] == "unmeasured" for row in rows):
        first = next(t for t in rows[0]["targets"] if t["error"])
        return TargetUnavailable(f"plan: target {first['target']} could not time any candidate: {first['error']}")
    near = plan.get("near_misses") or []
    hint = ""
    if near:
        n = near[0]
        over = f" ({n['over_by']:.0%} over)" if n["over_by"] is not None else ""
        hint = f"; nearest: {n['arch']}{over}: " + "; ".join(n["fixes"][:3])
    inconclusive = [row["arch"] for row in rows if row["fits"] == "inconclusive"]
    extra = f"; inconclusive (too noisy to call a fit): {', '.join(inconclusive)}, retry on a quieter machine" if inconclusive else ""
    return BudgetFailed(f"plan: none of {len(rows)} candidates meets every latency budget of every target{hint}{extra}")


class PlanResult(BaseModel):
    """What the plan stage leaves: the plan (every candidate, its timings, the probe) and the student it chose."""

    plan: report.Plan | None = None
    student: StudentSpec


class PlanStage(Stage):
    """Chooses the student among the recipe's candidates before distilling it (docs/plan.md): writes plan.json,
    plan.md, plan.html and the choice; no fit ends the run with exit 3 after writing them. Only a recipe with student
    candidates has it; its probe reads the selection, never `eval`."""

    name = "plan"
    sections = ("seed", "teacher", "class_drop", "student", "distill", "export", "targets")
    after = ("select",)
    files = ("teacher",)
    writes = (PLAN_FILE, CHOICE_FILE, PROBE_FILE, *PLAN_PAGES)

    def applies(self, recipe: Recipe) -> bool:
        return recipe.student.planned

    def run(self, ctx: RunContext, progress: Progress) -> PlanResult:
        r, run = ctx.recipe, ctx.run
        if ctx.world.size > 1:
            raise BadInput(
                "plan: the candidates are probed in one process; run `edgedistill plan RECIPE --run-dir DIR` first, "
                "then torchrun ... compress RECIPE --run-dir DIR uses its choice"
            )
        train, holdout = ctx.split()
        task = progress.add_task("plan", total=None, info="building the candidates")
        try:
            probes = json.loads((run / PROBE_FILE).read_text())
        except (OSError, ValueError):
            probes = {}
        probe_key = {
            "select": run.output_digest("select"),
            "recipe": r.section("seed", "class_drop", "distill"),
            "steps": r.student.plan.probe_steps,
            "precision": str(ctx.compute.dtype),
            "edgedistill": __version__,
        }
        plan = plan_students(
            r,
            ctx.teacher,
            train,
            holdout,
            run.path,
            compute=ctx.compute,
            probe_cache=probes,
            probe_key=probe_key,
            on_step=lambda step: progress.update(task, advance=1, info=step),
        )
        atomic_write_json(run.artifact(PROBE_FILE), probes)
        atomic_write_json(run.artifact(PLAN_FILE), plan)
        run.artifact(*PLAN_PAGES)
        write_plan_files(run.path, plan, r.name)
        print_plan(ctx.console, plan)
        log.info("plan: %s", json.dumps({"chosen": plan["chosen"], "why": plan["why"], "seconds": plan["seconds"]}))
        if plan["chosen"] is None:
            run.remove(CHOICE_FILE)
            raise no_fit_error(plan)
        atomic_write_json(run.artifact(CHOICE_FILE), plan["chosen"])
        settled = all(row["fits"] != "inconclusive" for row in plan["candidates"])  # else the next run plans again
        run.mark_done("plan", ctx.inputs("plan"), [CHOICE_FILE], {"chosen": plan["chosen"], "seconds": plan["seconds"]}, final=settled)
        return PlanResult(plan=report.Plan.model_validate(plan), student=_student(plan["chosen"]))

    def read_result(self, ctx: RunContext) -> PlanResult | None:
        """None until a plan has chosen (CHOICE_FILE): the stages after it then have no student to work on."""
        try:
            choice = json.loads((ctx.run / CHOICE_FILE).read_text())
        except (OSError, ValueError):
            return None
        try:
            plan = report.Plan.model_validate(json.loads((ctx.run / PLAN_FILE).read_text()))
        except (OSError, ValueError):
            plan = None
        return PlanResult(plan=plan, student=_student(choice))


def _student(choice: dict) -> StudentSpec:
    return StudentSpec(arch=choice["arch"], feature_layer=choice.get("feature_layer"))
