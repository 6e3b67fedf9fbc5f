"""TensorRT's Python API on this machine's GPU: parse the ONNX, build an engine (FP16, or INT8 from a Q/DQ model),
cache it (engine_cache.py), run it. Anything missing (the tensorrt module, a CUDA device) is a TargetUnavailable
with one line that says what to install."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..atomic import atomic_path
from ..errors import BadInput, TargetUnavailable
from ..models.onnx_info import onnx_info
from .base import LatencyStats, Runner, machine_facts, time_calls
from .engine_cache import EngineCache
from .runtime import FP32, INT8_TENSORRT, Runtime, register_runtime

if TYPE_CHECKING:
    from ..config.schema import TargetSpec

TENSORRT_MAX_BATCH = 256

PROBE_TIMEOUT_S = 30


def check_int8(path: Path, precision: str, quantized: bool) -> None:
    if precision == "int8" and not quantized:
        raise BadInput(
            f"{path}: precision int8 needs a Q/DQ model with calibrated ranges; make one with "
            f"`edgedistill quantize {path.name} --calib FOLDER --for-tensorrt`"
        )


def gpu_name() -> str | None:
    """The first GPU's name, from torch.cuda or nvidia-smi; None where neither sees one."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # a broken CUDA install raises from inside torch
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
            )
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise TargetUnavailable(
            f"runtime tensorrt: the TensorRT Python package is not installed ({exc}); "
            "pip install tensorrt (or use JetPack's python3-libnvinfer), or use runtime trtexec"
        ) from None
    return tensorrt


def _cuda_torch():
    import torch

    if not torch.cuda.is_available():
        raise TargetUnavailable(
            f"runtime tensorrt: torch {torch.__version__} sees no CUDA GPU here "
            "(CPU-only torch build, no driver, or CUDA_VISIBLE_DEVICES hides it)"
        )
    return torch


class TensorRTRunner(Runner):
    """TensorRT's Python API: parse the ONNX, build (FP16, or INT8 from a Q/DQ model), serialize, run.

    Device buffers are torch.cuda tensors, so no pycuda/cuda-python is needed. Latency is host to host:
    copy in, execute, copy out, synchronize, like trtexec's "Latency".
    """

    name = "tensorrt"

    def __init__(self, model: Path, precision: str = "fp32", cache: EngineCache | None = None, max_batch: int = TENSORRT_MAX_BATCH):
        trt = import_tensorrt()
        if tuple(int(p) for p in trt.__version__.split(".")[:2]) < (8, 5):
            raise TargetUnavailable(
                f"runtime tensorrt needs TensorRT 8.5 or later for its tensor API (found {trt.__version__}); use runtime trtexec"
            )
        torch = _cuda_torch()
        model = Path(model)
        self.trt, self.torch, self.precision = trt, torch, precision
        info = onnx_info(model)
        self.input_name, self.item_shape, fixed_batch = info.input_name, info.fixed_item("runtime tensorrt"), info.batch
        check_int8(model, precision, info.quantized)
        self.max_batch = fixed_batch or max_batch
        self.fixed_batch = fixed_batch
        self.infer_batch = self.max_batch
        self.cache = cache or EngineCache()
        self.gpu = torch.cuda.get_device_name(0)
        capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
        key = self.cache.key(
            onnx=info.digest(),
            precision=precision,
            tensorrt=trt.__version__,
            gpu=self.gpu,
            capability=capability,
            max_batch=self.max_batch,
            runtime="tensorrt",
        )
        self.logger = trt.Logger(trt.Logger.WARNING)
        cached = self.cache.lookup(key)
        if cached is not None:
            plan, self.cache_state = cached.read_bytes(), "hit"
        else:
            plan = self._build(model)
            self.cache.store(
                key,
                plan,
                {"tensorrt": trt.__version__, "gpu": self.gpu, "precision": precision, "onnx": str(model), "max_batch": self.max_batch},
            )
            self.cache_state = "built"
        self.plan = plan
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise TargetUnavailable(
                f"runtime tensorrt: TensorRT {trt.__version__} could not load the engine; delete the cache {self.cache.root} and retry"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.stream = torch.cuda.Stream()

    def _build(self, model: Path) -> bytes:
        trt = self.trt
        builder = trt.Builder(self.logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(model)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise BadInput(f"{model}: TensorRT {trt.__version__} cannot parse it: {errors[0] if errors else 'no error given'}")
        config = builder.create_builder_config()
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        if not self.fixed_batch:
            profile = builder.create_optimization_profile()
            profile.set_shape(self.input_name, (1, *self.item_shape), (1, *self.item_shape), (self.max_batch, *self.item_shape))
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise TargetUnavailable(
                f"runtime tensorrt: TensorRT {trt.__version__} could not build an engine for {model} "
                f"at {self.precision} on {self.gpu} (see the TensorRT log above)"
            )
        return bytes(plan)

    def _bind(self, batch: int) -> tuple:
        """Device buffers for one batch size; returns (input, outputs)."""
        torch = self.torch
        self.context.set_input_shape(self.input_name, (batch, *self.item_shape))
        x = torch.empty((batch, *self.item_shape), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        outputs = []
        for name in self.outputs:
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda", dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
            self.context.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        return x, outputs

    def _run(self, host_x, device_x, outputs: list) -> object:
        with self.torch.cuda.stream(self.stream):
            device_x.copy_(host_x, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise TargetUnavailable("runtime tensorrt: execute_async_v3 failed (see the TensorRT log)")
            result = outputs[0].to("cpu", non_blocking=True)
        self.stream.synchronize()
        return result

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Chunks of the engine's largest batch; a fixed-batch engine gets its last chunk zero-padded."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits = []
        for start in range(0, len(x), self.max_batch):
            part = x[start : start + self.max_batch]
            n = len(part)
            if self.fixed_batch and n < self.fixed_batch:
                part = np.concatenate([part, np.zeros((self.fixed_batch - n, *part.shape[1:]), np.float32)])
            device_x, outputs = self._bind(len(part))
            out = self._run(self.torch.from_numpy(part).pin_memory(), device_x, outputs)
            logits.append(out.float().numpy().reshape(len(part), -1)[:n])
        return np.concatenate(logits)

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        batch = self.fixed_batch or min(batch, self.max_batch)
        host_x = self.torch.randn((batch, *self.item_shape), generator=self.torch.Generator().manual_seed(0)).pin_memory()
        device_x, outputs = self._bind(batch)
        samples = time_calls(lambda: self._run(host_x, device_x, outputs), warmup, iterations, duration_s)
        return LatencyStats.from_samples(samples, batch)

    def facts(self) -> dict:
        return {
            "runtime": "tensorrt",
            "tensorrt": self.trt.__version__,
            "gpu": self.gpu,
            "precision": self.precision,
            "engine_cache": self.cache_state,
            "engine_cache_dir": str(self.cache.root),
            "engine_max_batch": self.max_batch,
            "torch_cuda": self.torch.version.cuda,
            **machine_facts(),
        }

    def save_engine(self, dest: Path) -> bool:
        with atomic_path(dest) as tmp:
            tmp.write_bytes(self.plan)
        return True

    def close(self) -> None:
        self.context = self.engine = None


def open_runner(target: TargetSpec, model: Path) -> Runner:
    return TensorRTRunner(model, precision=target.precision)


def probe() -> dict:
    try:
        import tensorrt
    except ImportError as exc:
        return {"usable": False, "detail": f"tensorrt module: {exc}"}
    except Exception as exc:  # a wheel without its libnvinfer raises OSError or RuntimeError on import
        return {"usable": False, "detail": f"tensorrt module: {type(exc).__name__}: {exc}"}
    gpu = gpu_name()
    if gpu is None:
        return {"usable": False, "detail": f"TensorRT {tensorrt.__version__}; but torch sees no CUDA GPU", "version": tensorrt.__version__}
    return {"usable": True, "detail": f"TensorRT {tensorrt.__version__} on {gpu}", "version": tensorrt.__version__}


RUNTIME = register_runtime(
    Runtime(
        "tensorrt",
        "TensorRT's Python API on this machine's GPU",
        open_runner,
        probe,
        install="pip install tensorrt and an NVIDIA driver, or JetPack on a Jetson (python3-libnvinfer)",
        artifacts={"fp32": FP32, "fp16": FP32, "int8": INT8_TENSORRT},  # fp16: an engine built from the fp32 file
        builds_engine=True,
    )
)
