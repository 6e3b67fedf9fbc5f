"""OpenVINO on this machine's CPU: runs student.onnx, student.int8.onnx with int8 kernels (its Q/DQ nodes
become quantized convolutions and matmuls; AMX or VNNI where the CPU has them) and student.fp16.onnx.

The plugin's own default inference precision on CPUs with AVX512-BF16/AMX is bf16; here it is set per target
precision instead (`inference_precision`), so an fp32 target never silently runs in bf16."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput, TargetUnavailable
from .base import LatencyStats, Runner, machine_facts, time_calls
from .runtime import FP16, FP32, INT8_CPU, Runtime, RuntimeOptions, register_runtime, runtime_options, threads_option

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

DEVICE = "CPU"


def import_openvino():
    try:
        import openvino
    except ImportError as exc:
        raise TargetUnavailable(f"runtime openvino: the openvino package is not installed ({exc}); pip install openvino") from None
    return openvino


@cache
def shared_core():
    """One ov.Core per process: a second Core queried in the same process corrupts memory and crashes it later
    (seen here as segfaults in unrelated code; ultralytics/ultralytics#25864 reports the same)."""
    return import_openvino().Core()


def inference_precision(precision: str) -> str:
    """INFERENCE_PRECISION_HINT for a target precision.

    fp32 and int8 run f32: the fp32 row must be the exact model so that accuracy, agreement and the INT8 drop
    mean what they say, and a bf16 hint made INT8 models no faster (their float layers are few). fp16 runs the
    CPU's fast 16-bit float: bf16 where it has AVX512-BF16/AMX (ResNet-18 2-4x faster than f32 here), else f16
    where it has it natively (ARM), else f32. An f16 hint on x86 without AMX-FP16 is emulated: 2.6x slower than f32.
    """
    if precision != "fp16":
        return "f32"
    capabilities = shared_core().get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")
    arm = platform.machine().lower() in ("arm64", "aarch64")
    return "bf16" if "BF16" in capabilities else "f16" if "FP16" in capabilities and arm else "f32"


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, precision: str = "fp32"):
        ov = import_openvino()
        self.core, self.threads, self.precision, self.version = shared_core(), threads, precision, ov.__version__
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": inference_precision(precision)}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = self.core.compile_model(self.core.read_model(str(model)), DEVICE, config)
        except RuntimeError as exc:  # OpenVINO reports unreadable or unsupported models as RuntimeError
            raise BadInput(f"{model}: OpenVINO {ov.__version__} cannot load it: {str(exc).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()
        self.input_shape = self.compiled.input(0).get_partial_shape()

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer([np.ascontiguousarray(x, dtype=np.float32)])[self.compiled.output(0)])

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        item = [d.get_length() if d.is_static else 1 for d in list(self.input_shape)[1:]]
        x = np.random.default_rng(0).standard_normal([batch, *item]).astype(np.float32)
        samples = time_calls(lambda: self.request.infer([x]), warmup, iterations, duration_s)
        return LatencyStats.from_samples(samples, batch)

    def facts(self) -> dict:
        return {
            "runtime": "openvino",
            "version": self.version,
            "device": self.core.get_property(DEVICE, "FULL_DEVICE_NAME"),
            "precision": self.precision,
            "inference_precision": self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "plugin_default_precision": self.core.get_property(DEVICE, "INFERENCE_PRECISION_HINT").get_type_name(),
            "threads": self.compiled.get_property("INFERENCE_NUM_THREADS") or "default",
            **machine_facts(),
        }

    def close(self) -> None:
        self.request = self.compiled = None


class OpenVinoOptions(RuntimeOptions):
    """The target keys OpenVINO reads."""

    threads: int = threads_option("OpenVINO's CPU plugin (INFERENCE_NUM_THREADS)")


def open_runner(target: TargetSpec, model: Path) -> Runner:
    return OpenVinoRunner(model, runtime_options(target).threads, target.precision)


def probe() -> dict:
    try:
        import openvino as ov
    except ImportError as exc:
        return {"usable": False, "detail": f"openvino module: {exc}"}
    core = shared_core()
    return {
        "usable": DEVICE in core.available_devices,
        "version": ov.__version__,
        "detail": f"{ov.__version__} on {core.get_property(DEVICE, 'FULL_DEVICE_NAME')} "
        f"({', '.join(core.get_property(DEVICE, 'OPTIMIZATION_CAPABILITIES'))})",
    }


RUNTIME = register_runtime(
    Runtime(
        "openvino",
        "OpenVINO on this machine's CPU",
        open_runner,
        probe,
        install="pip install openvino",
        artifacts={"fp32": FP32, "fp16": FP16, "int8": INT8_CPU},
        options=OpenVinoOptions,
    )
)
