"""ONNX Runtime: in this process (OnnxRuntimeRunner), or on a device in its own Python through ort_worker.py
(RemoteOnnxRuntimeRunner); CPU unless other execution providers are asked for and installed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput, TargetUnavailable
from .base import LatencyStats, Runner, machine_facts, time_calls
from .engine_cache import default_engine_cache
from .hosts import HostRunner, open_host
from .hosts.base import Host, last_line
from .runtime import FP32, INT8_CPU, Runtime, register_runtime

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
WORKER = Path(__file__).with_name("ort_worker.py")
MISSING_MODULE_EXIT = 3
MODEL_REJECTED_EXIT = 4
MISSING_PROVIDER_EXIT = 5


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


class RemoteOnnxRuntimeRunner(HostRunner):
    """ONNX Runtime in the device's own Python (the target's providers, CPU by default), driven by a small uploaded script."""

    name = "onnxruntime"

    def __init__(self, host: Host, model: Path, target: TargetSpec):
        super().__init__(host, target)
        self.python = target.remote_python
        self.providers = resolve_providers(getattr(target, "providers", None))

        def setup() -> None:
            self.host.put(WORKER, self._path("edgedistill_ort.py"), timeout_s=target.timeout_s)
            self.host.put(Path(model), self._path("model.onnx"), timeout_s=target.timeout_s)
            self.runtime_facts = self._call("check")

        self._start(setup)

    def _call(self, mode: str, *args: object) -> dict:
        argv = [
            self.python,
            self._path("edgedistill_ort.py"),
            mode,
            self._path("model.onnx"),
            str(self.target.threads),
            ",".join(self.providers),
            *map(str, args),
        ]
        result = self._run_tracked(argv, self.target.timeout_s)
        if result.returncode == 127:
            raise TargetUnavailable(
                f"{self.destination}: `{self.python}` not found on the target. "
                "Hint: install Python 3 there or set the target's remote_python to its path."
            )
        if result.returncode == MISSING_MODULE_EXIT:
            raise TargetUnavailable(
                f"{self.destination}: {self.python} lacks onnxruntime or numpy ({last_line(result.stderr)}). "
                "Hint: pip install onnxruntime on the board (on Jetson, the wheel built for its JetPack), "
                "or set remote_python to a Python that has it."
            )
        if result.returncode == MISSING_PROVIDER_EXIT:
            raise TargetUnavailable(
                f"{self.destination}: {last_line(result.stderr)}. Hint: GPU providers need the "
                "onnxruntime-gpu build for the board, or list only the providers it has."
            )
        if result.returncode == MODEL_REJECTED_EXIT:
            raise TargetUnavailable(
                f"{self.destination}: {last_line(result.stderr)}. Hint: upgrade onnxruntime on the board; the export uses ONNX opset 17."
            )
        if result.returncode != 0:
            self._unavailable_if_full(result.stderr)
            raise TargetUnavailable(
                f"{self.destination}: the onnxruntime helper exited with {result.returncode}: {last_line(result.stderr)}"
            )
        try:
            return json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise TargetUnavailable(
                f"{self.destination}: the onnxruntime helper printed no result ({last_line(result.stdout + result.stderr)})"
            ) from None

    def infer(self, x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "inputs.npy", np.ascontiguousarray(x, dtype=np.float32))
            self.host.put(Path(tmp) / "inputs.npy", self._path("inputs.npy"), timeout_s=self.target.timeout_s)
            self._call("infer", self._path("inputs.npy"), self._path("outputs.npy"), 256)
            self.host.get(self._path("outputs.npy"), Path(tmp) / "outputs.npy", timeout_s=self.target.timeout_s)
            return np.load(Path(tmp) / "outputs.npy")

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        samples = self._call("time", batch, warmup, iterations)["samples_ms"]
        return LatencyStats.from_samples(np.asarray(samples), batch)

    def round_samples(self, batch: int, warmup: int, per_round: int, rounds: int, duration_s: float | None = None) -> list[np.ndarray]:
        """All rounds in one call of the helper: a call per round would load the model on the device again each time."""
        result = self._call("time", batch, warmup, per_round, rounds)
        return [np.asarray(r) for r in result.get("rounds_ms") or [result["samples_ms"]]]

    def facts(self) -> dict:
        return {
            "runtime": "onnxruntime",
            **self.runtime_facts,
            "intra_op_threads": self.target.threads or "default",
            "ssh": self.target.ssh,
            **self.device_facts(),
        }


def open_runner(target: TargetSpec, model: Path) -> Runner:
    if target.ssh:
        host = open_host(target)
        try:
            return RemoteOnnxRuntimeRunner(host, model, target)
        except BaseException:
            host.close()
            raise
    return OnnxRuntimeRunner(model, target.threads, target.providers)


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
        "provider_aliases": {alias: name in available for alias, name in PROVIDER_ALIASES.items()},
    }


RUNTIME = register_runtime(
    Runtime(
        "onnxruntime",
        "ONNX Runtime: CPU, or its CUDA / TensorRT execution providers where installed; here or over ssh",
        open_runner,
        probe,
        install="pip install onnxruntime (onnxruntime-gpu for its CUDA and TensorRT execution providers)",
        artifacts={"fp32": FP32, "int8": INT8_CPU},
        options=("providers", "threads", "remote_python"),
        over_ssh=True,
    )
)
