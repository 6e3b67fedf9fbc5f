"""compress: select -> (class-drop +) distill -> export -> validate, in order, each stage skipped when its inputs are
unchanged, with progress shown and logged. The stages themselves are in edgedistill.stages."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path, atomic_write_json
from .backends import RUNTIMES
from .config.load import load_recipe
from .config.schema import Recipe
from .errors import BadInput
from .extensions import check_recipe
from .inputs.images import normalize
from .inputs.labeled import EvalSet, load_labeled
from .inputs.pool import build_pool, default_workers
from .models.checkpoint import fit_state_dict
from .models.factory import build_student_model, count_parameters
from .models.features import describe_feature_layer
from .models.teachers import load_teacher_model
from .results.gate import GATE_FILES, write_gate_files
from .results.html import write_report_html
from .results.report import Report, gate_error, target_entry
from .results.rundir import RunDir, fingerprint, package_versions
from .results.selection import Selection, load_selection, save_selection
from .scale.compute import resolve_compute
from .scale.distributed import barrier, broadcast_object, close_world, init_world, world
from .scale.throughput import bare_forward_rate, bare_step_rate
from .stages.deployment import measure_target, models_to_time, recommend, student_warnings
from .stages.distill import distill
from .stages.export import check_parity, export_onnx, first_line, parity_dict
from .stages.fp16 import convert_fp16
from .stages.quantize import quantize_int8
from .stages.select import holdout_last, select_pool, split_selection
from .stages.validate import measure_int8, predict_torch, validate_target
from .version import __version__

STAGES = ("select", "distill", "export", "validate")
INT8_MODELS = {"cpu": "student.int8.onnx", "tensorrt": "student.int8.trt.onnx"}  # by the runtime's int8_flavour
RANKED_STAGES = ("select", "distill")  # the stages every rank of a torchrun launch takes part in
log = logging.getLogger("edgedistill")


def load_teacher(recipe: Recipe) -> nn.Module:
    """From any source the recipe names (edgedistill.teacher), frozen, checked to run on the recipe's input."""
    t = recipe.teacher
    return load_teacher_model(t, recipe.resolve(t.weights) if t.weights is not None else None, recipe.base_dir)


def build_student(recipe: Recipe) -> nn.Module:
    t, s = recipe.teacher, recipe.student
    return build_student_model(s.arch, t.num_classes, t.input, s.feature_layer, recipe.base_dir)


def save_student(student: nn.Module, recipe: Recipe, run: RunDir, feature_layers: dict[str, str] | None = None) -> None:
    """student.safetensors and student.json: what rebuilding and reporting the student needs, including the layers the
    feature loss matched (`feature_layers`: teacher's and student's, as describe_feature_layer names them)."""
    with atomic_path(run.artifact("student.safetensors")) as tmp:
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp))
    atomic_write_json(
        run.artifact("student.json"),
        {
            "arch": recipe.student.arch,
            "num_classes": recipe.teacher.num_classes,
            "class_names": recipe.teacher.class_names,
            "input": recipe.teacher.input.model_dump(),
            "teacher": recipe.teacher.arch,
            "feature_layers": feature_layers,
            "edgedistill_version": __version__,
        },
    )


def load_student(recipe: Recipe, run: RunDir) -> nn.Module:
    student = build_student(recipe)
    path = run / "student.safetensors"
    fit_state_dict(student, load_file(str(path)), path)
    return student.eval()


class LineProgress:
    """Progress as plain lines on stdout, for CI logs: a bar drawn off a terminal shows nothing until its stage
    ends, and CI systems kill a job that stays silent for 10 minutes. A task prints a line when its info changes (a
    distillation epoch ends), at every tenth of its total (a chunk of the pool scored) and at least once a minute.

    `stream` None prints nothing (--quiet, and ranks other than 0). Same calls as rich's Progress, as stages use them."""

    STEPS = 10
    HEARTBEAT_S = 60.0

    def __init__(self, stream: TextIO | None):
        self.stream = stream
        self.tasks: list[dict] = []

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def add_task(self, description: str, total: float | None = None, info: str = "", **_fields: object) -> int:
        now = time.perf_counter()
        self.tasks.append(
            {"description": description, "total": total, "completed": 0, "info": info, "started": now, "shown": now, "step": 0}
        )
        return len(self.tasks) - 1

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        completed: float | None = None,
        advance: float = 0,
        info: str | None = None,
        description: str | None = None,
        **_fields: object,
    ) -> None:
        task = self.tasks[task_id]
        if description is not None:
            task["description"] = description
        if completed is not None:
            task["completed"] = completed
        task["completed"] += advance
        total = task["total"]
        step = int(self.STEPS * task["completed"] / total) if total else 0
        new_info = info is not None and info != task["info"]
        if new_info:
            task["info"] = info
        if new_info or step > task["step"] or time.perf_counter() - task["shown"] >= self.HEARTBEAT_S:
            task["step"] = max(step, task["step"])
            self._print(task)

    def _print(self, task: dict) -> None:
        now = time.perf_counter()
        task["shown"] = now
        if self.stream is None:
            return
        done, total = task["completed"], task["total"]
        count = f"{done:.0f}/{total:.0f} ({done / total:.0%})" if total else f"{done:.0f}"
        info = f"; {task['info']}" if task["info"] else ""
        self.stream.write(f"{task['description']}: {count} after {now - task['started']:.0f} s{info}\n")
        self.stream.flush()


def _progress(console: Console) -> Progress | LineProgress:
    """Bars on a terminal; plain lines on stdout when output goes to a CI log or a file; nothing when quiet."""
    if console.quiet:
        return LineProgress(None)
    if not console.is_terminal and not console.is_jupyter:
        return LineProgress(sys.stdout)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


@contextmanager
def _file_log(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        handler.close()


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: Path, console: Console):
        self.recipe, self.run, self.console = recipe, RunDir(run_dir), console
        self.world = world()
        self.compute = resolve_compute(recipe.compute, self.world.device)
        self._teacher: nn.Module | None = None
        self._selection: Selection | None = None

    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = load_teacher(self.recipe)
        return self._teacher

    def inputs(self, stage: str) -> dict:
        r = self.recipe
        sections = {
            "select": (["seed", "teacher", "pool", "select"], []),
            "distill": (["seed", "teacher", "class_drop", "student", "distill", "eval"], ["select"]),
            "export": (["seed", "teacher", "student", "export"], ["select", "distill"]),
            "validate": (["teacher", "eval", "targets"], ["select", "export"]),
        }[stage]
        recipe_part = r.section(*sections[0])
        if stage == "export":
            recipe_part["tensorrt_int8"] = self._needs_tensorrt_int8()
            recipe_part["fp16_file"] = self._needs_fp16_file()
        if stage in RANKED_STAGES:
            recipe_part["precision"] = str(self.compute.dtype)  # scores and training change with it; the rest of `compute` does not
        return self.run.stage_inputs(stage, recipe_part, sections[1])

    def _needs_tensorrt_int8(self) -> bool:
        return self.recipe.export.int8.enabled and any(
            t.precision == "int8" and RUNTIMES[t.runtime].int8_flavour == "tensorrt" for t in self.recipe.targets
        )

    def _needs_fp16_file(self) -> bool:
        return self.recipe.export.fp16 and any(
            RUNTIMES[t.runtime].fp16_from == "file" and (t.precision == "fp16" or "fp16" in t.also_time) for t in self.recipe.targets
        )

    def target_model(self, target, precision: str | None = None) -> Path:
        """The student file a target runs at a precision (its own by default): student.onnx (fp32, or fp16 for the
        runtimes that build fp16 engines from it), student.fp16.onnx for the others, or the INT8 copy of the
        runtime's flavour: the CPU one (U8S8), or the symmetric one TensorRT parses."""
        precision = precision or target.precision
        if precision == "int8":
            return self.run / INT8_MODELS[RUNTIMES[target.runtime].int8_flavour]
        if precision == "fp16" and RUNTIMES[target.runtime].fp16_from == "file":
            return self.run / "student.fp16.onnx"
        return self.run / "student.onnx"

    def teacher_runtime(self) -> str:
        """What runs the teacher when it scores the pool and the evaluation set."""
        return {"onnx": "onnxruntime", "torchscript": "pytorch (TorchScript)"}.get(self.recipe.teacher.arch, "pytorch")

    def engine_plan(self, target, precision: str) -> Path | None:
        """Where the engine plan a TensorRT runtime builds for this target goes, to deploy without a rebuild."""
        if RUNTIMES[target.runtime].int8_flavour != "tensorrt":
            return None
        return self.run.artifact(f"engine-{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)}-{precision}.plan")

    def teacher_model(self) -> Path | None:
        """The teacher's ONNX file for the deployment table: the recipe's own file for an ONNX teacher, else the
        export stage's teacher.onnx (absent when export.teacher is off or the teacher could not be exported)."""
        t = self.recipe.teacher
        if t.arch == "onnx" and t.weights is not None:
            return self.recipe.resolve(t.weights)
        path = self.run / "teacher.onnx"
        return path if path.is_file() else None

    def stage_select(self, progress: Progress) -> None:
        r, w = self.recipe, self.world
        pool = build_pool(r, w.rank, w.size)
        workers = r.compute.workers if r.compute.workers is not None else default_workers(pool, w.local_size)
        task = progress.add_task("select: scoring pool", total=pool.size, info=f"{len(pool.parts)} sources, {w.size} rank(s)")
        started = time.perf_counter()
        selection = select_pool(
            self.teacher,
            pool,
            r.select,
            r.teacher.num_classes,
            r.seed,
            on_batch=lambda n: progress.advance(task, n * w.size),
            compute=self.compute,
            workers=workers,
        )
        seconds = time.perf_counter() - started
        selection = holdout_last(selection, r.seed)
        rate = selection.stats["pool_size"] / max(seconds, 1e-9)
        batch = normalize(torch.from_numpy(selection.images[: r.select.batch_size]), r.teacher.input)
        bare = bare_forward_rate(self.teacher, batch, self.compute) * w.size if w.main else float("nan")
        selection.stats["throughput"] = {
            "seconds": seconds,
            "images_per_s": rate,
            "bare_forward_images_per_s": bare,
            "ratio": rate / bare,
            "batch": r.select.batch_size,
            "ranks": w.size,
            "workers_per_rank": workers,
        }
        self._selection = selection
        if not w.main:
            return
        save_selection(selection, self.run.artifact("selected.npz", "selected_images.npy"))
        atomic_write_json(self.run.artifact("selection.json"), selection.stats)
        s = selection.stats
        log.info("select: %d of %d pool images kept, %d unreadable", s["selected"], s["pool_size"], s["skipped"])
        if s["skipped"]:
            self.console.print(
                f"[yellow]select: skipped {s['skipped']} unreadable files {s['skipped_reasons']}, e.g. {s['skipped_examples'][0]}"
            )
        names = self.recipe.teacher.class_names or [str(c) for c in range(self.recipe.teacher.num_classes)]
        for level in ("poorly", "thinly"):
            short = [c for c in s["coverage"] if c["level"] == level]
            if short:
                listed = ", ".join(f"{names[c['class']]} ({c['selected']}/{c['quota']}, conf {c['mean_confidence']:.2f})" for c in short)
                self.console.print(f"[yellow]select: the pool covers {level}: {listed}; {short[0]['advice']}", highlight=False)
        self.run.mark_done(
            "select", self.inputs("select"), ["selected.npz", "selected_images.npy", "selection.json"], {"selected": s["selected"]}
        )

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """The selection's train/holdout images, read once; the select stage replaces it when it writes a new selection."""
        if self._selection is None:
            self._selection = load_selection(self.run / "selected.npz")
        return split_selection(self._selection)

    def _train_probs(self) -> np.ndarray:
        train, _ = self._split()
        return self._selection.probs[: len(train)]

    def eval_set(self) -> EvalSet:
        if self.recipe.eval.labeled:
            return load_labeled(self.recipe.eval.labeled, self.recipe)
        return EvalSet("selection holdout (teacher agreement)", self._split()[1], None)

    def stage_distill(self, progress: Progress) -> None:
        r = self.recipe
        train, _ = self._split()
        if len(train) < r.distill.batch_size:
            raise BadInput(
                f"distill.batch_size {r.distill.batch_size} exceeds the {len(train)} selected training samples; lower it or select more"
            )
        eval_set = self.eval_set()
        spec = r.teacher.input

        def evaluate(student: nn.Module) -> dict:
            pred = predict_torch(student, eval_set.images, spec).argmax(1)
            out = {"agreement": float((pred == teacher_pred).mean())}
            if eval_set.labels is not None:
                out["accuracy"] = float((pred == eval_set.labels).mean())
            return out

        teacher_pred = predict_torch(self.teacher, eval_set.images, spec).argmax(1) if self.world.main else None
        _, holdout = self._split()
        holdout_pred = predict_torch(self.teacher, holdout, spec).argmax(1) if self.world.main and len(holdout) else None

        def monitor(student: nn.Module) -> float:
            """Label-free: how often the student agrees with the teacher on selected images it never trained on."""
            return float((predict_torch(student, holdout, spec).argmax(1) == holdout_pred).mean())

        steps = max(1, len(train) // r.distill.batch_size)
        task = progress.add_task("distill", total=r.distill.epochs * steps, info=f"{self.world.size} rank(s)")
        ckpt, cache = self._distill_scratch()
        if ckpt.exists() and self.world.main:
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
            progress.update(task, completed=state["epoch"] * steps)
            self.console.print(f"distill: resumed at epoch {state['epoch']} from the checkpoint of an interrupted run")

        def on_epoch(rec: dict) -> None:
            shown = f"epoch {rec['epoch']} loss {rec['loss']:.3f} agree {rec['agreement']:.3f}"
            if "accuracy" in rec:
                shown += f" acc {rec['accuracy']:.3f}"
            progress.update(task, info=shown)
            log.info("distill: %s", json.dumps(rec))

        started = time.perf_counter()
        torch.manual_seed(r.seed)  # the student's initial weights must not depend on what ran before in this process
        student = build_student(r)
        feature_layers = {"teacher": describe_feature_layer(self.teacher), "student": describe_feature_layer(student)}
        log.info("distill: feature loss matches teacher %s with student %s", feature_layers["teacher"], feature_layers["student"])
        result = distill(
            self.teacher,
            student,
            train,
            r.distill,
            r.class_drop,
            spec,
            r.seed,
            checkpoint=ckpt,
            evaluate=evaluate,
            monitor=monitor if len(holdout) else None,
            on_epoch=on_epoch,
            on_step=lambda: progress.advance(task),
            compute=self.compute,
            teacher_cache=cache,
            **({"teacher_probs": self._train_probs(), "per_class": r.select.per_class} if r.select.reservoir > 1 else {}),
        )
        seconds = time.perf_counter() - started
        if self.world.main:
            throughput = self._training_throughput(result, train) if result.images_per_s else None
            save_student(result.student.cpu(), r, self.run, feature_layers)
            atomic_write_json(self.run.artifact("history.json"), result.history)
            self.run.mark_done(
                "distill",
                self.inputs("distill"),
                ["student.safetensors", "student.json", "history.json"],
                {"seconds": seconds, "throughput": throughput, "kept_epoch": result.kept_epoch},
            )
            self._remove_distill_scratch()
        barrier()

    def _distill_scratch(self) -> tuple[Path, Path]:
        """The epoch checkpoint and the stored teacher outputs, named by the distill stage's inputs: a resumed run
        never picks up what a run with another selection or recipe left behind. Earlier runs' leftovers are removed."""
        key = fingerprint(self.inputs("distill"))[:12]
        names = (f"distill-{key}.ckpt", f"teacher_outputs-{key}.npy")
        if self.world.main:
            self._remove_distill_scratch(names)
            self.run.artifact(*names)
        return self.run / names[0], self.run / names[1]

    def _remove_distill_scratch(self, keep: tuple[str, ...] = ()) -> None:
        """Scratch files of earlier distill runs, as this run directory's manifest lists them (never anyone else's)."""
        self.run.remove(*[n for n in self.run.written("distill-*.ckpt") + self.run.written("teacher_outputs-*.npy") if n not in keep])

    def _training_throughput(self, result, train: np.ndarray) -> dict:
        """Training images/s against the bare distillation step at this rank's batch (teacher skipped when its outputs are stored)."""
        r, w = self.recipe, self.world
        batch = normalize(torch.from_numpy(np.array(train[: r.distill.batch_size // w.size])), r.teacher.input)
        bare = (
            bare_step_rate(self.teacher, result.student, batch, self.compute, lr=r.distill.lr, with_teacher=r.distill.augment is not None)
            * w.size
        )
        return {
            "images_per_s": result.images_per_s,
            "bare_step_images_per_s": bare,
            "ratio": result.images_per_s / bare,
            "batch": r.distill.batch_size,
            "ranks": w.size,
            "teacher_outputs_stored": r.distill.augment is None,
        }

    def stage_export(self, progress: Progress) -> None:
        r = self.recipe
        task = progress.add_task("export: onnx", total=2, info="")
        student = load_student(r, self.run)
        export_onnx(student, r.teacher.input, self.run.artifact("student.onnx"), r.teacher.class_names)
        progress.advance(task)
        train, holdout = self._split()
        sample = holdout if len(holdout) else train[:256]
        parity = parity_dict(check_parity(student, self.run / "student.onnx", sample, r.teacher.input))
        atomic_write_json(self.run.artifact("parity.json"), parity)
        progress.advance(task)
        if parity["top1_agreement"] < 0.99 or parity["max_abs_diff"] > 1e-3:
            self.console.print(f"[yellow]export: ONNX and PyTorch differ: {parity}")
        outputs = ["student.onnx", "parity.json"]
        self.run.remove("student.int8.onnx", "student.int8.trt.onnx", "int8.json", "teacher.onnx", "student.fp16.onnx")
        if r.export.int8.enabled:
            outputs += self._export_int8(progress)
        if self._needs_fp16_file():
            convert_fp16(self.run / "student.onnx", self.run.artifact("student.fp16.onnx"))
            outputs.append("student.fp16.onnx")
        info = {}
        if r.export.teacher and r.teacher.arch != "onnx":
            info["teacher_onnx"] = self._export_teacher()
            outputs += ["teacher.onnx"] if info["teacher_onnx"].get("error") is None else []
        self.run.mark_done("export", self.inputs("export"), outputs, info)

    def _export_teacher(self) -> dict:
        """teacher.onnx, timed on every target like the student, for the speed-ups; a teacher the exporters cannot
        express leaves the table without them, never fails the run."""
        r = self.recipe
        try:
            export_onnx(self.teacher, r.teacher.input, self.run.artifact("teacher.onnx"), r.teacher.class_names)
        except Exception as exc:  # BadInput from our exporter, or anything torch.onnx raises for an unusual model
            message = first_line(exc)
            self.console.print(f"[yellow]export: the teacher could not be exported to ONNX ({message}); no speed-ups", highlight=False)
            log.warning("export: teacher.onnx not written: %s", message)
            return {"error": message}
        return {"path": "teacher.onnx", "bytes": (self.run / "teacher.onnx").stat().st_size}

    def _export_int8(self, progress: Progress) -> list[str]:
        """INT8 copies calibrated on the selection's training split: the pool images the student learned from."""
        r, spec, q = self.recipe, self.recipe.teacher.input, self.recipe.export.int8
        calibration, _ = self._split()
        variants = {"student.int8.onnx": False} | ({"student.int8.trt.onnx": True} if self._needs_tensorrt_int8() else {})
        task = progress.add_task("export: int8", total=len(variants), info=f"{q.method}, {min(q.samples, len(calibration))} samples")
        info = {"method": q.method, "calibration_source": "selected.npz (training split)", "models": {}}
        for name, for_tensorrt in variants.items():
            result = quantize_int8(
                self.run / "student.onnx",
                self.run.artifact(name),
                calibration,
                spec.mean,
                spec.std,
                method=q.method,
                max_samples=q.samples,
                seed=r.seed,
                for_tensorrt=for_tensorrt,
            )
            info["calibration_samples"] = result.calibration_samples
            info["models"][name] = {
                "bytes": result.size_bytes,
                "fp32_bytes": result.fp32_size_bytes,
                "for_tensorrt": for_tensorrt,
                "reduce_range": result.reduce_range,  # true: 7-bit weights, as this x86 CPU has no VNNI/AMX
            }
            progress.advance(task)
        atomic_write_json(self.run.artifact("int8.json"), info)
        log.info("export: int8 %s", json.dumps(info))
        return [*variants, "int8.json"]

    def stage_validate(self, progress: Progress) -> None:
        r = self.recipe
        eval_set = self.eval_set()
        spec = r.teacher.input
        teacher_logits = predict_torch(self.teacher, eval_set.images, spec)
        teacher_pred = teacher_logits.argmax(1)
        teacher_acc = float((teacher_pred == eval_set.labels).mean()) if eval_set.labels is not None else None
        student = load_student(r, self.run)
        student_logits = predict_torch(student, eval_set.images, spec)
        basis = "accuracy" if eval_set.labels is not None else "teacher agreement"
        student_score = float((student_logits.argmax(1) == (eval_set.labels if eval_set.labels is not None else teacher_pred)).mean())
        int8_summary, int8_reference = None, None
        if r.export.int8.enabled and (self.run / "student.int8.onnx").is_file():
            int8_summary, int8_reference = measure_int8(
                self.run / "student.onnx", self.run / "student.int8.onnx", eval_set, spec, teacher_pred
            )
            int8_summary = json.loads((self.run / "int8.json").read_text()) | int8_summary
        results, rows = [], []
        for target in r.targets:
            task = progress.add_task(f"validate: {target.name}", total=len(eval_set.images), info=target.runtime)
            resolved = target.resolved(r)
            advance = lambda n, t=task: progress.advance(t, n)
            res = validate_target(
                resolved,
                self.target_model(target),
                eval_set,
                spec,
                teacher_pred,
                teacher_acc,
                on_progress=advance,
                int8_reference=int8_reference,
                reference_logits=student_logits,
                engine_path=self.engine_plan(target, target.precision),
            )
            results.append(res)
            log.info("validate %s: %s", target.name, res)
            model_for = lambda precision, t=target: path if (path := self.target_model(t, precision)).is_file() else None
            others = models_to_time(resolved, model_for, self.teacher_model())
            students = sum(model == "student" for model, *_ in others)
            other_task = progress.add_task(f"validate: {target.name}, other models", total=len(eval_set.images) * students, info="")
            rows += measure_target(
                resolved,
                res,
                self.target_model(target),
                others,
                eval_set,
                spec,
                teacher_pred,
                teacher_acc,
                student_logits,
                int8_reference,
                on_progress=lambda n, t=other_task: progress.advance(t, n),
                engine_for=lambda precision, t=target: self.engine_plan(t, precision),
                teacher_scored_in=self.teacher_runtime(),
            )
        for row in rows:
            if row["error"] and not row["gated"]:
                log.warning("validate %s: %s %s not measured: %s", row["target"], row["model"], row["precision"], row["error"])
        selection = json.loads((self.run / "selection.json").read_text())
        layers = json.loads((self.run / "student.json").read_text()).get("feature_layers") or {}
        report = Report(
            name=r.name,
            eval={
                "name": eval_set.name,
                "samples": len(eval_set.images),
                "labeled": eval_set.labels is not None,
                "unreadable": len(eval_set.unreadable),
                "unreadable_examples": eval_set.unreadable[:5],
            },
            teacher={
                "arch": r.teacher.arch,
                "parameters": count_parameters(self.teacher),
                "accuracy": teacher_acc,
                "runtime": self.teacher_runtime(),
                "feature_layer": layers.get("teacher"),
            },
            student={
                "arch": r.student.arch,
                "parameters": count_parameters(student),
                "onnx_bytes": (self.run / "student.onnx").stat().st_size,
                "int8_onnx_bytes": (self.run / "student.int8.onnx").stat().st_size if int8_summary else None,
                "accuracy": student_score if eval_set.labels is not None else None,
                "agreement": float((student_logits.argmax(1) == teacher_pred).mean()),
                "scored_in": "pytorch",
                "feature_layer": layers.get("student"),
                "kept_epoch": (self.run.read_record("distill") or {}).get("info", {}).get("kept_epoch"),
                "keep": r.distill.keep,
                "epochs": r.distill.epochs,
            },
            int8=int8_summary,
            deployment={"rows": rows, "recommendation": recommend(rows, student_score, basis)},
            warnings=student_warnings(student_score, basis, r.teacher.num_classes, teacher_acc),
            selection=selection,
            throughput={
                "select": selection.get("throughput"),
                "distill": (self.run.read_record("distill") or {}).get("info", {}).get("throughput"),
            },
            parity=json.loads((self.run / "parity.json").read_text()),
            history=json.loads((self.run / "history.json").read_text()),
            targets=[target_entry(t, target.budget) for t, target in zip(results, r.targets)],
            versions=package_versions(),
        ).as_json()
        atomic_write_json(
            self.run.artifact("latency_samples.json"),
            {t.name: {"batch": 1, "samples_ms": t.latency_samples_ms} for t in results if t.latency_samples_ms},
        )
        atomic_write_json(self.run.artifact("report.json"), report)
        self.run.artifact(*GATE_FILES, "report.html")
        write_gate_files(self.run.path, report)
        try:
            write_report_html(self.run.path)
        except Exception as exc:  # the gate's verdict must not hinge on drawing a plot
            log.exception("report.html")
            self.console.print(
                f"[yellow]validate: report.html not written ({type(exc).__name__}: {exc}); `edgedistill report {self.run.path}` retries"
            )
        self.run.mark_done("validate", self.inputs("validate"), ["report.json", "latency_samples.json"])

    def run_stages(
        self, stages: tuple[str, ...] = STAGES, fresh: bool = False, force: tuple[str, ...] = (), record_recipe: bool = True
    ) -> dict:
        """Runs `stages` and whatever earlier stage they need; a stage already done with the same inputs is skipped.

        `record_recipe` False keeps the run.json an earlier run wrote (a what-if re-gate), so its overrides do not stick.

        Under torchrun every rank scores and trains; rank 0 alone decides what is done, writes, exports and validates."""
        main = self.world.main
        if stages != ("export",):
            self.teacher  # noqa: B018  (first: weights that do not fit their model are a one-line error before anything is written)
        claimed = None
        if main:
            try:
                self.run.open()
            except BadInput as exc:
                claimed = str(exc)
        claimed = broadcast_object(claimed)  # every rank ends with the same one line
        if claimed is not None:
            raise BadInput(claimed)
        try:
            return self._run_stages(stages, fresh, force, record_recipe)
        finally:
            self.run.close()

    def _run_stages(self, stages: tuple[str, ...], fresh: bool, force: tuple[str, ...], record_recipe: bool = True) -> dict:
        main = self.world.main
        if fresh and main:
            self.run.clear()
            self._remove_distill_scratch()
        if main and (record_recipe or not (self.run / "run.json").is_file()):
            atomic_write_json(
                self.run.artifact("run.json"),
                {
                    "recipe": self.recipe.model_dump(mode="json"),
                    "seed": self.recipe.seed,
                    "recipe_dir": str(self.recipe.base_dir.resolve()),
                    "ranks": self.world.size,
                    "versions": package_versions(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
        last = max(STAGES.index(s) for s in stages)
        with _file_log(self.run.artifact("run.log")) if main else nullcontext(), _progress(self.console) as progress:
            for stage in STAGES[: last + 1]:
                if not main and stage not in RANKED_STAGES:
                    break
                done = stage not in force and self.run.is_done(stage, self.inputs(stage)) if main else None
                if stage in RANKED_STAGES:
                    done = broadcast_object(done)
                if done:
                    self.console.print(f"[dim]{stage}: up to date, skipped")
                    continue
                started = time.perf_counter()
                getattr(self, f"stage_{stage}")(progress)
                log.info("%s: done in %.1f s", stage, time.perf_counter() - started)
        report_path = self.run / "report.json"
        return json.loads(report_path.read_text()) if main and "validate" in stages and report_path.exists() else {}


def compress(
    recipe: Recipe | str | Path,
    run_dir: Path | str | None = None,
    fresh: bool = False,
    stages: tuple[str, ...] = STAGES,
    console: Console | None = None,
    record_recipe: bool = True,
) -> dict:
    """Python API of `edgedistill compress`: returns the report (also written to RUN_DIR/report.json).

    `record_recipe` False leaves an existing RUN_DIR/run.json as it is: a what-if re-gate (`validate --run-dir --set`)
    must not become the recipe the next plain re-gate uses.

    Launched by torchrun, every process joins the process group; ranks other than 0 return {} after distill.

    Raises BudgetFailed when a target misses a budget, after the report is written.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    check_recipe(recipe)
    if not init_world(recipe.compute.device).main:
        console = Console(stderr=True, quiet=True)
    console = console or Console(stderr=True)
    if "validate" in stages:
        for target in recipe.targets:  # found now, not after a distillation
            probe = {"usable": True} if target.ssh else RUNTIMES[target.runtime].probe()
            if not probe.get("usable"):
                console.print(
                    f"[yellow]target {target.name}: runtime {target.runtime} is not usable here ({probe.get('detail')}); "
                    "it will be reported unavailable (exit 4)",
                    highlight=False,
                )
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    forced = stages if len(stages) == 1 else ()
    try:
        report = Pipeline(recipe, run_dir, console).run_stages(stages, fresh=fresh, force=forced, record_recipe=record_recipe)
    finally:
        close_world()
    error = gate_error(report, run_dir=run_dir) if report else None
    if error is not None:
        raise error
    return report
