"""The runtime table's row, and the files a row runs.

A runtime is one module in backends/ that builds its `Runtime` row and registers it in RUNTIMES (a Registry, so a
plugin adds one the same way). The row owns everything edgedistill needs to know of its runtime: the precisions it
runs, the file it runs at each (an `Artifact`: its name in the run directory and the callable that makes it from
student.onnx), whether it builds an engine it can keep, how to open it, how doctor probes it and what to install
when the probe says no. The pipeline, the recipe check, doctor and the CLI ask the row; none of them knows a runtime
by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..registry import Registry
from ..stages.fp16 import convert_fp16
from ..stages.quantize import quantize_int8

if TYPE_CHECKING:
    from ..config.schema import ExportSpec, TargetSpec
    from .base import Runner


@dataclass(frozen=True)
class MakeInputs:
    """What a maker gets: the fp32 export, where to write, and the INT8 calibration (selected pool images); `student`
    is the PyTorch student itself (eval mode, CPU) for a maker that converts the model rather than student.onnx
    (backends/litert.py), None where the caller has none."""

    fp32: Path
    out: Path
    calibration: np.ndarray | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    method: str = "minmax"
    max_samples: int = 512
    seed: int = 0
    student: Any = None  # torch.nn.Module | None


@dataclass(frozen=True)
class Artifact:
    """One file a runtime runs: `file` in the run directory, made by `make` from student.onnx or from the PyTorch
    student (MakeInputs.student; None: it is student.onnx itself). `make` returns the facts the export stage records
    of it; a `calibrated` file is an INT8 copy (its facts go to int8.json, and the run measures the CPU one's accuracy
    drop)."""

    file: str
    make: Callable[[MakeInputs], dict[str, Any]] | None = None
    calibrated: bool = False
    enabled: Callable[[ExportSpec], bool] = lambda export: True  # the recipe switch that turns the file on (export.*)
    for_also_time: bool = True  # made when a target only times it (also_time); False: only for a target gated on it


def _int8(for_tensorrt: bool) -> Callable[[MakeInputs], dict[str, Any]]:
    def make(x: MakeInputs) -> dict[str, Any]:
        result = quantize_int8(
            x.fp32,
            x.out,
            x.calibration,
            list(x.mean),
            list(x.std),
            method=x.method,
            max_samples=x.max_samples,
            seed=x.seed,
            for_tensorrt=for_tensorrt,
        )
        return {
            "bytes": result.size_bytes,
            "fp32_bytes": result.fp32_size_bytes,
            "for_tensorrt": for_tensorrt,
            "reduce_range": result.reduce_range,  # true: 7-bit weights, as this x86 CPU has no VNNI/AMX
            "calibration_samples": result.calibration_samples,
        }

    make.__qualname__ = make.__name__ = f"int8_{'tensorrt' if for_tensorrt else 'cpu'}"
    return make


def _fp16(x: MakeInputs) -> dict[str, Any]:
    convert_fp16(x.fp32, x.out)
    return {"bytes": x.out.stat().st_size}


FP32 = Artifact("student.onnx")
# the CPU INT8 copy (U8S8, reduce_range where the CPU needs it); the run always makes it when INT8 is on: its accuracy
# drop is the report's int8 line
INT8_CPU = Artifact("student.int8.onnx", _int8(for_tensorrt=False), calibrated=True, enabled=lambda export: export.int8.enabled)
# the symmetric copy TensorRT's ONNX parser accepts; made only for a target gated on it (a calibration each)
INT8_TENSORRT = Artifact(
    "student.int8.trt.onnx", _int8(for_tensorrt=True), calibrated=True, enabled=lambda export: export.int8.enabled, for_also_time=False
)
FP16 = Artifact("student.fp16.onnx", _fp16, enabled=lambda export: export.fp16)  # float16 weights, float32 input/output
BUILTIN_ARTIFACTS = (FP32, INT8_CPU, INT8_TENSORRT, FP16)


# The target keys that only some runtimes read, and what each is; a row names those it reads in `options`, and a
# target that gives one its runtime does not read is refused at recipe load (backends.check_target).
RUNTIME_OPTIONS = {
    "providers": "ONNX Runtime execution providers",
    "threads": "intra-op threads of a CPU runtime",
    "remote_python": "the device's Python that runs the runtime's worker over ssh (ONNX Runtime, LiteRT)",
    "trtexec": "the trtexec binary",
}


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    open_runner: Callable[[TargetSpec, Path], Runner]  # opens the model on the target: here, or on its ssh device
    probe: Callable[[], dict]  # for doctor: {"usable": bool, "detail": str, ...}; the detail says what is missing, not how to get it
    install: str  # what to install when the probe says it is not usable (doctor's "to get it" column)
    artifacts: Mapping[str, Artifact]  # precision -> the file it runs at that precision (its keys: what `precision` may be)
    builds_engine: bool = False  # builds an engine from the file; the run keeps its plan (engine-TARGET-PRECISION.plan)
    options: tuple[str, ...] = ()  # the runtime-specific target keys it reads (RUNTIME_OPTIONS); others are refused
    over_ssh: bool = False  # can run on a device over ssh (the ssh keys)
    remote_modules: tuple[str, ...] = ()  # over ssh: what the device's Python must import (any one), checked by the pre-flight
    timed_by_duration: bool = True  # can time batch 1 for a duration instead of a call count

    def __post_init__(self) -> None:
        if not self.install.strip():
            raise ValueError(f"runtime {self.name}: give an install hint (what doctor prints when its probe says no)")
        if not self.artifacts:
            raise ValueError(f"runtime {self.name}: give the file it runs at one precision at least")
        if unknown := set(self.options) - set(RUNTIME_OPTIONS):
            raise ValueError(f"runtime {self.name}: options {sorted(unknown)} are not target keys of RUNTIME_OPTIONS")

    @property
    def providers(self) -> bool:
        """Whether it takes ONNX Runtime execution providers."""
        return "providers" in self.options

    @property
    def precisions(self) -> tuple[str, ...]:
        """What a target's `precision` may be on this runtime."""
        return tuple(self.artifacts)

    def artifact_for(self, precision: str) -> Artifact:
        """The file this runtime runs at `precision`, and how the export stage makes it."""
        if precision not in self.artifacts:
            raise KeyError(f"runtime {self.name} runs {', '.join(self.precisions)}, not {precision}")
        return self.artifacts[precision]


RUNTIMES: Registry[Runtime] = Registry("runtime")


def register_runtime(row: Runtime) -> Runtime:
    """Adds a row to RUNTIMES under its name (a backend module, or a plugin, calls this once)."""
    return RUNTIMES.register(row.name)(row)
