"""A stage of `compress` and what the stages of one run share.

Each stage is one class in the module of its work (select.py, plan.py, distill.py, export.py; the run's validate
stage in deployment.py): its name, the recipe sections, earlier stages and kinds of files it depends on, the files it
writes, how it runs and how its typed result is read back. edgedistill.pipeline runs them in order, skipping a stage
whose inputs are unchanged; a stage gets what an earlier one made from `RunContext.result`, never from that stage's
files, so only the stage that writes a file knows its name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel
from rich.console import Console
from safetensors.torch import load_file
from torch import nn

from ..config.schema import Recipe
from ..errors import BadInput
from ..inputs.fingerprint import Fingerprint, paths_fingerprint, tree_fingerprint
from ..inputs.labeled import EvalSet, load_labeled
from ..models.checkpoint import fit_state_dict
from ..models.factory import build_student_model
from ..models.teachers import load_teacher_model, teacher_format
from ..results.rundir import RunDir, StageInputs
from ..results.selection import Selection, load_selection
from ..scale.compute import resolve_compute
from ..scale.distributed import world

log = logging.getLogger("edgedistill")


class Progress(Protocol):
    """What a stage calls on its progress display (rich's Progress, or pipeline.LineProgress in CI logs)."""

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int: ...
    def advance(self, task_id: int, advance: float = 1) -> None: ...
    def update(self, task_id: int, **fields: Any) -> None: ...


def load_teacher(recipe: Recipe) -> nn.Module:
    """From any source the recipe names (edgedistill.teacher), frozen, checked to run on the recipe's input."""
    t = recipe.teacher
    return load_teacher_model(t, recipe.resolve(t.weights) if t.weights is not None else None, recipe.base_dir)


def build_student(recipe: Recipe) -> nn.Module:
    t, s = recipe.teacher, recipe.student
    return build_student_model(s.arch, t.num_classes, t.input, s.feature_layer, recipe.base_dir)


STUDENT_WEIGHTS = "student.safetensors"  # the distill stage writes it; export and validate rebuild the student from it


def load_student(recipe: Recipe, run: RunDir) -> nn.Module:
    """The distilled student of `recipe` (its chosen student, RunContext.student_recipe), in eval mode."""
    student = build_student(recipe)
    path = run / STUDENT_WEIGHTS
    fit_state_dict(student, load_file(str(path)), path)
    return student.eval()


class Stage:
    """One stage: what it depends on and writes (the pipeline's skip, resume, --fresh and the refusal of a user's file
    under one of its names follow from these), `run`, and `read_result`, its typed result as a finished run left it."""

    name: ClassVar[str]
    sections: ClassVar[tuple[str, ...]]  # the recipe sections it depends on
    after: ClassVar[tuple[str, ...]] = ()  # the earlier stages whose outputs it reads
    files: ClassVar[tuple[str, ...]] = ()  # kinds of files the recipe names that it reads: teacher, pool, eval
    writes: ClassVar[tuple[str, ...]] = ()  # the files it makes at the top of the run directory
    ranked: ClassVar[bool] = False  # every rank of a torchrun launch runs it (else rank 0 alone)

    def applies(self, recipe: Recipe) -> bool:
        """Whether it is part of this recipe's run."""
        return True

    def extra_inputs(self, ctx: RunContext) -> dict[str, Any]:
        """What it depends on beyond its recipe sections, e.g. the chosen student in place of the candidates."""
        return {}

    def run(self, ctx: RunContext, progress: Progress) -> BaseModel | None:
        """Does the work, writes its files, records itself done (RunDir.mark_done) and returns its typed result."""
        raise NotImplementedError

    def read_result(self, ctx: RunContext) -> BaseModel | None:
        """Its typed result, from what a finished run of it wrote."""
        return None


class RunContext:
    """What the stages of one invocation share: the recipe, the run directory, the teacher (loaded once), the
    selection (read once), the fingerprints of the recipe's files (taken once) and the stages' typed results."""

    def __init__(self, recipe: Recipe, run_dir: Path, console: Console, stages: list[Stage], rounds: int | None = None):
        """`rounds`: latency rounds for this invocation's measurements, every target (`validate --rounds`): how well
        the recipe's budgets are measured, not what they are, so not part of the recipe the run records."""
        self.recipe, self.run, self.console, self.rounds = recipe, RunDir(run_dir), console, rounds
        self.stages = {stage.name: stage for stage in stages}
        self.world = world()
        self.compute = resolve_compute(recipe.compute, self.world.device)
        self.cpu_threads: dict | None = None  # how many CPU threads compress chose, and why (scale.compute.cpu_threads)
        self.what_if = False  # validate only, into deployment.WHAT_IF_DIR, recording nothing (Pipeline.run_what_if)
        self._teacher: nn.Module | None = None
        self._selection: Selection | None = None
        self._fingerprints: dict[str, list[tuple[str, Fingerprint]]] = {}
        self._results: dict[str, BaseModel | None] = {}

    @property
    def teacher(self) -> nn.Module:
        if self._teacher is None:
            self._teacher = load_teacher(self.recipe)
        return self._teacher

    def applies(self, stage: str) -> bool:
        return self.stages[stage].applies(self.recipe)

    def result(self, stage: str) -> Any:
        """The typed result of `stage`: what it returned in this invocation, else what its finished run left."""
        if stage not in self._results:
            self._results[stage] = self.stages[stage].read_result(self) if self.applies(stage) else None
        return self._results[stage]

    def keep(self, stage: str, result: BaseModel | None) -> None:
        self._results[stage] = result

    @property
    def student_recipe(self) -> Recipe:
        """The recipe with the student the plan stage chose in place of the candidates (the recipe itself without)."""
        if not self.applies("plan"):
            return self.recipe
        plan = self.result("plan")
        if plan is None:
            raise BadInput(f"{self.run.path}: the student is not chosen yet; run `edgedistill plan` (or compress) for this run")
        return self.recipe.model_copy(update={"student": plan.student})

    # --------------------------------------------------------------------------------------------------- the selection

    def use_selection(self, selection: Selection) -> None:
        """The select stage's new selection, in place of the one a finished run left."""
        self._selection = selection

    @property
    def selection(self) -> Selection:
        if self._selection is None:
            self._selection = load_selection(self.run / "selected.npz")
        return self._selection

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """The selection's (train, holdout) images."""
        return self.selection.split()

    def eval_set(self) -> EvalSet:
        """The recipe's labeled set, or without one the selection's holdout scored by agreement with the teacher."""
        if self.recipe.eval.labeled:
            return load_labeled(self.recipe.eval.labeled, self.recipe)
        return EvalSet("selection holdout (teacher agreement)", self.split()[1], None)

    # ------------------------------------------------------------------------------------------------- stage inputs

    def inputs(self, stage: str) -> StageInputs:
        """What `stage` depends on: its recipe sections, the stages before it, and the contents of the files the
        recipe names that it reads, so a file replaced under the same path redoes the stage."""
        s = self.stages[stage]
        parts = self.recipe.section(*s.sections) | s.extra_inputs(self)
        if s.ranked:
            parts["precision"] = str(self.compute.dtype)  # scores and training change with it; the rest of `compute` does not
        upstream = [name for name in s.after if self.applies(name)]
        return self.run.stage_inputs(parts, upstream, {n: fp for kind in s.files for n, fp in self._file_inputs(kind)})

    def _file_inputs(self, kind: str) -> list[tuple[str, Fingerprint]]:
        """(name, Fingerprint) of the files behind one kind of input, taken once per run: `teacher` (its weights or
        model file), `pool` (each source that has files), `eval` (the labeled folder's images, contents hashed: the
        verdict hangs on each of them)."""
        if kind not in self._fingerprints:
            r, found = self.recipe, []
            if kind == "teacher" and r.teacher.weights is not None:
                weights = r.resolve(r.teacher.weights)
                files = teacher_format(r.teacher.arch).files(weights)
                found.append(("teacher.weights", paths_fingerprint(files, root=weights.parent, contents=True)))
            elif kind == "pool":
                found += [(f"pool.{i}", fp) for i, entry in enumerate(r.pool) if (fp := entry.fingerprint(r)) is not None]
            elif kind == "eval" and r.eval.labeled and not r.eval.labeled.startswith("builtin:"):
                found.append(("eval.labeled", tree_fingerprint(r.resolve(Path(r.eval.labeled)), contents=True)))
            self._fingerprints[kind] = found
        return self._fingerprints[kind]

    def stale(self, stages: tuple[str, ...] | None = None, ignore: tuple[str, ...] = ()) -> list[tuple[str, str]]:
        """(stage, why) for each of `stages` (all by default) that a run would redo now, in order; empty when all are
        up to date. `ignore`: recipe parts not to compare (the gate ignores `precision`, which depends on the machine
        that trained)."""
        return [
            (name, why)
            for name in (stages or tuple(self.stages))
            if self.applies(name) and (why := self.run.why_stale(name, self.inputs(name), ignore)) is not None
        ]
