"""The runtime table's row, and the files a row runs.

A runtime is one module in backends/ that builds its `Runtime` row and registers it in RUNTIMES (a Registry, so a
plugin adds one the same way). The row owns everything edgedistill needs to know of its runtime: the precisions it
runs, the file it runs at each (an `Artifact`: its name in the run directory and the callable that makes it from
student.onnx), whether it builds an engine it can keep, the target keys only it reads (its `options`: a pydantic model,
read typed by its runner through `runtime_options(target)`), how to open it, how doctor probes it and what to install
when the probe says no. The pipeline, the recipe check, doctor and the CLI ask the row; none of them knows a runtime
by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..config.schema import TargetSpec
from ..errors import BadInput, did_you_mean
from ..registry import Registry
from ..stages.fp16 import convert_fp16
from ..stages.quantize import quantize_int8

if TYPE_CHECKING:
    from ..config.schema import ExportSpec
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


class RuntimeOptions(BaseModel):
    """The target keys only one runtime reads: a row's `options` is a subclass with those keys as fields (type, default,
    description; `title` is how a message names the key). A recipe's target gives them beside the keys every target
    has (TargetSpec); the recipe check validates them with the row's model, `edgedistill recipe-schema` offers them on
    that runtime's targets only, and the runner reads them typed, with the row's defaults, from runtime_options(target)."""

    model_config = ConfigDict(extra="forbid")


def threads_option(of: str) -> Any:
    """The `threads` field of a CPU runtime's options."""
    return Field(
        1,
        ge=0,
        title="intra-op threads",
        description=f"intra-op threads of {of}; 1 keeps latency independent of core count and of other load on the "
        "machine; 0 = all cores (the runtime's own default)",
    )


def remote_python_option(needs: str) -> Any:
    """The `remote_python` field of a runtime whose worker runs in the device's own Python over ssh (worker.py)."""
    what = f"over ssh: the Python on the device that runs the runtime's worker; it needs {needs}"
    return Field("python3", title="the device's Python", description=what)


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    open_runner: Callable[[TargetSpec, Path], Runner]  # opens the model on the target: here, or on its ssh device
    probe: Callable[[], dict]  # for doctor: {"usable": bool, "detail": str, ...}; the detail says what is missing, not how to get it
    install: str  # what to install when the probe says it is not usable (doctor's "to get it" column)
    artifacts: Mapping[str, Artifact]  # precision -> the file it runs at that precision (its keys: what `precision` may be)
    builds_engine: bool = False  # builds an engine from the file; the run keeps its plan (engine-TARGET-PRECISION.plan)
    options: type[BaseModel] = RuntimeOptions  # the target keys only it reads (a RuntimeOptions subclass); others are refused
    over_ssh: bool = False  # can run on a device over ssh (the ssh keys)
    remote_modules: tuple[str, ...] = ()  # over ssh: what the device's Python must import (any one), checked by the pre-flight
    timed_by_duration: bool = True  # can time batch 1 for a duration instead of a call count
    # doctor's lines under the runtime for the optional parts its probe reports (probe()["parts"]: name -> usable and
    # detail), each with what installs it; ONNX Runtime's GPU execution providers, for one
    part_install: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.install.strip():
            raise ValueError(f"runtime {self.name}: give an install hint (what doctor prints when its probe says no)")
        if not self.artifacts:
            raise ValueError(f"runtime {self.name}: give the file it runs at one precision at least")
        if not (isinstance(self.options, type) and issubclass(self.options, BaseModel)):
            raise ValueError(f"runtime {self.name}: options is a pydantic model of the target keys it reads (RuntimeOptions)")
        for key, option in self.options.model_fields.items():
            if key in TargetSpec.model_fields:
                raise ValueError(f"runtime {self.name}: option {key} is a key of every target (TargetSpec); name it otherwise")
            if key in TargetSpec.DUMPED_OPTIONS and option.default != TargetSpec.DUMPED_OPTIONS[key]:
                raise ValueError(
                    f"runtime {self.name}: option {key} must default to {TargetSpec.DUMPED_OPTIONS[key]!r}, as every target's "
                    f"recorded {key} does (TargetSpec.DUMPED_OPTIONS); name it otherwise for another default"
                )

    def read_options(self, target: TargetSpec, where: str = "", strict: bool = False) -> BaseModel:
        """The target's keys this runtime reads, validated by `options` (its defaults for those left out). `strict`
        (the recipe check): a key it does not read is refused too, unless a recorded target's default (DUMPED_OPTIONS);
        else the runner, which ignores such keys as before."""
        prefix = f"{where}: " if where else ""
        fields = self.options.model_fields
        given = {}
        for key, value in (target.model_extra or {}).items():
            if key in fields:
                given[key] = value
            elif strict and not (key in TargetSpec.DUMPED_OPTIONS and value in (None, [], TargetSpec.DUMPED_OPTIONS[key])):
                raise BadInput(prefix + self._not_read(key))
        try:
            return self.options.model_validate(given)
        except ValidationError as exc:
            err = exc.errors()[0]
            at = ".".join(part for part in (where, *map(str, err["loc"])) if part)  # targets.0.threads, as config.load says it
            raise BadInput(f"{at}: {err['msg']} (an option of runtime {self.name})") from None

    def _not_read(self, key: str) -> str:
        mine = f"its options: {', '.join(self.options.model_fields) or 'none'}"
        readers = [r for r in RUNTIMES.values() if key in r.options.model_fields]
        if readers:
            title = readers[0].options.model_fields[key].title or key
            return (
                f"{key} ({title}): they need runtime: {' or '.join(r.name for r in readers)}; runtime {self.name} does not "
                f"read {key} (drop it, or change the runtime; {mine})"
            )
        keys = [*TargetSpec.model_fields, *self.options.model_fields]
        return f"{key} is not a target key nor an option of runtime {self.name} ({mine}){did_you_mean(key, keys)}"

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


def runtime_options(target: TargetSpec, where: str = "") -> Any:
    """The typed values of the keys the target's runtime reads (its row's `options` model, with the row's defaults for
    the keys the target leaves out): what every runner and the pre-flight read, never the target's raw keys."""
    return RUNTIMES.get(target.runtime, where).read_options(target, where)


def runtimes_reading(key: str) -> list[Runtime]:
    """The rows whose options include `key`, in the table's order (the CLI's help names them)."""
    return [r for r in RUNTIMES.values() if key in r.options.model_fields]


def option_keys() -> list[str]:
    """Every runtime's option keys, once each, in the table's order: what a target may give beside TargetSpec's keys."""
    return list(dict.fromkeys(key for r in RUNTIMES.values() for key in r.options.model_fields))
