"""Export: ONNX with a dynamic batch axis, checked, with a parity check against PyTorch."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from pydantic import BaseModel
from torch import nn

from ..atomic import atomic_path, atomic_write_json
from ..backends import BUILTIN_ARTIFACTS, RUNTIMES, Artifact, MakeInputs
from ..backends.runtime import FP32, INT8_CPU
from ..config.schema import InputSpec, Recipe, TargetSpec
from ..errors import BadInput
from ..inputs.images import normalize
from ..models.teachers import teacher_format
from ..results import report
from ..version import __version__
from .stage import Progress, RunContext, Stage, load_student

OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1
log = logging.getLogger("edgedistill")
Exporter = Literal["auto", "torchscript", "dynamo"]


@dataclass
class Parity:
    """parity.json: the fields of compare_outputs' dict (stages.validate) that the export check keeps."""

    samples: int
    max_abs_diff: float
    top1_agreement: float

    @classmethod
    def of(cls, comparison: dict) -> Parity:
        return cls(**{f.name: comparison[f.name] for f in fields(cls)})


def export_onnx(model: nn.Module, spec: InputSpec, path: Path, class_names: list[str] | None = None, exporter: Exporter = "auto") -> Path:
    """A single self-contained ONNX file (opset >= 17, dynamic batch) carrying the preprocessing as metadata.

    The TorchScript exporter goes first: mature for CNNs and 50x faster than the dynamo one on small models.
    It cannot express some ops (AdaptiveAvgPool2d to a size that does not divide its input, as LeNet-5 at
    32x32 has), and for those the dynamo exporter takes over.
    """
    model = model.eval()
    with atomic_path(path) as tmp:
        proto, used = None, "torchscript"
        if exporter in ("auto", "torchscript"):
            try:
                proto = _export_torchscript(model, spec, tmp)
            except Exception as exc:  # torch raises SymbolicValueError, UnsupportedOperatorError, RuntimeError...
                if exporter == "torchscript":
                    raise BadInput(f"the TorchScript ONNX exporter cannot export this model: {first_line(exc)}") from None
                log.info("export: TorchScript exporter failed (%s); using the dynamo exporter", first_line(exc))
        if proto is None:
            proto, used = _export_dynamo(model, spec, tmp), "dynamo"
        _add_metadata(proto, spec, class_names, used)
        if proto.ByteSize() > PROTOBUF_LIMIT:
            raise BadInput(f"the exported model is {proto.ByteSize() / 2**30:.1f} GiB, over protobuf's 2 GiB single-file limit")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return path


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 200 characters: what a one-line error or log entry shows of an exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _dummy(spec: InputSpec, batch: int) -> torch.Tensor:
    return torch.zeros(batch, spec.channels, spec.size, spec.size)


@contextlib.contextmanager
def _native_output_silenced():
    """The exporters' C++ side prints straight to file descriptors 1 and 2 (the whole TorchScript graph on failure)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _export_torchscript(model: nn.Module, spec: InputSpec, tmp: Path) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_silenced():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (_dummy(spec, 1),),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return onnx.load(str(tmp))


@contextlib.contextmanager
def _quiet_dynamo():
    """The dynamo exporter logs its opset 18 -> 17 down-conversion attempt, traceback included, when it fails."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            _native_output_silenced(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_dynamo(model: nn.Module, spec: InputSpec, tmp: Path) -> onnx.ModelProto:
    """Exports at batch 2 (torch.export specializes a size-1 dim); may come back at opset 18 when the
    down-conversion fails, which is fine (>= 17), and with weights in a side file, which is folded back in."""
    with tempfile.TemporaryDirectory(prefix=".export.", suffix=".part", dir=tmp.parent) as work, _quiet_dynamo():
        staged = Path(work) / "model.onnx"
        try:
            torch.onnx.export(
                model,
                (_dummy(spec, 2),),
                str(staged),
                input_names=["input"],
                output_names=["logits"],
                opset_version=OPSET,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                report=False,
                verify=False,
            )
        except Exception as exc:
            raise BadInput(f"neither ONNX exporter can export this model; dynamo: {first_line(exc)}") from None
        proto = onnx.load(str(staged), load_external_data=True)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < OPSET:
        raise BadInput(f"the dynamo exporter produced opset {opset}; edgedistill needs >= {OPSET}")
    return proto


def _add_metadata(proto: onnx.ModelProto, spec: InputSpec, class_names: list[str] | None, exporter: str) -> None:
    metadata = {
        "edgedistill_version": __version__,
        "input_layout": "NCHW",
        "input_scale": "1/255",
        "mean": json.dumps(spec.mean),
        "std": json.dumps(spec.std),
        "class_names": json.dumps(class_names or []),
        "exporter": exporter,
    }
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    for key, value in [*kept, *metadata.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def check_parity(model: nn.Module, onnx_path: Path, images: np.ndarray, spec: InputSpec) -> Parity:
    """Compares PyTorch and ONNX Runtime logits on real samples, at a batch size other than the export's, as every
    target's logits are compared (compare_outputs)."""
    import onnxruntime as ort

    from .validate import compare_outputs

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = normalize(torch.from_numpy(images), spec)
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    got = np.concatenate([session.run(None, {name: x[i : i + 64].numpy()})[0] for i in range(0, len(x), 64)])
    return Parity.of(compare_outputs(got, expected))


def parity_dict(parity: Parity) -> dict:
    return asdict(parity)


def make_file(
    artifact: Artifact,
    recipe: Recipe,
    fp32: Path,
    out: Path,
    calibration: np.ndarray | None = None,
    student: nn.Module | None = None,
    max_samples: int | None = None,
) -> dict:
    """One file a runtime runs, made by its row's maker (backends/runtime.py) from student.onnx or the PyTorch student,
    INT8 copies calibrated on `calibration` as the recipe's export.int8 says (`max_samples` in place of its samples):
    the export stage's files, and the plan's candidates' (stages/plan.py). Returns the facts the maker gives."""
    q, spec = recipe.export.int8, recipe.teacher.input
    made = MakeInputs(
        fp32,
        out,
        calibration,
        tuple(spec.mean),
        tuple(spec.std),
        method=q.method,
        max_samples=q.samples if max_samples is None else max_samples,
        seed=recipe.seed,
        student=student.eval() if student is not None else None,
    )
    handlers = list(logging.root.handlers)  # ORT's quantizer logs with logging.info(), which installs a root handler
    try:
        return dict(artifact.make(made))
    finally:
        logging.root.handlers[:] = handlers


def export_artifacts(recipe: Recipe) -> dict[str, Artifact]:
    """The files besides student.onnx that the export stage makes, by name, each with its maker (the runtime rows
    say which: backends/runtime.py): the CPU INT8 copy whenever INT8 is on (the report's int8 line measures it), and
    each file a target's runtime runs at its precision or times in also_time (an INT8 copy only for a target gated on
    it: each is one more calibration); a file whose export switch is off is not made."""
    wanted = [INT8_CPU]
    for t in recipe.targets:
        runtime = RUNTIMES.get(t.runtime)
        for precision in dict.fromkeys([t.precision, *t.also_time]):
            if precision in runtime.precisions:
                artifact = runtime.artifact_for(precision)
                if precision == t.precision or artifact.for_also_time:
                    wanted.append(artifact)
    return {a.file: a for a in wanted if a.make is not None and a.enabled(recipe.export)}


def target_file(run_dir: Path, target: TargetSpec, precision: str | None = None) -> Path:
    """The student file a target runs at a precision (its own by default), as its runtime's row says: e.g.
    student.onnx (fp32, or fp16 for the runtimes that build fp16 engines from it), student.fp16.onnx, or the INT8 copy
    it runs: the CPU one (U8S8), or the symmetric one TensorRT parses."""
    return Path(run_dir) / RUNTIMES.get(target.runtime).artifacts.get(precision or target.precision, FP32).file


def engine_file(target: TargetSpec, precision: str) -> str | None:
    """The name of the engine plan a TensorRT runtime builds for this target, kept to deploy without a rebuild."""
    if not RUNTIMES.get(target.runtime).builds_engine:
        return None
    return f"engine-{re.sub(r'[^A-Za-z0-9_.-]', '_', target.name)}-{precision}.plan"


TEACHER_ONNX = "teacher.onnx"


def _teacher_as_onnx(recipe: Recipe) -> Path | None:
    """The recipe's teacher file where it is ONNX already (its format says): timed as it is, never exported."""
    t = recipe.teacher
    return teacher_format(t.arch).onnx_file(recipe.resolve(t.weights) if t.weights is not None else None)


class ExportResult(BaseModel):
    """What the export stage leaves: the ONNX-PyTorch parity (parity.json) and how the INT8 copies were calibrated
    (int8.json; None when INT8 is off)."""

    parity: report.Parity
    int8: report.Int8 | None = None


class ExportStage(Stage):
    """student.onnx, checked against PyTorch, and every file the targets' runtimes run (export_artifacts)."""

    name = "export"
    sections = ("seed", "teacher", "student", "export")
    after = ("select", "distill")
    files = ("teacher",)
    writes = ("parity.json", *(a.file for a in BUILTIN_ARTIFACTS), "int8.json", TEACHER_ONNX)

    def extra_inputs(self, ctx: RunContext) -> dict:
        parts = {}
        if (plan := ctx.result("plan")) is not None:  # the chosen student, not the candidates
            parts["student"] = plan.student.model_dump(mode="json")
        made = export_artifacts(ctx.recipe)  # the two names below predate the runtime rows: kept, so runs made then stay current
        parts["tensorrt_int8"] = "student.int8.trt.onnx" in made
        parts["fp16_file"] = "student.fp16.onnx" in made
        if extra := sorted(set(made) - {a.file for a in BUILTIN_ARTIFACTS}):
            parts["artifacts"] = extra
        return parts

    def run(self, ctx: RunContext, progress: Progress) -> ExportResult:
        r, run = ctx.student_recipe, ctx.run
        task = progress.add_task("export: onnx", total=2, info="")
        student = load_student(r, run)
        export_onnx(student, r.teacher.input, run.artifact("student.onnx"), r.teacher.class_names)
        progress.advance(task)
        train, holdout = ctx.split()
        parity = parity_dict(check_parity(student, run / "student.onnx", holdout if len(holdout) else train[:256], r.teacher.input))
        atomic_write_json(run.artifact("parity.json"), parity)
        progress.advance(task)
        if parity["top1_agreement"] < 0.99 or parity["max_abs_diff"] > 1e-3:
            ctx.console.print(f"[yellow]export: ONNX and PyTorch differ: {parity}")
        outputs = ["student.onnx", "parity.json"]
        every = {a.file for runtime in RUNTIMES.values() for a in runtime.artifacts.values()} | {a.file for a in BUILTIN_ARTIFACTS}
        run.remove(*sorted(every - {"student.onnx"}), "int8.json", TEACHER_ONNX)
        made = export_artifacts(r)
        calibrated = {name: a for name, a in made.items() if a.calibrated}
        int8 = self._int8(ctx, progress, calibrated, student) if calibrated else None
        outputs += [*calibrated, "int8.json"] if calibrated else []
        for name, artifact in made.items():
            if not artifact.calibrated:
                make_file(artifact, r, run / "student.onnx", run.artifact(name), student=student)
                outputs.append(name)
        info = {}
        if r.export.teacher and _teacher_as_onnx(ctx.recipe) is None:
            info["teacher_onnx"] = self._export_teacher(ctx)
            outputs += [TEACHER_ONNX] if info["teacher_onnx"].get("error") is None else []
        run.mark_done("export", ctx.inputs("export"), outputs, info)
        return ExportResult(parity=report.Parity.model_validate(parity), int8=int8)

    def read_result(self, ctx: RunContext) -> ExportResult:
        run = ctx.run
        int8 = json.loads((run / "int8.json").read_text()) if (run / "int8.json").is_file() else None
        return ExportResult(parity=report.Parity.model_validate(json.loads((run / "parity.json").read_text())), int8=int8)

    @staticmethod
    def _int8(ctx: RunContext, progress: Progress, variants: dict[str, Artifact], student: nn.Module) -> report.Int8:
        """INT8 copies calibrated on the selection's training split: the pool images the student learned from."""
        r, q = ctx.recipe, ctx.recipe.export.int8
        calibration, _ = ctx.split()
        task = progress.add_task("export: int8", total=len(variants), info=f"{q.method}, {min(q.samples, len(calibration))} samples")
        info = {"method": q.method, "calibration_source": "selected.npz (training split)", "models": {}}
        for name, artifact in variants.items():
            facts = make_file(artifact, r, ctx.run / "student.onnx", ctx.run.artifact(name), calibration, student)
            if (samples := facts.pop("calibration_samples", None)) is not None:
                info["calibration_samples"] = samples
            info["models"][name] = facts  # bytes, fp32_bytes, for_tensorrt, reduce_range (backends/runtime.py)
            progress.advance(task)
        atomic_write_json(ctx.run.artifact("int8.json"), info)
        log.info("export: int8 %s", json.dumps(info))
        return report.Int8.model_validate(info)

    @staticmethod
    def _export_teacher(ctx: RunContext) -> dict:
        """teacher.onnx, timed on every target like the student, for the speed-ups; a teacher the exporters cannot
        express leaves the table without them, never fails the run."""
        r = ctx.recipe
        try:
            export_onnx(ctx.teacher, r.teacher.input, ctx.run.artifact(TEACHER_ONNX), r.teacher.class_names)
        except Exception as exc:  # BadInput from our exporter, or anything torch.onnx raises for an unusual model
            message = first_line(exc)
            ctx.console.print(f"[yellow]export: the teacher could not be exported to ONNX ({message}); no speed-ups", highlight=False)
            log.warning("export: teacher.onnx not written: %s", message)
            return {"error": message}
        return {"path": TEACHER_ONNX, "bytes": (ctx.run / TEACHER_ONNX).stat().st_size}

    @staticmethod
    def teacher_file(ctx: RunContext) -> Path | None:
        """The teacher's ONNX file for the deployment table: the recipe's own file for an ONNX teacher, else the
        teacher.onnx this stage wrote (absent when export.teacher is off or the teacher could not be exported)."""
        if (own := _teacher_as_onnx(ctx.recipe)) is not None:
            return own
        path = ctx.run / TEACHER_ONNX
        return path if path.is_file() else None
