"""compress: select -> (class-drop +) distill -> export -> validate, in order, each stage skipped when its inputs are
unchanged, with progress shown and logged. The stages themselves are in edgedistill.stages."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
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
from .backends import BUILTIN_ARTIFACTS, RUNTIMES, Artifact, MakeInputs
from .backends.runtime import FP32, INT8_CPU
from .config.load import load_recipe, recipe_for_regate
from .config.schema import Recipe
from .errors import BadInput
from .extensions import check_recipe
from .inputs.fingerprint import Fingerprint, paths_fingerprint, tree_fingerprint
from .inputs.images import normalize
from .inputs.labeled import EvalSet, load_labeled
from .inputs.pool import build_pool, default_workers
from .models.checkpoint import fit_state_dict
from .models.factory import build_student_model, count_parameters
from .models.features import describe_feature_layer
from .models.onnx_info import onnx_info
from .models.teachers import load_teacher_model
from .results.gate import GATE_FILES
from .results.html import write_report_html
from .results.plan import PLAN_PAGES, print_plan, write_plan_files
from .results.report import Report, gate_error, teacher_class_share, verdict_of
from .results.rundir import RunDir, StageInputs, package_versions
from .results.selection import Selection, load_selection, save_selection
from .scale.compute import cpu_threads, resolve_compute, usable_cpus
from .scale.distributed import barrier, broadcast_object, close_world, init_world, world
from .scale.throughput import bare_forward_rate, bare_step_rate
from .stages.deployment import measure_target, models_to_time, recommend, student_warnings
from .stages.distill import distill
from .stages.export import check_parity, export_onnx, first_line, parity_dict
from .stages.plan import CHOICE_FILE, PLAN_FILE, PROBE_FILE, chosen_student, no_fit_error, plan_students, with_chosen_student
from .stages.preflight import run_preflight
from .stages.select import coverage_lines, holdout_last, select_pool, split_selection
from .stages.validate import Gated, Reference, measure_int8, predict_torch, validate_and_report
from .version import __version__

STAGES = ("select", "plan", "distill", "export", "validate")
# stage -> (recipe sections, earlier stages, kinds of files) it depends on; Pipeline.inputs turns them into StageInputs.
# distill does not depend on `eval`: it evaluates on it each epoch for the history, but never chooses by it.
# plan runs only for a recipe with student candidates (Pipeline.applies); it times them on the targets, probes them on
# the selection (never on `eval`), and its recorded output is the chosen student alone (stages/plan.py).
STAGE_INPUTS = {
    "select": (("seed", "teacher", "pool", "select"), (), ("teacher", "pool")),
    "plan": (("seed", "teacher", "class_drop", "student", "distill", "export", "targets"), ("select",), ("teacher",)),
    "distill": (("seed", "teacher", "class_drop", "student", "distill"), ("select", "plan"), ("teacher",)),
    "export": (("seed", "teacher", "student", "export"), ("select", "distill"), ("teacher",)),
    "validate": (("teacher", "eval", "targets"), ("select", "export"), ("teacher", "eval")),
}
# every file a run writes at the top of its directory, by the stage that writes it (None: the run itself); a user's file
# under one of these names is refused before the first stage runs, not when its stage reaches it (engine plans and
# scratch files, named per target and per inputs, are refused when they are written)
ARTIFACTS = {
    "run.json": None,
    "run.log": None,
    "selected.npz": "select",
    "selected_images.npy": "select",
    "selection.json": "select",
    PLAN_FILE: "plan",
    CHOICE_FILE: "plan",
    PROBE_FILE: "plan",
    **dict.fromkeys(PLAN_PAGES, "plan"),
    "student.safetensors": "distill",
    "student.json": "distill",
    "history.json": "distill",
    "parity.json": "export",
    **dict.fromkeys((a.file for a in BUILTIN_ARTIFACTS), "export"),  # student.onnx and the copies the runtimes run
    "int8.json": "export",
    "teacher.onnx": "export",
    "report.json": "validate",
    "latency_samples.json": "validate",
    **dict.fromkeys(GATE_FILES, "validate"),
    "report.html": "validate",
}
WHAT_IF_DIR = "what-if"  # where `validate --run-dir --set/--target` writes its report, beside the run's own
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
    def __init__(self, recipe: Recipe, run_dir: Path, console: Console, rounds: int | None = None):
        """`rounds`: latency rounds for this invocation's measurements, every target (`validate --rounds`): how well
        the recipe's budgets are measured, not what they are, so not part of the recipe the run records."""
        self.recipe, self.run, self.console, self.rounds = recipe, RunDir(run_dir), console, rounds
        self.world = world()
        self.compute = resolve_compute(recipe.compute, self.world.device)
        self._teacher: nn.Module | None = None
        self._selection: Selection | None = None
        self._fingerprints: dict[str, list[tuple[str, Fingerprint]]] = {}
        self.cpu_threads: dict | None = None  # how many CPU threads compress chose, and why (scale.compute.cpu_threads)
        self.what_if = False  # validate only, into WHAT_IF_DIR, recording nothing (Pipeline.run_what_if)

    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = load_teacher(self.recipe)
        return self._teacher

    def inputs(self, stage: str) -> StageInputs:
        """What `stage` depends on (STAGE_INPUTS): its recipe sections, the stages before it, and the contents of the
        files the recipe names that it reads, so a file replaced under the same path redoes the stage."""
        r = self.recipe
        sections, upstream, files = STAGE_INPUTS[stage]
        parts = r.section(*sections)
        upstream = [s for s in upstream if self.applies(s)]
        if stage in ("distill", "export") and r.student.planned and (self.run / CHOICE_FILE).is_file():
            parts["student"] = chosen_student(r, self.run.path).model_dump(mode="json")  # the choice, not the candidates
        if stage == "export":
            made = self._artifacts()  # the two names below predate the runtime rows: kept, so runs made then stay current
            parts["tensorrt_int8"] = "student.int8.trt.onnx" in made
            parts["fp16_file"] = "student.fp16.onnx" in made
            if extra := sorted(set(made) - {a.file for a in BUILTIN_ARTIFACTS}):
                parts["artifacts"] = extra
        if stage in RANKED_STAGES:
            parts["precision"] = str(self.compute.dtype)  # scores and training change with it; the rest of `compute` does not
        if stage == "validate":  # rounds say how well a budget is measured, not what it is (validate --rounds)
            parts["targets"] = [{k: v for k, v in t.items() if k != "rounds"} for t in parts["targets"]]
        return self.run.stage_inputs(parts, list(upstream), {n: fp for kind in files for n, fp in self._file_inputs(kind)})

    def _file_inputs(self, kind: str) -> list[tuple[str, Fingerprint]]:
        """(name, Fingerprint) of the files behind one kind of input, taken once per run: `teacher` (its weights or
        model file), `pool` (each source that has files), `eval` (the labeled folder's images, contents hashed: the
        verdict hangs on each of them)."""
        if kind not in self._fingerprints:
            r, found = self.recipe, []
            if kind == "teacher" and r.teacher.weights is not None:
                weights = r.resolve(r.teacher.weights)
                files = onnx_info(weights).files if r.teacher.arch == "onnx" else (weights,)  # with its external data
                found.append(("teacher.weights", paths_fingerprint(files, root=weights.parent, contents=True)))
            elif kind == "pool":
                found += [(f"pool.{i}", fp) for i, entry in enumerate(r.pool) if (fp := entry.fingerprint(r)) is not None]
            elif kind == "eval" and r.eval.labeled and not r.eval.labeled.startswith("builtin:"):
                found.append(("eval.labeled", tree_fingerprint(r.resolve(Path(r.eval.labeled)), contents=True)))
            self._fingerprints[kind] = found
        return self._fingerprints[kind]

    def stale_stages(self, stages: tuple[str, ...] = STAGES, ignore: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(stage, why) for each of `stages` that a run would redo now, in order; empty when all are up to date.
        `ignore`: recipe parts not to compare (the gate ignores `precision`, which depends on the machine that trained)."""
        return [
            (stage, why)
            for stage in stages
            if self.applies(stage) and (why := self.run.why_stale(stage, self.inputs(stage), ignore)) is not None
        ]

    def applies(self, stage: str) -> bool:
        """Whether `stage` is part of this recipe's run: plan only where the recipe has student candidates."""
        return stage != "plan" or self.recipe.student.planned

    def stage_plan(self, progress: Progress) -> None:
        """Chooses the student among the recipe's candidates before distilling it (stages/plan.py, docs/plan.md):
        writes plan.json, plan.md, plan.html and the choice; no fit ends the run with exit 3 after writing them."""
        r = self.recipe
        if self.world.size > 1:
            raise BadInput(
                "plan: the candidates are probed in one process; run `edgedistill plan RECIPE --run-dir DIR` first, "
                "then torchrun ... compress RECIPE --run-dir DIR uses its choice"
            )
        train, holdout = self._split()
        task = progress.add_task("plan", total=None, info="building the candidates")
        try:
            probes = json.loads((self.run / PROBE_FILE).read_text())
        except (OSError, ValueError):
            probes = {}
        probe_key = {
            "select": self.run.output_digest("select"),
            "recipe": r.section("seed", "class_drop", "distill"),
            "steps": r.student.plan.probe_steps,
            "precision": str(self.compute.dtype),
            "edgedistill": __version__,
        }
        plan = plan_students(
            r,
            self.teacher,
            train,
            holdout,
            self.run.path,
            compute=self.compute,
            probe_cache=probes,
            probe_key=probe_key,
            on_step=lambda step: progress.update(task, advance=1, info=step),
        )
        atomic_write_json(self.run.artifact(PROBE_FILE), probes)
        atomic_write_json(self.run.artifact(PLAN_FILE), plan)
        self.run.artifact(*PLAN_PAGES)
        write_plan_files(self.run.path, plan, r.name)
        print_plan(self.console, plan)
        log.info("plan: %s", json.dumps({"chosen": plan["chosen"], "why": plan["why"], "seconds": plan["seconds"]}))
        if plan["chosen"] is None:
            self.run.remove(CHOICE_FILE)
            raise no_fit_error(plan)
        atomic_write_json(self.run.artifact(CHOICE_FILE), plan["chosen"])
        settled = all(row["fits"] != "inconclusive" for row in plan["candidates"])  # else the next run plans again
        self.run.mark_done(
            "plan", self.inputs("plan"), [CHOICE_FILE], {"chosen": plan["chosen"], "seconds": plan["seconds"]}, final=settled
        )

    def _artifacts(self) -> dict[str, Artifact]:
        """The files besides student.onnx that the export stage makes, by name, each with its maker (the runtime
        rows say which: backends/runtime.py): the CPU INT8 copy whenever INT8 is on (the report's int8 line measures
        it), and each file a target's runtime runs at its precision or times in also_time (an INT8 copy only for a
        target gated on it: each is one more calibration); a file whose export switch is off is not made."""
        r = self.recipe
        wanted = [INT8_CPU]
        for t in r.targets:
            runtime = RUNTIMES.get(t.runtime)
            for precision in dict.fromkeys([t.precision, *t.also_time]):
                if precision in runtime.precisions:
                    artifact = runtime.artifact_for(precision)
                    if precision == t.precision or artifact.for_also_time:
                        wanted.append(artifact)
        return {a.file: a for a in wanted if a.make is not None and a.enabled(r.export)}

    def target_model(self, target, precision: str | None = None) -> Path:
        """The student file a target runs at a precision (its own by default), as its runtime's row says: e.g.
        student.onnx (fp32, or fp16 for the runtimes that build fp16 engines from it), student.fp16.onnx, or the
        INT8 copy it runs: the CPU one (U8S8), or the symmetric one TensorRT parses."""
        precision = precision or target.precision
        return self.run / RUNTIMES.get(target.runtime).artifacts.get(precision, FP32).file

    def teacher_runtime(self) -> str:
        """What runs the teacher when it scores the pool and the evaluation set."""
        return {"onnx": "onnxruntime", "torchscript": "pytorch (TorchScript)"}.get(self.recipe.teacher.arch, "pytorch")

    def engine_plan(self, target, precision: str) -> Path | None:
        """Where the engine plan a TensorRT runtime builds for this target goes, to deploy without a rebuild."""
        if not RUNTIMES.get(target.runtime).builds_engine:
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
        workers = r.compute.workers if r.compute.workers is not None else default_workers(pool, w.local_size, usable_cpus())
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
            "cpu_threads": self.cpu_threads,
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
        for line in coverage_lines(s, names):  # a collapsed teacher, then at most 20 classes that need more images
            self.console.print(f"[yellow]{line}", highlight=False, soft_wrap=True)
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
        r = with_chosen_student(self.recipe, self.run.path)
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
        key = self.inputs("distill").key[:12]
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
        r = with_chosen_student(self.recipe, self.run.path)
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
        every = {a.file for runtime in RUNTIMES.values() for a in runtime.artifacts.values()} | {a.file for a in BUILTIN_ARTIFACTS}
        self.run.remove(*sorted(every - {"student.onnx"}), "int8.json", "teacher.onnx")
        made = self._artifacts()
        if any(a.calibrated for a in made.values()):
            outputs += self._export_int8(progress, {name: a for name, a in made.items() if a.calibrated}, student)
        for name, artifact in made.items():
            if not artifact.calibrated:
                artifact.make(MakeInputs(self.run / "student.onnx", self.run.artifact(name), student=student))
                outputs.append(name)
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

    def _export_int8(self, progress: Progress, variants: dict[str, Artifact], student: nn.Module | None = None) -> list[str]:
        """INT8 copies calibrated on the selection's training split: the pool images the student learned from."""
        r, spec, q = self.recipe, self.recipe.teacher.input, self.recipe.export.int8
        calibration, _ = self._split()
        task = progress.add_task("export: int8", total=len(variants), info=f"{q.method}, {min(q.samples, len(calibration))} samples")
        info = {"method": q.method, "calibration_source": "selected.npz (training split)", "models": {}}
        for name, artifact in variants.items():
            made = MakeInputs(
                self.run / "student.onnx",
                self.run.artifact(name),
                calibration,
                tuple(spec.mean),
                tuple(spec.std),
                method=q.method,
                max_samples=q.samples,
                seed=r.seed,
                student=student,
            )
            facts = dict(artifact.make(made))
            if (samples := facts.pop("calibration_samples", None)) is not None:
                info["calibration_samples"] = samples
            info["models"][name] = facts  # bytes, fp32_bytes, for_tensorrt, reduce_range (backends/runtime.py)
            progress.advance(task)
        atomic_write_json(self.run.artifact("int8.json"), info)
        log.info("export: int8 %s", json.dumps(info))
        return [*variants, "int8.json"]

    def stage_validate(self, progress: Progress) -> None:
        r = with_chosen_student(self.recipe, self.run.path)
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
        selection = json.loads((self.run / "selection.json").read_text())
        reference = Reference(teacher_pred, teacher_acc, student_logits, int8_reference, teacher_class_share(selection))
        gated = []
        for target in r.targets:
            resolved = target.resolved(r)
            if self.rounds is not None:
                resolved = resolved.model_copy(update={"rounds": self.rounds})
            gated.append(Gated(resolved, self.target_model(target), self.engine_plan(target, target.precision)))
        rows = []

        def progress_of(item: Gated) -> Callable[[int], None]:
            task = progress.add_task(f"validate: {item.target.name}", total=len(eval_set.images), info=item.target.runtime)
            return lambda n: progress.advance(task, n)

        def time_other_models(item: Gated, res) -> None:
            """The deployment table's rows of this target: the gated model and the others it also times, ungated."""
            target = item.target
            log.info("validate %s: %s", target.name, res)
            model_for = lambda precision: path if (path := self.target_model(target, precision)).is_file() else None
            others = models_to_time(target, model_for, self.teacher_model())
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
                    engine_for=lambda precision: self.engine_plan(target, precision),
                    teacher_scored_in=self.teacher_runtime(),
                )
            )

        def sections(results: list) -> dict:
            """The run's sections of report.json, beside the eval set and targets every validation reports."""
            for row in rows:
                if row["error"] and not row["gated"]:
                    log.warning("validate %s: %s %s not measured: %s", row["target"], row["model"], row["precision"], row["error"])
            layers = json.loads((self.run / "student.json").read_text()).get("feature_layers") or {}
            planned = {}
            if self.recipe.student.planned:  # the plan that chose the student (stages/plan.py)
                planned["plan"] = json.loads((self.run / PLAN_FILE).read_text()) if (self.run / PLAN_FILE).is_file() else None
            return planned | {
                "teacher": {
                    "arch": r.teacher.arch,
                    "parameters": count_parameters(self.teacher),
                    "accuracy": teacher_acc,
                    "runtime": self.teacher_runtime(),
                    "feature_layer": layers.get("teacher"),
                },
                "student": {
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
                "int8": int8_summary,
                "deployment": {"rows": rows, "recommendation": recommend(rows, student_score, basis)},
                "warnings": student_warnings(student_score, basis, r.teacher.num_classes, teacher_acc),
                "selection": selection,
                "throughput": {
                    "select": selection.get("throughput"),
                    "distill": (self.run.read_record("distill") or {}).get("info", {}).get("throughput"),
                },
                "parity": json.loads((self.run / "parity.json").read_text()),
                "history": json.loads((self.run / "history.json").read_text()),
            }

        # a what-if's report goes beside the run's, which stays the gate's verdict
        _, results = validate_and_report(
            self.run,
            r.name,
            gated,
            eval_set,
            spec,
            reference,
            sections=sections,
            prefix=WHAT_IF_DIR + "/" if self.what_if else "",
            progress=progress_of,
            then=time_other_models,
        )
        if self.what_if:
            return
        self._write_report_html()
        unsettled = [
            t.name for t in results if (t.latency or {}).get("contended") or any(verdict_of(v) == "inconclusive" for v in t.verdicts)
        ]
        if unsettled:
            log.info("validate: %s measured on a busy machine or inconclusive: the next run measures again", ", ".join(unsettled))
        self.run.mark_done("validate", self.inputs("validate"), ["report.json", "latency_samples.json"], final=not unsettled)

    def _write_report_html(self) -> None:
        """report.html beside the run's report.json, which validate_and_report wrote with the gate files."""
        self.run.artifact("report.html")
        try:
            write_report_html(self.run.path)
        except Exception as exc:  # the gate's verdict must not hinge on drawing a plot
            log.exception("report.html")
            self.console.print(
                f"[yellow]validate: report.html not written ({type(exc).__name__}: {exc}); `edgedistill report {self.run.path}` retries"
            )

    def run_what_if(self, saved: Recipe) -> dict:
        """Validates this pipeline's recipe, a what-if of `saved` (the recipe the run was made with), and returns its
        report, written to WHAT_IF_DIR. Select, distill and export must be up to date under `saved`, and the what-if
        must leave their sections alone: it never retrains, re-exports, or changes what the run recorded."""
        for stage in ("select", "distill", "export"):
            changed = [name for name in STAGE_INPUTS[stage][0] if self.recipe.section(name) != saved.section(name)]
            if changed:
                raise BadInput(
                    f"a what-if only re-validates, but it changes {', '.join(changed)}, which {stage} depends on; run "
                    f"`edgedistill compress` with that --set to redo {stage}, or add --save"
                )
        stale = Pipeline(saved, self.run.path, self.console).stale_stages(("select", "distill", "export"))
        if stale:
            stage, why = stale[0]
            raise BadInput(
                f"{self.run.path}: {stage} is out of date ({why}); a what-if never redoes it: run `edgedistill compress` "
                "(or `validate --run-dir` without --set/--target) first"
            )
        self.what_if = True
        self.run.open()
        try:
            with _progress(self.console) as progress:
                self.stage_validate(progress)
        finally:
            self.run.close()
        return json.loads((self.run / WHAT_IF_DIR / "report.json").read_text())

    def run_stages(self, stages: tuple[str, ...] = STAGES, fresh: bool = False, force: tuple[str, ...] = ()) -> dict:
        """Runs `stages` and whatever earlier stage they need; a stage already done with the same inputs is skipped.

        Under torchrun every rank scores and trains; rank 0 alone decides what is done, writes, exports and validates."""
        main = self.world.main
        if stages != ("export",):
            self.teacher  # noqa: B018  (first: weights that do not fit their model are a one-line error before anything is written)
        claimed = None
        if main:
            try:
                self.run.open()
                # a user's file under a name a stage writes (every runtime's files too): refused before any work
                self.run.refuse_foreign([*ARTIFACTS, *(a.file for row in RUNTIMES.values() for a in row.artifacts.values())])
            except BadInput as exc:
                self.run.close()
                claimed = str(exc)
        claimed = broadcast_object(claimed)  # every rank ends with the same one line
        if claimed is not None:
            raise BadInput(claimed)
        try:
            return self._run_stages(stages, fresh, force)
        finally:
            self.run.close()

    def _run_stages(self, stages: tuple[str, ...], fresh: bool, force: tuple[str, ...]) -> dict:
        main = self.world.main
        if fresh and main:
            self.run.clear()
            self._remove_distill_scratch()
        if main:
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
            if self.cpu_threads:
                log.info("compute: %s", json.dumps(self.cpu_threads))
            for stage in STAGES[: last + 1]:
                if not self.applies(stage):
                    continue
                if not main and stage not in RANKED_STAGES:
                    if stage == "plan":  # rank 0 plans; the others read its choice from the run directory
                        continue
                    break
                done, why = (stage not in force and self.run.is_done(stage, self.inputs(stage)), None) if main else (None, None)
                if main and not done and stage not in force:
                    why = self.run.why_stale(stage, self.inputs(stage)) or "its last result was not final (measured on a busy machine)"
                if stage in RANKED_STAGES:
                    done = broadcast_object(done)
                if done:
                    self.console.print(f"[dim]{stage}: up to date, skipped")
                    continue
                if why and why != "not done yet":
                    self.console.print(f"{stage}: redone: {why}", highlight=False)
                    log.info("%s: redone: %s", stage, why)
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
    what_if_of: Recipe | None = None,
    rounds: int | None = None,
) -> dict:
    """Python API of `edgedistill compress`: returns the report (also written to RUN_DIR/report.json).

    `what_if_of`: the recipe the run in RUN_DIR was made with, of which `recipe` is a what-if (`validate --run-dir
    --set/--target`): only validation runs, its report goes to RUN_DIR/what-if/, and the run keeps its recipe,
    its artifacts and the verdict `gate` reports (Pipeline.run_what_if).

    `rounds`: latency rounds of every target for this invocation (Pipeline's `rounds`).

    Launched by torchrun, every process joins the process group; ranks other than 0 return {} after distill.

    Raises BudgetFailed when a target misses a budget, after the report is written.
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    check_recipe(recipe)
    # compute, built-in sources and every target, in seconds and before the first stage (or init_world's CUDA setup)
    run_preflight(recipe, stages, console or Console(stderr=True))
    here = init_world(recipe.compute.device)
    if not here.main:
        console = Console(stderr=True, quiet=True)
    console = console or Console(stderr=True)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / recipe.name
    forced = stages if len(stages) == 1 else ()
    threads = None
    if here.device.type == "cpu" and {"select", "distill"} & set(stages):
        count, threads = cpu_threads(recipe.compute.threads, here.local_size)
        torch.set_num_threads(count)
    try:
        pipeline = Pipeline(recipe, run_dir, console, rounds=rounds)
        pipeline.cpu_threads = threads
        report = pipeline.run_what_if(what_if_of) if what_if_of is not None else pipeline.run_stages(stages, fresh=fresh, force=forced)
    finally:
        close_world()
    error = gate_error(report, run_dir=run_dir) if report else None
    if error is not None:
        raise error
    return report


def regate(
    run_dir: Path | str | None,
    recipe_path: Path | None = None,
    overrides: list[str] | tuple = (),
    only_targets: list[str] | tuple = (),
    target_updates: dict | None = None,
    rounds: int | None = None,
    save: bool = False,
    fresh: bool = False,
    console: Console | None = None,
    check: Callable[[Recipe], None] | None = None,
) -> dict:
    """`validate --run-dir DIR` (the recipe DIR recorded) or `validate RECIPE`: validates the run again, redoing what
    is out of date. --set (`overrides`), --target (`only_targets`) and `target_updates` (applied to every target)
    without `save` make it a what-if where DIR holds a run (compress's `what_if_of`): the run's recipe, artifacts and
    verdict stay as they were. --rounds (`rounds`) alone re-measures the run itself with more rounds (the retry of an
    inconclusive verdict). `check` names a bad extension name (the CLI blames the --set option)."""
    if save and only_targets:
        raise BadInput("--target chooses what one invocation checks and is never saved; drop --save or --target")
    chosen = recipe_for_regate(Path(run_dir) if run_dir is not None else None, recipe_path, list(overrides), list(only_targets))
    if target_updates:
        chosen = chosen.model_copy(update={"targets": [t.model_copy(update=target_updates) for t in chosen.targets]})
    if check is not None:
        check(chosen)
    run_dir = Path(run_dir) if run_dir is not None else Path("runs") / chosen.name
    saved = None
    if (overrides or only_targets or target_updates) and not save and (run_dir / "run.json").is_file():
        if fresh:
            raise BadInput("--fresh redoes the run, which a what-if (--set or --target without --save) never does")
        saved = recipe_for_regate(run_dir, recipe_path, [], [])
        if rounds is not None:
            chosen = chosen.model_copy(update={"targets": [t.model_copy(update={"rounds": rounds}) for t in chosen.targets]})
    return compress(chosen, run_dir, fresh=fresh, stages=("validate",), console=console, what_if_of=saved, rounds=rounds)


def gate_report(run_dir: Path | str) -> Report:
    """The report `edgedistill gate` judges: the last complete validation of the run's recorded recipe and of the
    files it names as they are now. Raises BadInput (exit 2) saying why there is none: no report yet, a stage out of
    date (the teacher's weights, the pool or the evaluation images changed, a rerun was stopped before it validated),
    or, for a `validate MODEL.onnx` report, a model file that changed since."""
    run_dir = Path(run_dir)
    report = Report.read(run_dir / "report.json")  # missing, not JSON or not a report: one line, exit 2
    if report.model is not None:  # `validate MODEL.onnx`: the verdict stands while the model file is the same
        file = Path(str(report.model.path))
        if not file.is_file() or _onnx_digest(file) != report.model.sha256:
            raise BadInput(
                f"{run_dir}: the model it validated, {file}, {'is gone' if not file.is_file() else 'changed since'}; "
                f"run `edgedistill validate {file} --out {run_dir}` again"
            )
        return report
    recipe = recipe_for_regate(run_dir, None, [], [])
    stale = Pipeline(recipe, run_dir, Console(quiet=True)).stale_stages(STAGES, ignore=("precision",))
    if stale:
        stage, why = stale[0]
        raise BadInput(
            f"{run_dir}: no complete validation of the run's recipe and files as they are now: {stage} is out of date "
            f"({why}); run `edgedistill validate --run-dir {run_dir}` (it redoes what is out of date)"
        )
    return report


def _onnx_digest(path: Path) -> str | None:
    """The model's and its external data's sha256; None when it no longer reads as ONNX."""
    try:
        return onnx_info(path).digest()
    except BadInput:
        return None
