"""LiteRT (Google's on-device runtime, formerly TensorFlow Lite; the `ai-edge-litert` package): runs student.tflite and
its full-integer INT8 copy student.int8.tflite, on this machine (LiteRTRunner) or on a board over ssh in the board's
own Python through litert_worker.py (RemoteLiteRTRunner, a worker.WorkerRunner). Both go through litert_worker.Model.

The files are not made from student.onnx: litert-torch converts the PyTorch student itself (MakeInputs.student), and
ai-edge-quantizer makes the INT8 copy from that conversion, static full-integer (int8 weights and activations, int8
input and output), calibrated on the selected pool images the pipeline hands every INT8 maker. The conversion has a
fixed batch of 1 (litert-torch 0.10 cannot lower a dynamic batch through the students' flatten); a larger batch runs
as that many calls, which is how a phone or a board runs a classifier anyway. See docs/deploy.md#litert.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput, TargetUnavailable
from . import litert_worker
from .base import LatencyStats, Runner, machine_facts, time_calls
from .hosts import open_host
from .hosts.base import Host
from .runtime import Artifact, MakeInputs, Runtime, RuntimeOptions, register_runtime, remote_python_option, runtime_options, threads_option
from .worker import WorkerRunner

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

log = logging.getLogger(__name__)

WORKER = Path(__file__).with_name("litert_worker.py")
INSTALL = "pip install 'edgedistill[litert]' (ai-edge-litert runs the files, litert-torch converts the student)"
RUNTIME_ONLY = "pip install ai-edge-litert"
CALIBRATION_THREADS = 2


def import_litert() -> None:
    try:
        litert_worker.interpreter_class()
    except ImportError as exc:
        raise TargetUnavailable(f"runtime litert: the ai-edge-litert package is not installed ({exc}); {RUNTIME_ONLY}") from None


def import_converter() -> Any:
    try:
        import litert_torch
    except ImportError as exc:
        raise TargetUnavailable(f"runtime litert: its converter litert-torch is not installed ({exc}); {INSTALL}") from None
    try:
        litert_torch._config.config.show_progress = False  # its progress lines would interleave with ours
    except AttributeError:
        pass
    return litert_torch


class LiteRTRunner(Runner):
    """LiteRT's interpreter on this machine (its XNNPACK CPU delegate), `threads` threads (0: its default)."""

    name = "litert"

    def __init__(self, model: Path, threads: int = 0):
        import_litert()
        check_tflite(model)
        try:
            self.model = litert_worker.Model(model, threads)
        except (ValueError, RuntimeError) as exc:  # the interpreter's errors for a file it cannot read
            raise BadInput(f"{model}: LiteRT cannot load it: {str(exc).strip().splitlines()[0]}") from None

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.model.infer(np.ascontiguousarray(x, dtype=np.float32))

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        x = self.model.sample(batch)
        return LatencyStats.from_samples(time_calls(lambda: self.model.infer(x), warmup, iterations, duration_s), batch)

    def facts(self) -> dict:
        return {"runtime": "litert", **self.model.facts(), **machine_facts()}

    def close(self) -> None:
        self.model = None


class LiteRTOptions(RuntimeOptions):
    """The target keys LiteRT reads."""

    threads: int = threads_option("LiteRT's XNNPACK CPU delegate")
    remote_python: str = remote_python_option("numpy and ai-edge-litert (or the older tflite-runtime)")


class RemoteLiteRTRunner(WorkerRunner):
    """LiteRT in the device's own Python (ai-edge-litert or tflite-runtime), driven by litert_worker.py uploaded to it."""

    name = "litert"
    worker, remote_name, model_name = WORKER, "edgedistill_litert.py", "model.tflite"
    helper, modules = "LiteRT", "ai-edge-litert"
    install = "pip install ai-edge-litert on the board (aarch64 wheels exist)"
    exit_hints = {litert_worker.MODEL_REJECTED_EXIT: "upgrade ai-edge-litert on the board"}

    def __init__(self, host: Host, model: Path, target: TargetSpec, options: LiteRTOptions):
        check_tflite(model)
        super().__init__(host, model, target, options.remote_python, [str(options.threads)])


def check_tflite(model: Path) -> None:
    if Path(model).suffix != ".tflite":
        raise TargetUnavailable(f"runtime litert runs .tflite files, not {Path(model).name} (no LiteRT conversion of it here)")


def open_runner(target: TargetSpec, model: Path) -> Runner:
    options = runtime_options(target)
    if target.ssh:
        host = open_host(target)
        try:
            return RemoteLiteRTRunner(host, model, target, options)
        except BaseException:
            host.close()
            raise
    return LiteRTRunner(model, options.threads)


def probe() -> dict:
    try:
        _, package = litert_worker.interpreter_class()
    except ImportError as exc:
        return {"usable": False, "detail": f"ai_edge_litert module: {exc} ({RUNTIME_ONLY})"}  # the pre-flight's one line
    version = litert_worker.package_version(package)
    if importlib.util.find_spec("litert_torch") is not None:  # not imported: it brings jax and transformers along
        converter = f"litert-torch {litert_worker.package_version('litert-torch')}"
    else:
        converter = "no converter (litert-torch): runs .tflite files, cannot make them"
    return {"usable": True, "version": version, "detail": f"{package} {version} (XNNPACK CPU); {converter}"}


# ------------------------------------------------------------------------------------------------ the files it runs


def _item_shape(x: MakeInputs) -> tuple[int, ...]:
    """The student's input sizes after the batch axis, as student.onnx records them."""
    from ..models.onnx_info import onnx_info

    return tuple(onnx_info(x.fp32).fixed_item("LiteRT conversion"))  # type: ignore[arg-type]


def _convert(x: MakeInputs, out: Path) -> None:
    """student.tflite: litert-torch's conversion of the PyTorch student at batch 1, NCHW float32 in, logits out."""
    if x.student is None:
        raise BadInput(f"{out.name}: LiteRT converts the PyTorch student, and this export step was given none (MakeInputs.student)")
    litert_torch = import_converter()
    import torch

    sample = torch.zeros((1, *_item_shape(x)), dtype=torch.float32)
    try:
        converted = litert_torch.convert(x.student.eval().cpu(), (sample,))
    except Exception as exc:  # torch.export and the MLIR lowering raise many types
        said = (str(exc).strip().splitlines() or [""])[0]
        raise BadInput(f"{out.name}: litert-torch cannot convert the student ({type(exc).__name__}: {said})") from None
    partial = out.with_name(out.name + ".partial")
    converted.export(str(partial))
    partial.replace(out)


def make_fp32(x: MakeInputs) -> dict[str, Any]:
    _convert(x, x.out)
    return {"bytes": x.out.stat().st_size}


def make_int8(x: MakeInputs) -> dict[str, Any]:
    """student.int8.tflite: ai-edge-quantizer's static full-integer recipe (int8 weights and activations, int8 input and
    output; min/max ranges) over the fp32 conversion, calibrated on up to `max_samples` selected images (seeded)."""
    if x.calibration is None or not len(x.calibration):
        raise BadInput(f"{x.out.name}: no calibration images; INT8 needs the selected pool images")
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise TargetUnavailable(f"runtime litert: its quantizer ai-edge-quantizer is not installed ({exc}); {INSTALL}") from None
    images = np.asarray(x.calibration)
    count = min(len(images), x.max_samples)
    index = np.arange(len(images))
    if count < len(images):  # the same seeded subsample rule as the ONNX copies (stages/quantize.py)
        index = np.sort(np.random.default_rng(x.seed).choice(len(images), size=count, replace=False))
    shape = (1, -1, 1, 1)
    mean, std = np.asarray(x.mean, np.float32).reshape(shape), np.asarray(x.std, np.float32).reshape(shape)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "student.tflite"
        _convert(x, fp32)
        signature = litert_worker.Model(fp32, 1).interpreter.get_signature_list()
        key = next(iter(signature))
        name = signature[key]["inputs"][0]
        feed = [{name: ((images[i : i + 1].astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)} for i in index]
        partial = x.out.with_name(x.out.name + ".partial")
        with warnings.catch_warnings():  # calibration keeps every tensor, on purpose; the interpreter warns about it
            warnings.simplefilter("ignore", UserWarning)
            quant = quantizer.Quantizer(str(fp32))
            quant.load_quantization_recipe(recipe.static_wi8_ai8())
            ranges = quant.calibrate({key: feed}, num_threads=CALIBRATION_THREADS)
            quant.quantize(ranges, enable_progress_report=False).export_model(str(partial), overwrite=True)
        partial.replace(x.out)
        fp32_bytes = fp32.stat().st_size
    if x.method != "minmax":
        log.warning("export: LiteRT's INT8 copy takes min/max ranges; export.int8.method %s applies to the ONNX copies", x.method)
    return {
        "bytes": x.out.stat().st_size,
        "fp32_bytes": fp32_bytes,
        "scheme": "full-integer static: int8 weights and activations, int8 input and output (ai-edge-quantizer static_wi8_ai8)",
        "method": "minmax",
        "calibration_samples": int(count),
    }


FP32_TFLITE = Artifact("student.tflite", make_fp32)
INT8_TFLITE = Artifact("student.int8.tflite", make_int8, calibrated=True, enabled=lambda export: export.int8.enabled)

RUNTIME = register_runtime(
    Runtime(
        "litert",
        "LiteRT (TensorFlow Lite) on the CPU with XNNPACK: a .tflite converted from the PyTorch student; here or over ssh",
        open_runner,
        probe,
        install=INSTALL,
        artifacts={"fp32": FP32_TFLITE, "int8": INT8_TFLITE},
        options=LiteRTOptions,
        over_ssh=True,
        remote_modules=("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
    )
)
