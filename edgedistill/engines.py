"""TensorRT on this machine: its Python API (runtime `tensorrt`) and the trtexec command line (runtime `trtexec`).

A TensorRT engine only runs on the TensorRT release and the GPU that built it, and a build takes from
seconds to minutes, so built plans go to a cache dir keyed by the ONNX file's hash, the precision, the
TensorRT version (or trtexec binary), the GPU and the batch profile. Anything missing (the tensorrt
module, a CUDA device, the trtexec binary) is a TargetUnavailable with one line that says what to install.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import BadInput, TargetUnavailable
from .remote import THROUGHPUT_BATCH, LocalHost, RemoteTrtexecRunner
from .rundir import atomic_path, atomic_write_json
from .runtimes import LatencyStats, default_engine_cache, machine_facts, time_calls
from .trtexec import TrtexecRun, parse_trtexec_log

if TYPE_CHECKING:
    from .recipe import TargetSpec

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
TENSORRT_MAX_BATCH = 256
PROBE_TIMEOUT_S = 30


class EngineCache:
    """Serialized engines by key; a plan is only found once it and its facts are completely written."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_engine_cache()

    @staticmethod
    def key(**parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def _plan(self, key: str) -> Path:
        return self.root / f"{key}.engine"

    def _meta(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def lookup(self, key: str) -> Path | None:
        plan = self._plan(key)
        return plan if plan.is_file() and self._meta(key).is_file() else None

    def meta(self, key: str) -> dict:
        try:
            return json.loads(self._meta(key).read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def store(self, key: str, plan: bytes | Path, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        with atomic_path(self._plan(key)) as tmp:
            if isinstance(plan, Path):
                shutil.copyfile(plan, tmp)
            else:
                tmp.write_bytes(plan)
        atomic_write_json(self._meta(key), meta)
        return self._plan(key)


def onnx_digest(path: Path) -> str:
    """sha256 of the model file and of any external-data files it names, so re-exported weights miss the cache."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    h = hashlib.sha256()
    files = [Path(path)]
    proto = onnx.load(str(path), load_external_data=False)
    files += sorted({Path(path).parent / e.value for t in proto.graph.initializer if uses_external_data(t)
                     for e in t.external_data if e.key == "location"})
    for file in files:
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def model_io(path: Path) -> tuple[str, tuple[int, ...], int | None, bool]:
    """(input name, per-item shape, fixed batch or None, whether the graph has Q/DQ nodes)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise BadInput(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInput(f"{path}: TensorRT validation needs a model with one input, it has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    item = tuple(d.dim_value for d in dims[1:])
    if not item or any(d <= 0 for d in item):
        raise BadInput(f"{path}: input {inputs[0].name} needs fixed sizes after the batch axis, got {item}")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    return inputs[0].name, item, batch, quantized


def _check_int8(path: Path, precision: str, quantized: bool) -> None:
    if precision == "int8" and not quantized:
        raise BadInput(f"{path}: precision int8 needs a Q/DQ model with calibrated ranges; make one with "
                       f"`edgedistill quantize {path.name} --calib FOLDER --for-tensorrt`")


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
            out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=PROBE_TIMEOUT_S)
            return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    return None


# ------------------------------------------------------------------------------------------- tensorrt

def import_tensorrt():
    try:
        import tensorrt
    except ImportError as exc:
        raise TargetUnavailable(f"runtime tensorrt: the TensorRT Python package is not installed ({exc}); "
                                "pip install tensorrt (or use JetPack's python3-libnvinfer), or use runtime trtexec") from None
    return tensorrt


def _cuda_torch():
    import torch

    if not torch.cuda.is_available():
        raise TargetUnavailable(f"runtime tensorrt: torch {torch.__version__} sees no CUDA GPU here "
                                "(CPU-only torch build, no driver, or CUDA_VISIBLE_DEVICES hides it)")
    return torch


class TensorRTRunner:
    """TensorRT's Python API: parse the ONNX, build (FP16, or INT8 from a Q/DQ model), serialize, run.

    Device buffers are torch.cuda tensors, so no pycuda/cuda-python is needed. Latency is host to host:
    copy in, execute, copy out, synchronize, like trtexec's "Latency".
    """

    name = "tensorrt"

    def __init__(self, model: Path, precision: str = "fp32", cache: EngineCache | None = None,
                 max_batch: int = TENSORRT_MAX_BATCH):
        trt = import_tensorrt()
        if tuple(int(p) for p in trt.__version__.split(".")[:2]) < (8, 5):
            raise TargetUnavailable(f"runtime tensorrt needs TensorRT 8.5 or later for its tensor API (found "
                                    f"{trt.__version__}); use runtime trtexec")
        torch = _cuda_torch()
        model = Path(model)
        self.trt, self.torch, self.precision = trt, torch, precision
        self.input_name, self.item_shape, fixed_batch, quantized = model_io(model)
        _check_int8(model, precision, quantized)
        self.max_batch = fixed_batch or max_batch
        self.fixed_batch = fixed_batch
        self.infer_batch = self.max_batch
        self.cache = cache or EngineCache()
        self.gpu = torch.cuda.get_device_name(0)
        capability = ".".join(map(str, torch.cuda.get_device_capability(0)))
        key = self.cache.key(onnx=onnx_digest(model), precision=precision, tensorrt=trt.__version__, gpu=self.gpu,
                             capability=capability, max_batch=self.max_batch, runtime="tensorrt")
        self.logger = trt.Logger(trt.Logger.WARNING)
        cached = self.cache.lookup(key)
        if cached is not None:
            plan, self.cache_state = cached.read_bytes(), "hit"
        else:
            plan = self._build(model)
            self.cache.store(key, plan, {"tensorrt": trt.__version__, "gpu": self.gpu, "precision": precision,
                                         "onnx": str(model), "max_batch": self.max_batch})
            self.cache_state = "built"
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise TargetUnavailable(f"runtime tensorrt: TensorRT {trt.__version__} could not load the engine; "
                                    f"delete the cache {self.cache.root} and retry")
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
            profile.set_shape(self.input_name, (1, *self.item_shape), (1, *self.item_shape),
                              (self.max_batch, *self.item_shape))
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise TargetUnavailable(f"runtime tensorrt: TensorRT {trt.__version__} could not build an engine for {model} "
                                    f"at {self.precision} on {self.gpu} (see the TensorRT log above)")
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
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), device="cuda",
                              dtype=torch.from_numpy(np.empty(0, dtype)).dtype)
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
            part = x[start:start + self.max_batch]
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
        return {"runtime": "tensorrt", "tensorrt": self.trt.__version__, "gpu": self.gpu, "precision": self.precision,
                "engine_cache": self.cache_state, "engine_cache_dir": str(self.cache.root),
                "engine_max_batch": self.max_batch, "torch_cuda": self.torch.version.cuda, **machine_facts()}

    def close(self) -> None:
        self.context = self.engine = None


# -------------------------------------------------------------------------------------------- trtexec

def find_trtexec(preferred: str | None = None, explicit: bool = False) -> str | None:
    """An explicit path is the only candidate; otherwise PATH, then JetPack's default location."""
    candidates = [preferred] if explicit else [c for c in (preferred, "trtexec", DEFAULT_TRTEXEC) if c]
    for candidate in candidates:
        if "/" in candidate:
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        elif found := shutil.which(candidate):
            return found
    return None


def trtexec_version(trtexec: str) -> str | None:
    """trtexec prints `&&&& RUNNING TensorRT.trtexec [TensorRT vNNNN]` before it even reads its arguments."""
    try:
        out = subprocess.run([trtexec], capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trtexec_log((out.stdout + b"\n" + out.stderr).decode("utf-8", "replace")).trt_version


def _binary_identity(path: str) -> dict:
    stat = os.stat(path)
    return {"path": os.path.realpath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


class LocalTrtexecRunner(RemoteTrtexecRunner):
    """trtexec on this machine: remote.py's trtexec runner on a LocalHost, with its engine build cached across runs."""

    name = "trtexec"

    def __init__(self, model: Path, target: "TargetSpec", cache: EngineCache | None = None):
        explicit = "trtexec" in target.model_fields_set
        found = find_trtexec(target.trtexec, explicit=explicit)
        if found is None:
            where = target.trtexec if explicit else f"PATH or {DEFAULT_TRTEXEC}"
            raise TargetUnavailable(f"runtime trtexec: trtexec not found in {where}; install TensorRT "
                                    "(trtexec ships in its bin/ directory) or set the target's trtexec path")
        _check_int8(Path(model), target.precision, model_io(Path(model))[3])
        self.cache = cache or EngineCache()
        self.model_digest = onnx_digest(Path(model))
        self.cache_state: str | None = None
        super().__init__(LocalHost(), Path(model), target.model_copy(update={"trtexec": found}))

    def _ensure_engine(self, batch: int) -> int:
        if self.build is not None:
            return super()._ensure_engine(batch)
        self.max_batch = self.fixed_batch or self.max_batch or max(batch, THROUGHPUT_BATCH)
        key = self.cache.key(onnx=self.model_digest, precision=self.target.precision, runtime="trtexec",
                             trtexec=_binary_identity(self.trtexec), tensorrt=trtexec_version(self.trtexec),
                             gpu=gpu_name(), max_batch=self.max_batch)
        cached = self.cache.lookup(key)
        if cached is None:
            clamped = super()._ensure_engine(batch)
            self.cache.store(key, Path(self._path("model.engine")),
                             {"tensorrt": self.build.trt_version, "gpu": self.build.device,
                              "precision": self.target.precision, "max_batch": self.max_batch})
            self.cache_state = "built"
            return clamped
        self.host.put(cached, self._path("model.engine"))
        meta = self.cache.meta(key)
        self.build = TrtexecRun(passed=True, trt_version=meta.get("tensorrt"), device=meta.get("gpu"), throughput_qps=None,
                                latency=None, gpu_compute=None, enqueue=None, h2d=None, d2h=None, end_to_end=None,
                                warnings=[], failure=None)
        self.cache_state = "hit"
        return super()._ensure_engine(batch)

    def facts(self) -> dict:
        return {**super().facts(), "engine_cache": self.cache_state, "engine_cache_dir": str(self.cache.root),
                **{k: v for k, v in machine_facts().items() if k not in ("cpus", "system")}}
