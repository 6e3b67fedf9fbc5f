"""OpenVINO on this machine's CPU: runs student.onnx, and student.int8.onnx with int8 kernels (its Q/DQ nodes
become quantized convolutions and matmuls). Inference precision is pinned to f32, so an fp32 target never
silently runs in bf16 on CPUs that have it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput, TargetUnavailable
from .base import LatencyStats, Runner, machine_facts, time_calls

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


class OpenVinoRunner(Runner):
    name = "openvino"

    def __init__(self, model: Path, threads: int = 0, precision: str = "fp32"):
        ov = import_openvino()
        self.core, self.threads, self.precision, self.version = shared_core(), threads, precision, ov.__version__
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
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
            "threads": self.compiled.get_property("INFERENCE_NUM_THREADS") or "default",
            **machine_facts(),
        }

    def close(self) -> None:
        self.request = self.compiled = None


def open_runner(target: TargetSpec, model: Path) -> Runner:
    return OpenVinoRunner(model, target.threads, target.precision)


def probe() -> dict:
    try:
        ov = import_openvino()
    except TargetUnavailable as exc:
        return {"usable": False, "detail": str(exc)}
    core = shared_core()
    return {
        "usable": DEVICE in core.available_devices,
        "version": ov.__version__,
        "detail": f"{ov.__version__} on {core.get_property(DEVICE, 'FULL_DEVICE_NAME')} "
        f"({', '.join(core.get_property(DEVICE, 'OPTIMIZATION_CAPABILITIES'))})",
    }
