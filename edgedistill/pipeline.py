"""compress: the stages (select -> plan -> distill -> export -> validate, each one class in edgedistill.stages) run
in order, each skipped when its inputs are unchanged, with progress shown and logged."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .atomic import atomic_write_json
from .backends import RUNTIMES
from .config.schema import Recipe
from .errors import BadInput
from .models.onnx_info import onnx_info
from .recipe import checked_recipe, load_recipe, recipe_for_regate
from .results.report import Report, gate_error
from .results.rundir import package_versions
from .scale.compute import cpu_threads
from .scale.distributed import broadcast_object, close_world, init_world
from .stages.deployment import WHAT_IF_DIR, ValidateStage
from .stages.distill import DistillStage
from .stages.export import ExportStage
from .stages.plan import PlanStage
from .stages.preflight import run_preflight
from .stages.select import SelectStage
from .stages.stage import RunContext, Stage, build_student, load_teacher

__all__ = ["ARTIFACTS", "STAGES", "Pipeline", "build_student", "compress", "gate_report", "load_teacher", "regate"]

# the order a run goes through; each stage declares what it depends on and writes (edgedistill/stages/stage.py)
STAGE_LIST: tuple[Stage, ...] = (SelectStage(), PlanStage(), DistillStage(), ExportStage(), ValidateStage())
STAGES = tuple(stage.name for stage in STAGE_LIST)
# every file a run writes at the top of its directory, by the stage that writes it (None: the run itself): a user's
# file under one of these names is refused before the first stage runs, not when its stage reaches it (engine plans
# and scratch files, named per target and per inputs, are refused when they are written)
ARTIFACTS = {"run.json": None, "run.log": None, **{file: stage.name for stage in STAGE_LIST for file in stage.writes}}
# what a what-if must leave as the run made it; it may change the targets a plan chose for: it checks the chosen
# student against them and never plans again
WHAT_IF_KEEPS = ("select", "distill", "export")
log = logging.getLogger("edgedistill")


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
    """The loop over STAGE_LIST for one recipe and run directory; the stages share `ctx` (stages/stage.py)."""

    def __init__(self, recipe: Recipe, run_dir: Path, console: Console, rounds: int | None = None):
        self.ctx = RunContext(recipe, run_dir, console, list(STAGE_LIST), rounds)
        self.recipe, self.run, self.console, self.world = recipe, self.ctx.run, console, self.ctx.world

    def inputs(self, stage: str):
        return self.ctx.inputs(stage)

    def stale_stages(self, stages: tuple[str, ...] = STAGES, ignore: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        return self.ctx.stale(stages, ignore)

    def run_what_if(self, saved: Recipe) -> dict:
        """Validates this pipeline's recipe, a what-if of `saved` (the recipe the run was made with), and returns its
        report, written to WHAT_IF_DIR. Select, distill and export must be up to date under `saved`, and the what-if
        must leave their sections alone: it never retrains, re-exports, or changes what the run recorded."""
        for stage in (s for s in STAGE_LIST if s.name in WHAT_IF_KEEPS):
            changed = [name for name in stage.sections if self.recipe.section(name) != saved.section(name)]
            if changed:
                raise BadInput(
                    f"a what-if only re-validates, but it changes {', '.join(changed)}, which {stage.name} depends on; run "
                    f"`edgedistill compress` with that --set to redo {stage.name}, or add --save"
                )
        stale = Pipeline(saved, self.run.path, self.console).stale_stages(WHAT_IF_KEEPS)
        if stale:
            stage, why = stale[0]
            raise BadInput(
                f"{self.run.path}: {stage} is out of date ({why}); a what-if never redoes it: run `edgedistill compress` "
                "(or `validate --run-dir` without --set/--target) first"
            )
        self.ctx.what_if = True
        self.run.open()
        try:
            with _progress(self.console) as progress:
                STAGE_LIST[-1].run(self.ctx, progress)
        finally:
            self.run.close()
        return json.loads((self.run / WHAT_IF_DIR / "report.json").read_text())

    def run_stages(self, stages: tuple[str, ...] = STAGES, fresh: bool = False, force: tuple[str, ...] = ()) -> dict:
        """Runs `stages` and whatever earlier stage they need; a stage already done with the same inputs is skipped.

        Under torchrun every rank scores and trains; rank 0 alone decides what is done, writes, exports and validates."""
        main = self.world.main
        if stages != ("export",):
            self.ctx.teacher  # noqa: B018  (first: weights that do not fit their model are a one-line error before anything is written)
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
        main, ctx = self.world.main, self.ctx
        if fresh and main:
            self.run.clear()
            DistillStage.remove_scratch(ctx)
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
            if ctx.cpu_threads:
                log.info("compute: %s", json.dumps(ctx.cpu_threads))
            for stage in STAGE_LIST[: last + 1]:
                name = stage.name
                if not stage.applies(self.recipe):
                    continue
                if not main and not stage.ranked:
                    if name == "plan":  # rank 0 plans; the others read its choice from the run directory
                        continue
                    break
                done, why = (name not in force and self.run.is_done(name, ctx.inputs(name)), None) if main else (None, None)
                if main and not done and name not in force:
                    why = self.run.why_stale(name, ctx.inputs(name)) or "its last result was not final (measured on a busy machine)"
                if stage.ranked:
                    done = broadcast_object(done)
                if done:
                    self.console.print(f"[dim]{name}: up to date, skipped")
                    continue
                if why and why != "not done yet":
                    self.console.print(f"{name}: redone: {why}", highlight=False)
                    log.info("%s: redone: %s", name, why)
                started = time.perf_counter()
                ctx.keep(name, stage.run(ctx, progress))
                log.info("%s: done in %.1f s", name, time.perf_counter() - started)
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
    # checked once: a loaded recipe (CLI, API, regate) passes through; a Recipe built in Python is checked here
    recipe = checked_recipe(recipe) if isinstance(recipe, Recipe) else load_recipe(recipe)
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
        pipeline.ctx.cpu_threads = threads
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
) -> dict:
    """`validate --run-dir DIR` (the recipe DIR recorded) or `validate RECIPE`: validates the run again, redoing what
    is out of date. --set (`overrides`), --target (`only_targets`) and `target_updates` (applied to every target)
    without `save` make it a what-if where DIR holds a run (compress's `what_if_of`): the run's recipe, artifacts and
    verdict stay as they were. --rounds (`rounds`) alone re-measures the run itself with more rounds (the retry of an
    inconclusive verdict)."""
    if save and only_targets:
        raise BadInput("--target chooses what one invocation checks and is never saved; drop --save or --target")
    chosen = recipe_for_regate(Path(run_dir) if run_dir is not None else None, recipe_path, list(overrides), list(only_targets))
    if target_updates:
        chosen = chosen.model_copy(update={"targets": [t.model_copy(update=target_updates) for t in chosen.targets]})
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
