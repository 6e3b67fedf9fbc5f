"""Runtime backends: one registry of runtime rows (RUNTIMES, backends/runtime.py) that the recipe check, the
pipeline, the CLI, doctor and the runner factory all read. Adding a runtime is one module that builds its
`Runtime` row (precisions and the file it runs at each, open_runner, probe, install hint) and registers it with
`register_runtime`; here, or in a plugin package (edgedistill.registry: the `edgedistill.plugins` entry points).

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
from .runtime import BUILTIN_ARTIFACTS, RUNTIME_OPTIONS, RUNTIMES, Artifact, MakeInputs, Runtime, register_runtime
from .trtexec import runner as trtexec_runner  # noqa: F401  (registers its row)

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

__all__ = [
    "BUILTIN_ARTIFACTS",
    "RUNTIMES",
    "RUNTIME_OPTIONS",
    "Artifact",
    "MakeInputs",
    "Runtime",
    "check_target",
    "create_runner",
    "register_runtime",
]


def create_runner(target: TargetSpec, model: Path) -> Runner:
    """The runner for a target whose runtime edgedistill.extensions has already checked."""
    return RUNTIMES.get(target.runtime).open_runner(target, model)


def check_target(target: TargetSpec, where: str = "") -> None:
    """What the runtime's row says about a target's options, found before anything runs."""
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
    for key in sorted(target.model_fields_set & RUNTIME_OPTIONS.keys()):  # given, and not the default: meant for it
        if key not in runtime.options and getattr(target, key) not in (None, [], type(target).model_fields[key].default):
            others = [r.name for r in RUNTIMES.values() if key in r.options]
            raise BadInput(
                f"{prefix}{key} ({RUNTIME_OPTIONS[key]}): they need runtime: {' or '.join(others) or 'none'}; "
                f"runtime {runtime.name} does not read {key} (drop it, or change the runtime)"
            )
    if target.ssh:
        try:
            check_destination(target.ssh)
        except BadInput as exc:
            raise BadInput(f"{prefix}ssh: {exc}") from None
        if target.ssh_config is not None and not Path(target.ssh_config).expanduser().is_file():
            raise BadInput(f"{prefix}ssh_config: {target.ssh_config} does not exist")
