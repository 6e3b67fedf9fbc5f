"""`edgedistill doctor`: which runtimes, execution providers, GPUs and TensorRT tools this machine has.

Every probe is optional and bounded: a missing package or a hung nvidia-smi becomes a line in the
table, never an exception, since doctor is what people run when something is broken.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import subprocess

from rich.table import Table

from .engines import DEFAULT_TRTEXEC, find_trtexec, trtexec_version
from .runtimes import PROVIDER_ALIASES, machine_facts

PROBE_TIMEOUT_S = 15


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"installed": False, "error": str(exc)}
    available = ort.get_available_providers()
    return {"installed": True, "version": ort.__version__, "device": ort.get_device(), "providers": available,
            "runtime_aliases": {alias: name in available for alias, name in PROVIDER_ALIASES.items()}}


def _tensorrt() -> dict:
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return {"installed": False, "error": f"{exc}"}
    except Exception as exc:  # a wheel without its libnvinfer raises OSError or RuntimeError on import
        return {"installed": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"installed": True, "version": trt.__version__}


def _cuda_python() -> dict:
    return {name: _version(name) for name in ("cuda-python", "pycuda", "onnxruntime-gpu", "tensorrt")}


def _torch_cuda() -> dict:
    try:
        import torch
    except ImportError:
        return {"available": False, "error": "torch not installed"}
    facts = {"torch": torch.__version__, "built_with_cuda": torch.version.cuda, "available": False}
    try:
        if torch.cuda.is_available():
            facts["available"] = True
            facts["devices"] = [{"name": torch.cuda.get_device_name(i),
                                 "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                                 "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
                                for i in range(torch.cuda.device_count())]
    except Exception as exc:  # a broken driver raises from inside torch
        facts["error"] = f"{type(exc).__name__}: {exc}"
    return facts


def _nvidia_smi() -> dict:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return {"found": False}
    try:
        out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"found": True, "path": smi, "error": f"timed out after {PROBE_TIMEOUT_S} s"}
    if out.returncode != 0:
        return {"found": True, "path": smi, "error": (out.stderr or out.stdout).strip().splitlines()[-1:] or ["failed"]}
    gpus = [dict(zip(("name", "driver", "memory"), (p.strip() for p in line.split(",")))) for line in out.stdout.splitlines() if line.strip()]
    return {"found": True, "path": smi, "gpus": gpus}


def _trtexec() -> dict:
    on_path = shutil.which("trtexec")
    default = DEFAULT_TRTEXEC if os.path.isfile(DEFAULT_TRTEXEC) and os.access(DEFAULT_TRTEXEC, os.X_OK) else None
    chosen = find_trtexec()
    return {"path": on_path, "default_location": default, "uses": chosen,
            "tensorrt": trtexec_version(chosen) if chosen else None}


def collect_facts() -> dict:
    return {
        "onnxruntime": _onnxruntime(),
        "tensorrt_python": _tensorrt(),
        "trtexec": _trtexec(),
        "torch_cuda": _torch_cuda(),
        "nvidia_smi": _nvidia_smi(),
        "gpu_packages": _cuda_python(),
        "cpu": {**machine_facts(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
    }


def _yes(ok: bool) -> str:
    return "[green]yes" if ok else "[red]no"


def facts_table(facts: dict) -> Table:
    """One row per capability: whether edgedistill can use it, and the detail that explains why or why not."""
    table = Table(title="edgedistill doctor")
    for col in ("component", "usable", "detail"):
        table.add_column(col)
    ort = facts["onnxruntime"]
    table.add_row("runtime onnxruntime", _yes(ort["installed"]),
                  f"{ort.get('version')} ({ort.get('device')})" if ort["installed"] else ort.get("error", ""))
    for alias, ok in (ort.get("runtime_aliases") or {}).items():
        table.add_row(f"  provider {alias}", _yes(ok), PROVIDER_ALIASES[alias])
    trt = facts["tensorrt_python"]
    cuda = facts["torch_cuda"]
    table.add_row("runtime tensorrt", _yes(trt["installed"] and cuda.get("available", False)),
                  (f"TensorRT {trt['version']}" if trt["installed"] else f"tensorrt module: {trt['error']}")
                  + ("" if cuda.get("available") else "; torch sees no CUDA GPU"))
    tx = facts["trtexec"]
    table.add_row("runtime trtexec", _yes(tx["uses"] is not None),
                  f"{tx['uses']} (TensorRT {tx['tensorrt'] or '?'})" if tx["uses"]
                  else f"not on PATH nor at {DEFAULT_TRTEXEC}")
    devices = cuda.get("devices") or []
    table.add_row("torch.cuda", _yes(cuda.get("available", False)),
                  ", ".join(f"{d['name']} (sm {d['capability']}, {d['memory_gib']} GiB)" for d in devices)
                  or f"torch {cuda.get('torch')} built with CUDA {cuda.get('built_with_cuda') or 'none'}; {cuda.get('error', 'no device')}")
    smi = facts["nvidia_smi"]
    table.add_row("nvidia-smi", _yes(bool(smi.get("gpus"))),
                  ", ".join(f"{g.get('name')} (driver {g.get('driver')}, {g.get('memory')})" for g in smi.get("gpus", []))
                  or ("not found" if not smi["found"] else str(smi.get("error", "no GPU listed"))))
    packages = ", ".join(f"{k} {v}" for k, v in facts["gpu_packages"].items() if v) or "none"
    table.add_row("GPU python packages", _yes(any(facts["gpu_packages"].values())), packages)
    cpu = facts["cpu"]
    table.add_row("CPU", "[green]yes", f"{cpu.get('cpu_model') or cpu['processor']}, {cpu['usable_cpus']} of {cpu['cpus']} cores usable, "
                  f"governor {cpu.get('cpu_governor') or 'unknown'}, OMP_NUM_THREADS={cpu.get('omp_num_threads') or 'unset'}")
    return table
