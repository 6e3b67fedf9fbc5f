"""Runtime backends behind one small interface: load a model, run a batch, time it."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

import numpy as np

from .errors import BadInput, TargetUnavailable

if TYPE_CHECKING:
    from .recipe import TargetSpec

NOISY_CV = 0.1
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@dataclass
class LatencyStats:
    """Milliseconds per call at one batch size; `cv` (std/mean) says how much to trust them, `noisy` when it is above NOISY_CV."""

    batch: int
    iterations: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    cv: float
    throughput_per_s: float
    noisy: bool = False
    samples_ms: np.ndarray | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_samples(cls, samples_ms: np.ndarray, batch: int, noisy_cv: float = NOISY_CV) -> "LatencyStats":
        s = np.asarray(samples_ms, dtype=np.float64)
        mean = float(s.mean())
        p50, p90, p99 = (float(v) for v in np.percentile(s, [50, 90, 99]))
        cv = float(s.std() / mean) if mean > 0 else 0.0
        return cls(batch, len(s), mean, p50, p90, p99, float(s.min()), float(s.max()), cv,
                   batch * 1000.0 / mean if mean > 0 else 0.0, noisy=cv > noisy_cv, samples_ms=s)

    def as_dict(self) -> dict:
        """The summary only: the raw samples go to their own file (latency_samples.json)."""
        return {k: v for k, v in asdict(self).items() if k != "samples_ms"}


class Runner(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> np.ndarray: ...

    def time(self, batch: int, warmup: int, iterations: int) -> LatencyStats: ...

    def facts(self) -> dict: ...

    def close(self) -> None: ...


MIN_TIMED_CALLS = 10


def time_calls(call: Callable[[], object], warmup: int, iterations: int, duration_s: float | None = None) -> np.ndarray:
    """Milliseconds of each call after `warmup` untimed ones: `iterations` calls, or as many as fit in
    `duration_s` seconds (at least MIN_TIMED_CALLS), so a slow model gets a bounded run and a fast one enough samples."""
    for _ in range(warmup):
        call()
    if duration_s is None:
        samples = np.empty(iterations)
        for i in range(iterations):
            start = time.perf_counter_ns()
            call()
            samples[i] = (time.perf_counter_ns() - start) / 1e6
        return samples
    timed: list[float] = []
    deadline = time.perf_counter_ns() + int(duration_s * 1e9)
    while len(timed) < MIN_TIMED_CALLS or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        call()
        timed.append((time.perf_counter_ns() - start) / 1e6)
    return np.asarray(timed)


def resolve_providers(names: list[str] | None) -> list[str]:
    """ORT execution-provider names from short aliases; CPU is appended as the fallback for nodes a GPU EP refuses."""
    providers = [PROVIDER_ALIASES.get(n.lower(), n) for n in (names or ["cpu"])]
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeRunner:
    """ONNX Runtime on this machine; CPU unless another execution provider is asked for and installed."""

    name = "onnxruntime"

    def __init__(self, model: Path, threads: int = 0, providers: list[str] | None = None,
                 engine_cache: Path | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = resolve_providers(providers)
        missing = [p for p in providers if p not in available]
        if missing:
            raise TargetUnavailable(f"onnxruntime {ort.__version__} here lacks {', '.join(missing)} (available: "
                                    f"{', '.join(available)}); the GPU ones come with the onnxruntime-gpu package")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model), options, providers=_provider_options(providers, engine_cache))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BadInput(f"{model}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from None
        dropped = [p for p in providers if p not in self.session.get_providers()]
        if dropped:  # ORT falls back to CPU silently when CUDA/TensorRT libraries fail to load
            raise TargetUnavailable(f"onnxruntime could not start {', '.join(dropped)} here (CUDA/cuDNN/TensorRT "
                                    "libraries missing or no GPU); it would have run on CPU")
        inp = self.session.get_inputs()[0]
        self.input_name, self.input_shape = inp.name, inp.shape
        self.threads, self.providers = threads, self.session.get_providers()

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        shape = [batch] + [d if isinstance(d, int) else 1 for d in self.input_shape[1:]]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        feed = {self.input_name: x}
        samples = time_calls(lambda: self.session.run(None, feed), warmup, iterations, duration_s)
        return LatencyStats.from_samples(samples, batch)

    def facts(self) -> dict:
        import onnxruntime as ort

        return {"runtime": "onnxruntime", "version": ort.__version__, "providers": self.providers,
                "intra_op_threads": self.threads or "default", "inter_op_threads": 1, **machine_facts()}

    def close(self) -> None:
        pass


def _provider_options(providers: list[str], engine_cache: Path | None) -> list:
    """TensorRT EP engines are cached on disk, or every session start rebuilds them (seconds to minutes)."""
    if "TensorrtExecutionProvider" not in providers:
        return providers
    cache = Path(engine_cache or default_engine_cache()) / "ort-trt-ep"
    cache.mkdir(parents=True, exist_ok=True)
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": True,
               "trt_timing_cache_path": str(cache)}
    return [(p, options) if p == "TensorrtExecutionProvider" else p for p in providers]


def default_engine_cache() -> Path:
    return Path(os.environ.get("EDGEDISTILL_ENGINE_CACHE") or Path.home() / ".cache" / "edgedistill" / "engines")


def _read_first(path: str, prefix: str = "") -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if prefix else line.strip()
    except OSError:
        return None
    return None


def machine_facts() -> dict:
    """What a latency figure depends on besides the model: CPU model, usable cores, frequency governor."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "cpu_model": _read_first("/proc/cpuinfo", "model name") or platform.processor() or None,
            "cpus": os.cpu_count(), "usable_cpus": usable,
            "cpu_governor": _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def create_runner(target: "TargetSpec", model: Path) -> Runner:
    """A target with `ssh` runs on that device; tensorrt and trtexec without `ssh` run on this machine (engines.py)."""
    if target.runtime == "tensorrt" and not target.ssh:
        from .engines import TensorRTRunner

        return TensorRTRunner(model, precision=target.precision)
    if target.runtime == "trtexec" and not target.ssh:
        from .engines import LocalTrtexecRunner

        return LocalTrtexecRunner(model, target)
    if target.ssh:
        from .remote import create_device_runner

        return create_device_runner(target, model)
    if target.runtime == "onnxruntime":
        return OnnxRuntimeRunner(model, target.threads, target.providers)
    raise BadInput(f"unknown runtime {target.runtime!r}; available: onnxruntime, tensorrt, trtexec")
