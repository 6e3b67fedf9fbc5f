"""ONNX Runtime: in this process (OnnxRuntimeRunner), or on a device in its own Python through ort_worker.py
(RemoteOnnxRuntimeRunner, a worker.WorkerRunner); CPU unless other execution providers are asked for and installed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ..errors import BadInput, TargetUnavailable
from .base import LatencyStats, Runner, machine_facts, time_calls
from .engine_cache import default_engine_cache
from .hosts import open_host
from .hosts.base import Host
from .runtime import FP32, INT8_CPU, Runtime, RuntimeOptions, register_runtime, remote_python_option, runtime_options, threads_option
from .worker import MODEL_REJECTED_EXIT, WorkerRunner

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
WORKER = Path(__file__).with_name("ort_worker.py")
MISSING_PROVIDER_EXIT = 5  # ort_worker.py's own exit code, beside worker.py's


def resolve_providers(names: list[str] | None) -> list[str]:
    """ORT execution-provider names from short aliases; CPU is appended as the fallback for nodes a GPU EP refuses."""
    providers = [PROVIDER_ALIASES.get(n.lower(), n) for n in (names or ["cpu"])]
    if "CPUExecutionProvider" not in providers:
        providers.append("CPUExecutionProvider")
    return providers


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on this machine; CPU unless another execution provider is asked for and installed."""

    name = "onnxruntime"

    def __init__(self, model: Path, threads: int = 0, providers: list[str] | None = None, engine_cache: Path | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = resolve_providers(providers)
        missing = [p for p in providers if p not in available]
        if missing:
            raise TargetUnavailable(
                f"onnxruntime {ort.__version__} here lacks {', '.join(missing)} (available: "
                f"{', '.join(available)}); the GPU ones come with the onnxruntime-gpu package"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(model), options, providers=_provider_options(providers, engine_cache))
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise BadInput(f"{model}: ONNX Runtime cannot load it: {str(exc).splitlines()[0]}") from None
        dropped = [p for p in providers if p not in self.session.get_providers()]
        if dropped:  # ORT falls back to CPU silently when CUDA/TensorRT libraries fail to load
            raise TargetUnavailable(
                f"onnxruntime could not start {', '.join(dropped)} here (CUDA/cuDNN/TensorRT "
                "libraries missing or no GPU); it would have run on CPU"
            )
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

        return {
            "runtime": "onnxruntime",
            "version": ort.__version__,
            "providers": self.providers,
            "intra_op_threads": self.threads or "default",
            "inter_op_threads": 1,
            **machine_facts(),
        }

    def close(self) -> None:
        pass


def _provider_options(providers: list[str], engine_cache: Path | None) -> list:
    """TensorRT EP engines are cached on disk, or every session start rebuilds them (seconds to minutes)."""
    if "TensorrtExecutionProvider" not in providers:
        return providers
    cache = Path(engine_cache or default_engine_cache()) / "ort-trt-ep"
    cache.mkdir(parents=True, exist_ok=True)
    options = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
    }
    return [(p, options) if p == "TensorrtExecutionProvider" else p for p in providers]


class OnnxRuntimeOptions(RuntimeOptions):
    """The target keys ONNX Runtime reads."""

    providers: list[str] | None = Field(
        None,
        title="ONNX Runtime execution providers",
        description="ONNX Runtime execution providers in order of preference: cpu, cuda, tensorrt (or ORT's names, e.g. "
        "CUDAExecutionProvider); CPU stays as the fallback for nodes a GPU provider refuses; default: cpu",
    )
    threads: int = threads_option("ONNX Runtime's CPU provider")
    remote_python: str = remote_python_option("numpy and onnxruntime (onnxruntime-gpu for the GPU providers)")


class RemoteOnnxRuntimeRunner(WorkerRunner):
    """ONNX Runtime in the device's own Python (the target's providers, CPU by default), driven by ort_worker.py."""

    name = "onnxruntime"
    worker, remote_name, model_name = WORKER, "edgedistill_ort.py", "model.onnx"
    helper = modules = "onnxruntime"
    install = "pip install onnxruntime on the board (on Jetson, the wheel built for its JetPack)"
    exit_hints = {
        MODEL_REJECTED_EXIT: "upgrade onnxruntime on the board; the export uses ONNX opset 17",
        MISSING_PROVIDER_EXIT: "GPU providers need the onnxruntime-gpu build for the board, or list only the providers it has",
    }

    def __init__(self, host: Host, model: Path, target: TargetSpec, options: OnnxRuntimeOptions):
        self.threads, self.providers = options.threads, resolve_providers(options.providers)
        super().__init__(host, model, target, options.remote_python, [str(self.threads), ",".join(self.providers)])

    def facts(self) -> dict:
        return {**super().facts(), "intra_op_threads": self.threads or "default"}


def open_runner(target: TargetSpec, model: Path) -> Runner:
    options = runtime_options(target)
    if target.ssh:
        host = open_host(target)
        try:
            return RemoteOnnxRuntimeRunner(host, model, target, options)
        except BaseException:
            host.close()
            raise
    return OnnxRuntimeRunner(model, options.threads, options.providers)


def probe() -> dict:
    """For doctor: whether this runtime works here, and with which execution providers."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"usable": False, "detail": f"onnxruntime module: {exc}"}
    available = ort.get_available_providers()
    return {
        "usable": True,
        "detail": f"{ort.__version__} ({ort.get_device()})",
        "version": ort.__version__,
        "providers": available,
        "parts": {f"provider {alias}": {"usable": name in available, "detail": name} for alias, name in PROVIDER_ALIASES.items()},
    }


RUNTIME = register_runtime(
    Runtime(
        "onnxruntime",
        "ONNX Runtime: CPU, or its CUDA / TensorRT execution providers where installed; here or over ssh",
        open_runner,
        probe,
        install="pip install onnxruntime (onnxruntime-gpu for its CUDA and TensorRT execution providers)",
        artifacts={"fp32": FP32, "int8": INT8_CPU},
        options=OnnxRuntimeOptions,
        over_ssh=True,
        part_install={
            "provider cuda": "pip install onnxruntime-gpu (in place of onnxruntime) and a CUDA driver",
            "provider tensorrt": "pip install onnxruntime-gpu and tensorrt, and an NVIDIA driver",
        },
    )
)
