"""Runtime backends: one registry of runtime rows (RUNTIMES, backends/runtime.py) that the recipe check, the
pipeline, the CLI, doctor and the runner factory all read. Adding a runtime is one module that builds its
`Runtime` row (precisions and the file it runs at each, the target keys only it reads as a pydantic model,
open_runner, probe, install hint) and registers it with `register_runtime`; here, or in a plugin package
(edgedistill.registry: the `edgedistill.plugins` entry points).

Every runner has the same interface (base.Runner): open on construction, infer, time, facts, close.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput
from . import onnxruntime, openvino, tensorrt  # noqa: F401  (each registers its row)
from .base import Runner
from .hosts.ssh import check_destination
from .litert import RUNTIME as _litert  # noqa: F401  (registers its row)
from .runtime import (
    BUILTIN_ARTIFACTS,
    RUNTIMES,
    Artifact,
    MakeInputs,
    Runtime,
    RuntimeOptions,
    option_keys,
    register_runtime,
    remote_python_option,
    runtime_options,
    runtimes_reading,
    threads_option,
)
from .trtexec import runner as trtexec_runner  # noqa: F401  (registers its row)

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

__all__ = [
    "BUILTIN_ARTIFACTS",
    "RUNTIMES",
    "Artifact",
    "MakeInputs",
    "Runtime",
    "RuntimeOptions",
    "check_target",
    "create_runner",
    "option_keys",
    "register_runtime",
    "remote_python_option",
    "runtime_options",
    "runtimes_reading",
    "threads_option",
]


def create_runner(target: TargetSpec, model: Path) -> Runner:
    """The runner for a target whose runtime edgedistill.extensions has already checked."""
    return RUNTIMES.get(target.runtime).open_runner(target, model)


def check_target(target: TargetSpec, where: str = "") -> None:
    """What the runtime's row says about a target, found before anything runs: its precisions, whether it runs over
    ssh, and the target's other keys, validated by the row's options model (Runtime.read_options)."""
    prefix = f"{where}: " if where else ""
    runtime = RUNTIMES.get(target.runtime, where)  # unknown: one line with the nearest name
    if target.precision not in runtime.precisions:
        others = [r.name for r in RUNTIMES.values() if target.precision in r.precisions]
        raise BadInput(
            f"{prefix}precision {target.precision} needs runtime: {' or '.join(others)} "
            f"({runtime.name} runs {', '.join(runtime.precisions)})"
        )
    if target.ssh and not runtime.over_ssh:
        others = [r.name for r in RUNTIMES.values() if r.over_ssh]
        raise BadInput(f"{prefix}runtime {runtime.name} runs on this machine; for a device over ssh use runtime: {' or '.join(others)}")
    runtime.read_options(target, where, strict=True)  # its own keys, by its options model; any other key is one line
    if target.ssh:
        try:
            check_destination(target.ssh)
        except BadInput as exc:
            raise BadInput(f"{prefix}ssh: {exc}") from None
        if target.ssh_config is not None and not Path(target.ssh_config).expanduser().is_file():
            raise BadInput(f"{prefix}ssh_config: {target.ssh_config} does not exist")
