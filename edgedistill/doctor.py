"""`edgedistill doctor`: which runtimes (RUNTIMES), execution providers, GPUs, TensorRT tools and plugins this machine has.

Every probe is optional and bounded: a missing package or a hung nvidia-smi becomes a line in the table, never an
exception, since doctor is what people run when something is broken.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess

from rich.table import Table

from .backends import RUNTIMES
from .backends.base import machine_facts
from .registry import PLUGIN_ERRORS, PLUGINS

PROBE_TIMEOUT_S = 15
GPU_PACKAGES = ("cuda-python", "pycuda", "onnxruntime-gpu", "tensorrt")

# What provides each capability that is no runtime's when it is missing: the line doctor prints next to a "no". A
# runtime's line is its row's `install`, and the lines of its parts (ONNX Runtime's execution providers) its row's
# `part_install` (backends/runtime.py), so a runtime added by a module or a plugin brings its own.
INSTALL = {
    "torch.cuda": "an NVIDIA GPU with its driver, and a CUDA build of torch (pytorch.org lists them)",
    "nvidia-smi": "the NVIDIA driver",
    "GPU python packages": "pip install onnxruntime-gpu or tensorrt, for GPU targets",
}


def install_hint(component: str) -> str:
    """What provides `component` ("runtime openvino", "provider cuda", "torch.cuda", ...); "" where nothing is said."""
    component = component.strip()
    kind, _, name = component.partition(" ")
    if kind == "runtime" and name in RUNTIMES:
        return RUNTIMES.get(name).install
    if kind == "plugin":
        return "fix or uninstall the package that declares it (an `edgedistill.plugins` entry point)"
    part = next((row.part_install[component] for row in RUNTIMES.values() if component in row.part_install), None)
    return part if part is not None else INSTALL.get(component, "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe(probe) -> dict:
    try:
        return probe()
    except Exception as exc:  # a half-installed runtime can fail in any way; doctor reports it
        return {"usable": False, "detail": f"{type(exc).__name__}: {exc}"}


def _torch_cuda() -> dict:
    try:
        import torch
    except ImportError:
        return {"available": False, "error": "torch not installed"}
    facts = {"torch": torch.__version__, "built_with_cuda": torch.version.cuda, "available": False}
    try:
        if torch.cuda.is_available():
            facts["available"] = True
            facts["devices"] = [
                {
                    "name": torch.cuda.get_device_name(i),
                    "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                    "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
                }
                for i in range(torch.cuda.device_count())
            ]
    except Exception as exc:  # a broken driver raises from inside torch
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts


def _nvidia_smi() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"found": False}
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"found": True, "path": smi, "error": f"timed out after {PROBE_TIMEOUT_S} s"}
    if out.returncode != 0:
        return {"found": True, "path": smi, "error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["failed"]}
    gpus = [
        dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(",")))) for line in out.stdout.splitlines() if line.strip()
    ]
    return {"found": True, "path": smi, "gpus": gpus}


def _with_install(name: str, probe: dict) -> dict:
    """The probe, with what installs the runtime, or each of its parts, where it says no."""
    parts = {
        part: facts if facts.get("usable") else {**facts, "install": install_hint(part)}
        for part, facts in (probe.get("parts") or {}).items()
    }
    probe = {**probe, "parts": parts} if parts else probe
    return probe if probe.get("usable") else {**probe, "install": install_hint(f"runtime {name}")}


def collect_facts() -> dict:
    return {
        "runtimes": {name: _with_install(name, _probe(runtime.probe)) for name, runtime in RUNTIMES.items()},
        "torch_cuda": _torch_cuda(),
        "nvidia_smi": _nvidia_smi(),
        "gpu_packages": {name: _version(name) for name in GPU_PACKAGES},
        "cpu": {**machine_facts(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "plugins": {"loaded": dict(PLUGINS), "failed": dict(PLUGIN_ERRORS)},  # RUNTIMES above loaded them
    }


def _yes(ok: bool) -> str:
    return "[green]yes" if ok else "[red]no"


def facts_table(facts: dict) -> Table:
    """One row per capability: whether edgedistill can use it, and the detail that explains why or why not."""
    table = Table(title="edgedistill doctor")
    for col in ("component", "usable", "detail", "to get it"):
        table.add_column(col, overflow="fold")  # a narrow terminal wraps a cell, never cuts it ("pip install onnxrun…")

    def row(component: str, ok: bool, detail: str) -> None:
        table.add_row(component, _yes(ok), detail, "" if ok else install_hint(component))

    for name, probe in facts["runtimes"].items():
        row(f"runtime {name}", probe.get("usable", False), probe.get("detail", ""))
        for part, found in (probe.get("parts") or {}).items():
            row(f"  {part}", found.get("usable", False), found.get("detail", ""))
    cuda = facts["torch_cuda"]
    devices = cuda.get("devices") or []
    row(
        "torch.cuda",
        cuda.get("available", False),
        ", ".join(f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)" for d in devices)
        or f"torch {cuda.get('torch')} built with CUDA {cuda.get('built_with_cuda') or 'none'}; {cuda.get('error', 'no device')}",
    )
    smi = facts["nvidia_smi"]
    row(
        "nvidia-smi",
        bool(smi.get("gpus")),
        ", ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory')})" for g in smi.get("gpus", []))
        or ("not found" if not smi["found"] else str(smi.get("error", "no GPU listed"))),
    )
    packages = ", ".join(f"{k} {v}" for k, v in facts["gpu_packages"].items() if v) or "none"
    row("GPU python packages", any(facts["gpu_packages"].values()), packages)
    plugins = facts.get("plugins") or {}
    for name, value in (plugins.get("loaded") or {}).items():
        row(f"plugin {name}", True, value)
    for name, why in (plugins.get("failed") or {}).items():
        row(f"plugin {name}", False, why)
    cpu = facts["cpu"]
    row(
        "CPU",
        True,
        f"{cpu.get('cpu_model') or cpu['processor']}, {cpu['usable_cpus']} of {cpu['cpus']} cores usable, "
        f"governor {cpu.get('cpu_governor') or 'unknown'}, OMP_NUM_THREADS={cpu.get('omp_num_threads') or 'unset'}",
    )
    return table
