"""The recipe's `compute` section resolved against this machine: device, autocast precision, memory format, and how
many CPU threads the run may really use."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config.schema import ComputeSpec

# Asks the NVIDIA driver itself (libcuda) whether it is there and sees a GPU; Python 3.6 compatible and standard
# library only, since the pre-flight also runs it in a board's Python. Printed as one JSON line by driver_report().
DRIVER_PROBE = r"""
import ctypes, json
def _gpu():
    lib = None
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            pass
    if lib is None:
        return {"ok": False, "detail": "no NVIDIA driver (libcuda.so.1 not found)"}
    code = lib.cuInit(0)
    if code != 0:
        why = {100: "no CUDA-capable device", 999: "unknown error"}.get(code, "see cuda.h")
        return {"ok": False, "detail": "the NVIDIA driver does not start (cuInit error %d: %s)" % (code, why)}
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    names = []
    for i in range(count.value):
        device, name = ctypes.c_int(0), ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), i) == 0 and lib.cuDeviceGetName(name, 256, device) == 0:
            names.append(name.value.decode("utf-8", "replace"))
    if not count.value:
        return {"ok": False, "detail": "the NVIDIA driver sees no GPU"}
    return {"ok": True, "count": count.value, "detail": "%d GPU(s): %s" % (count.value, ", ".join(names))}
"""


def driver_report(timeout_s: float = 30) -> dict:
    """{"ok", "detail"} from the NVIDIA driver, asked in a child process so that this one never initializes CUDA
    before it forks DataLoader workers."""
    code = DRIVER_PROBE + "\nprint(json.dumps(_gpu()))\n"
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        return {"ok": False, "detail": f"the NVIDIA driver could not be asked (no answer within {timeout_s:g} s)"}


def cuda_problem(device: str) -> str | None:
    """Why `compute.device: cuda` cannot run here, with the fix; None when it can (or the device is auto or cpu)."""
    if device != "cuda" or torch.cuda.is_available():
        return None
    why = "a CPU-only build of torch" if torch.version.cuda is None else driver_report()["detail"]
    return (
        f"compute.device: cuda, but torch {torch.__version__} sees no CUDA GPU here ({why}). Hint: set compute.device: "
        "auto (CUDA when available, else CPU) or cpu, or run on a machine with an NVIDIA GPU and driver"
    )


@dataclass(frozen=True)
class Compute:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: full precision
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


def resolve_compute(spec: ComputeSpec, device: torch.device) -> Compute:
    """`auto` precision: bf16 where the GPU has it, fp16 on older GPUs, full precision on CPU (where bf16 autocast
    helped some pairs and slowed others even with AMX, benchmarks/memory_format.py; ask for `bf16` explicitly there).
    channels_last is on by default everywhere: on CPU it made every bench's step 1.2-1.7x faster (same script)."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if spec.precision == "auto":
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" else None
    else:
        dtype = dtypes[spec.precision]
    channels_last = spec.channels_last is not False  # None: the default, on
    return Compute(device, dtype, channels_last, spec.compile)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (a container or CI runner given
    1.5 CPUs of a 64-core host may use 1, not 64)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.floor(quota))) if quota is not None else cpus


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup may use per period (cgroup v2 cpu.max, else v1 cfs quota); None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpu_busy_s() -> float | None:
    """Seconds all CPUs of this machine have been busy since boot (user, nice, system, irq, softirq and a VM's steal
    time, from /proc/stat); None where there is no /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (a local trtexec, a worker): what the machine's
    busy time holds that is not other processes' load."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def busy_elsewhere_cores(window_s: float = 0.25) -> float | None:
    """Cores other processes keep busy, measured over `window_s` (this process's own CPU time left out)."""
    before, own, start = cpu_busy_s(), own_cpu_s(), time.perf_counter()
    if before is None:
        return None
    time.sleep(window_s)
    after = cpu_busy_s()
    if after is None:
        return None
    return max(0.0, (after - before) - (own_cpu_s() - own)) / (time.perf_counter() - start)


def cpu_threads(threads: int | None, ranks_here: int = 1) -> tuple[int, dict]:
    """Intra-op threads for scoring and training on the CPU, and why: `compute.threads` when the recipe sets it (0:
    every usable CPU), else the CPUs this process may use (usable_cpus, shared by the local ranks) less the cores
    other processes keep busy as the run starts. More threads than free cores make every parallel region wait for
    its slowest thread: four runs of two threads each on two cores trained 20-35x slower each, not 4x."""
    usable = max(1, usable_cpus() // max(1, ranks_here))
    if threads:
        return threads, {"threads": threads, "usable_cpus": usable, "source": "compute.threads"}
    busy = None if threads == 0 else busy_elsewhere_cores()
    chosen = usable if busy is None else max(1, min(usable, round(usable - busy)))
    return chosen, {"threads": chosen, "usable_cpus": usable, "busy_elsewhere_cores": busy, "source": "auto" if threads is None else "all"}
