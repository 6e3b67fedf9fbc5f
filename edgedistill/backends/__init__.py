"""Runtime backends: one table of runtimes (RUNTIMES) that the recipe check, the CLI, doctor and the runner
factory all read. Adding a runtime is one module with an `open_runner` and a `probe`, and one row here.

Every runner has the same interface (base.Runner): open on construction, infer, time, facts, close.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import BadInput, did_you_mean
from . import onnxruntime, openvino, tensorrt
from .base import Runner
from .hosts.ssh import check_destination
from .trtexec import runner as trtexec_runner

if TYPE_CHECKING:
    from ..config.schema import TargetSpec


@dataclass(frozen=True)
class Runtime:
    name: str
    description: str
    open_runner: Callable[[TargetSpec, Path], Runner]  # opens the model on the target: here, or on its ssh device
    probe: Callable[[], dict]  # for doctor: {"usable": bool, "detail": str, ...}
    precisions: tuple[str, ...]  # what a target's `precision` may be
    int8_flavour: Literal["cpu", "tensorrt"] | None  # which INT8 export it runs (stages/quantize.py)
    fp16_from: Literal["file", "engine"] | None = None  # fp16: student.fp16.onnx (stages/fp16.py), or an engine built from fp32
    over_ssh: bool = False  # can run on a device over ssh
    providers: bool = False  # takes ONNX Runtime execution providers
    timed_by_duration: bool = True  # can time batch 1 for a duration instead of a call count


# fmt: off
RUNTIMES: dict[str, Runtime] = {r.name: r for r in (
    Runtime("onnxruntime", "ONNX Runtime: CPU, or its CUDA / TensorRT execution providers where installed; here or over ssh",
            onnxruntime.open_runner, onnxruntime.probe, ("fp32", "int8"), "cpu", over_ssh=True, providers=True),
    Runtime("openvino", "OpenVINO on this machine's CPU",
            openvino.open_runner, openvino.probe, ("fp32", "fp16", "int8"), "cpu", fp16_from="file"),
    Runtime("tensorrt", "TensorRT's Python API on this machine's GPU",
            tensorrt.open_runner, tensorrt.probe, ("fp32", "fp16", "int8"), "tensorrt", fp16_from="engine"),
    Runtime("trtexec", "TensorRT's trtexec command line, here or on a Jetson over ssh",
            trtexec_runner.open_runner, trtexec_runner.probe, ("fp32", "fp16", "int8"), "tensorrt", fp16_from="engine",
            over_ssh=True, timed_by_duration=False),
)}
# fmt: on


def create_runner(target: TargetSpec, model: Path) -> Runner:
    """The runner for a target whose runtime edgedistill.extensions has already checked."""
    return RUNTIMES[target.runtime].open_runner(target, model)


def check_target(target: TargetSpec, where: str = "") -> None:
    """What the runtime table says about a target's options, found before anything runs."""
    runtime = RUNTIMES.get(target.runtime)
    prefix = f"{where}: " if where else ""
    if runtime is None:
        raise BadInput(
            f"{prefix}runtime: unknown {target.runtime!r}{did_you_mean(target.runtime, list(RUNTIMES))}; available: {', '.join(RUNTIMES)}"
        )
    if target.precision not in runtime.precisions:
        others = [r.name for r in RUNTIMES.values() if target.precision in r.precisions]
        raise BadInput(
            f"{prefix}precision {target.precision} needs runtime: {' or '.join(others)} "
            f"({runtime.name} runs {', '.join(runtime.precisions)})"
        )
    if target.ssh and not runtime.over_ssh:
        others = [r.name for r in RUNTIMES.values() if r.over_ssh]
        raise BadInput(f"{prefix}runtime {runtime.name} runs on this machine; for a device over ssh use runtime: {' or '.join(others)}")
    if target.providers and not runtime.providers:
        raise BadInput(f"{prefix}providers are ONNX Runtime execution providers; they need runtime: onnxruntime")
    if target.ssh:
        try:
            check_destination(target.ssh)
        except BadInput as exc:
            raise BadInput(f"{prefix}ssh: {exc}") from None
        if target.ssh_config is not None and not Path(target.ssh_config).expanduser().is_file():
            raise BadInput(f"{prefix}ssh_config: {target.ssh_config} does not exist")
