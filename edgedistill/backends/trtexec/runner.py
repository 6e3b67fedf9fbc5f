"""TensorRT through trtexec, the command line every Jetson has, on any Host: this machine or a board over ssh.

The engine is built on the host itself (an engine only runs where it was built), then timed and run from the
saved plan; on this machine built plans are cached across runs (engine_cache.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ...atomic import atomic_path
from ...errors import BadInput, TargetUnavailable
from ...models.onnx_info import onnx_info
from ..base import LatencyStats, Runner, machine_facts
from ..engine_cache import EngineCache
from ..hosts import HostRunner, open_host
from ..hosts.base import Host, last_line
from ..hosts.local import LocalHost
from ..runtime import FP32, INT8_TENSORRT, Runtime, RuntimeOptions, register_runtime, runtime_options
from ..tensorrt import check_int8, gpu_name
from .log import TrtexecRun, load_trtexec_json, parse_export_output, parse_export_times, parse_trtexec_log, trtexec_command, write_raw_input

if TYPE_CHECKING:
    from ...config.schema import TargetSpec

DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
PROBE_TIMEOUT_S = 30
EVAL_CHUNK_ELEMENTS = 1 << 24
EVAL_CHUNK_MAX = 1024
ENGINE_MIN_MAX_BATCH = 64  # an engine's profile reaches at least this batch, so the throughput measurement fits
TRTEXEC_WARMUP_MS = 500


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


class TrtexecOptions(RuntimeOptions):
    """The target keys the trtexec runtime reads."""

    trtexec: str = Field(
        DEFAULT_TRTEXEC,
        title="the trtexec binary",
        description="trtexec on the target's host; given, only that path; else JetPack's path (the default), then PATH",
    )


def locate_trtexec(host: Host, target: TargetSpec) -> str:
    """The trtexec the target runs on its host: the recipe's path when it names one, else JetPack's default, then PATH.
    Shared by the runner and the pre-flight, so both look in the same places."""
    options = runtime_options(target)
    explicit = "trtexec" in options.model_fields_set
    candidates = [options.trtexec] if explicit else [options.trtexec, "trtexec"]
    found = next((f for f in map(host.which, candidates) if f), None)
    if found is None:
        where = options.trtexec if explicit else f"{options.trtexec} nor on PATH"
        raise TargetUnavailable(
            f"{host.destination}: trtexec not found at {where}. Hint: install TensorRT (trtexec "
            "ships in its bin/ directory; JetPack puts it in /usr/src/tensorrt/bin) or set the "
            "target's trtexec path."
        )
    return found


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


def _version_tuple(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version or ""))[:3]


class TrtexecRunner(HostRunner):
    """trtexec on `host`. One engine serves every batch size validate needs: a dynamic-batch ONNX gets an
    optimisation profile from 1 (tuned for, as latency budgets are at batch 1) up to the largest eval chunk.
    With `cache`, built plans are kept across runs (for this machine; a board keeps none)."""

    name = "trtexec"

    def __init__(self, host: Host, model: Path, target: TargetSpec, cache: EngineCache | None = None):
        super().__init__(host, target)
        info = onnx_info(model)
        self.input_name, self.item_shape, self.fixed_batch = info.input_name, info.fixed_item("runtime trtexec"), info.batch
        self.output_name = info.outputs[0][0] if info.outputs else None
        check_int8(Path(model), target.precision, info.quantized)
        self.cache, self.cache_state = cache, None
        self.model_digest = info.digest() if cache is not None else None
        self.max_batch: int | None = None
        self.build: TrtexecRun | None = None
        self.last_run: TrtexecRun | None = None
        self.trtexec = runtime_options(target).trtexec

        def setup() -> None:
            self.trtexec = locate_trtexec(self.host, target)
            self.host.put(Path(model), self._path("model.onnx"), timeout_s=target.timeout_s)

        self._start(setup)

    def _shape(self, batch: int) -> str:
        return "x".join(str(d) for d in (batch, *self.item_shape))

    def _shapes(self, batch: int) -> dict[str, tuple[int, ...]] | None:
        return None if self.fixed_batch else {self.input_name: (batch, *self.item_shape)}

    def _run(self, argv: list[str], what: str) -> TrtexecRun:
        result = self._run_tracked(argv, self.target.timeout_s)
        log = (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace")
        if result.returncode == 127:
            raise TargetUnavailable(f"{self.destination}: `{self.trtexec}` could not be started ({last_line(result.stderr)}).")
        run = parse_trtexec_log(log)
        if result.returncode != 0 or not run.passed:
            self._unavailable_if_full(result.stderr + result.stdout)
            raise TargetUnavailable(f"{self.destination}: trtexec {what} failed: {run.failure or last_line(log)}")
        return run

    def _ensure_engine(self, batch: int) -> int:
        """Builds the engine on first use (or takes it from the cache); returns the batch size to run at, clamped
        to what the engine takes."""
        if self.fixed_batch:
            self.max_batch = self.fixed_batch
        if self.build is None:
            self.max_batch = self.max_batch or max(batch, ENGINE_MIN_MAX_BATCH)
            key = None
            if self.cache is not None:
                key = self.cache.key(
                    onnx=self.model_digest,
                    precision=self.target.precision,
                    runtime="trtexec",
                    trtexec=_binary_identity(self.trtexec),
                    tensorrt=trtexec_version(self.trtexec),
                    gpu=gpu_name(),
                    max_batch=self.max_batch,
                )
                cached = self.cache.lookup(key)
                if cached is not None:
                    self.host.put(cached, self._path("model.engine"))
                    meta = self.cache.meta(key)
                    self.build = TrtexecRun(
                        passed=True,
                        trt_version=meta.get("tensorrt"),
                        device=meta.get("gpu"),
                        throughput_qps=None,
                        warnings=[],
                        failure=None,
                    )
                    self.cache_state = "hit"
                    return self.fixed_batch or min(batch, self.max_batch)
            argv = trtexec_command(
                self.trtexec,
                onnx=self._path("model.onnx"),
                save_engine=self._path("model.engine"),
                precision=self.target.precision,
                shapes=self._shapes(1),
                warmup_ms=0,
                iterations=1,
            )
            if not self.fixed_batch:
                argv += [
                    f"--minShapes={self.input_name}:{self._shape(1)}",
                    f"--optShapes={self.input_name}:{self._shape(1)}",
                    f"--maxShapes={self.input_name}:{self._shape(self.max_batch)}",
                ]
            self.build = self._run(argv, "engine build")
            if key is not None:
                self.cache.store(
                    key,
                    Path(self._path("model.engine")),
                    {
                        "tensorrt": self.build.trt_version,
                        "gpu": self.build.device,
                        "precision": self.target.precision,
                        "max_batch": self.max_batch,
                    },
                )
                self.cache_state = "built"
        return self.fixed_batch or min(batch, self.max_batch)

    def _warmup_records(self, run: TrtexecRun) -> int:
        """--exportTimes holds the warm-up queries up to TensorRT 8.4; later releases leave them out."""
        version = _version_tuple(run.trt_version or (self.build.trt_version if self.build else None))
        return (run.warmup_queries or 0) if not version or version < (8, 5) else 0

    def save_engine(self, dest: Path) -> bool:
        """The plan trtexec built (or took from the cache) on the target, fetched into `dest`."""
        if self.build is None or not self.build.passed:
            return False
        with atomic_path(dest) as tmp:
            self.host.get(self._path("model.engine"), tmp, timeout_s=self.target.timeout_s)
        return True

    def round_samples(self, batch: int, warmup: int, per_round: int, rounds: int, duration_s: float | None = None) -> list[np.ndarray]:
        """Consecutive slices of one trtexec run: a trtexec process per round would load the engine again each time."""
        samples = self.time(batch, warmup, per_round * rounds, duration_s).samples_ms
        return [part for part in np.array_split(samples, rounds) if len(part)]

    def time(self, batch: int, warmup: int, iterations: int, duration_s: float | None = None) -> LatencyStats:
        if duration_s is not None:
            raise BadInput("trtexec runs a fixed number of calls; time it with iterations, not a duration")
        batch = self._ensure_engine(batch)
        times = self._path(f"times_b{batch}.json")
        argv = trtexec_command(
            self.trtexec,
            engine=self._path("model.engine"),
            shapes=self._shapes(batch),
            warmup_ms=TRTEXEC_WARMUP_MS if warmup else 0,
            iterations=iterations,
            export_times=times,
        )
        run = self._run(argv, f"benchmark at batch {batch}")
        self.last_run = run
        try:
            docs = load_trtexec_json(self._read_text(times))
            samples = parse_export_times(docs[-1] if docs else [], "latency", warmup=self._warmup_records(run))
        except BadInput as exc:
            raise TargetUnavailable(f"{self.destination}: trtexec --exportTimes: {exc}") from None
        if not len(samples):
            raise TargetUnavailable(f"{self.destination}: trtexec --exportTimes held no timings for batch {batch}")
        return LatencyStats.from_samples(samples, batch)

    def _eval_chunk(self, n: int) -> int:
        per_item = int(np.prod(self.item_shape))
        return max(1, min(n, EVAL_CHUNK_MAX, EVAL_CHUNK_ELEMENTS // per_item))

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Runs the eval set as raw inputs of one fixed batch shape (the last one zero-padded)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        chunk = self._ensure_engine(self._eval_chunk(len(x)))
        starts = range(0, len(x), chunk)
        with tempfile.TemporaryDirectory() as tmp:
            inputs = Path(tmp) / "inputs"
            inputs.mkdir()
            for i, start in enumerate(starts):
                part = x[start : start + chunk]
                if len(part) < chunk:
                    part = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), np.float32)])
                write_raw_input(part, inputs / f"chunk_{i:05d}.bin")
            self.host.put(inputs, self._path("inputs"), timeout_s=self.target.timeout_s)
        outputs = [self._infer_chunk(i, chunk) for i in range(len(starts))]
        return np.concatenate(outputs)[: len(x)]

    def _infer_chunk(self, index: int, batch: int) -> np.ndarray:
        out = self._path(f"outputs_{index:05d}.json")
        argv = trtexec_command(
            self.trtexec,
            engine=self._path("model.engine"),
            shapes=self._shapes(batch),
            warmup_ms=0,
            iterations=1,
            load_inputs={self.input_name: self._path(f"inputs/chunk_{index:05d}.bin")},
            export_output=out,
        )
        self._run(argv, f"inference on eval chunk {index}")
        try:
            docs = load_trtexec_json(self._read_text(out))
            tensors = parse_export_output(docs[-1] if docs else [])
        except BadInput as exc:
            raise TargetUnavailable(f"{self.destination}: trtexec --exportOutput: {exc}") from None
        if not tensors:
            raise TargetUnavailable(f"{self.destination}: trtexec --exportOutput held no output tensor")
        name = self.output_name if self.output_name in tensors else next(iter(tensors))
        values = tensors[name]
        if values.ndim == 0 or values.shape[0] != batch:
            raise TargetUnavailable(
                f"{self.destination}: trtexec returned output {name} of shape {'x'.join(map(str, values.shape))} for a batch of {batch}"
            )
        return values.reshape(batch, -1).astype(np.float32)

    def facts(self) -> dict:
        build = self.build
        facts = {
            "runtime": "trtexec",
            "tensorrt": build.trt_version if build else None,
            "gpu": build.device if build else None,
            "precision": self.target.precision,
            "trtexec": self.trtexec,
            "engine_max_batch": self.max_batch,
            "ssh": self.target.ssh,
        }
        if self.last_run is not None:
            facts["throughput_qps"] = self.last_run.throughput_qps
            facts["trtexec_warnings"] = self.last_run.warnings
        if self.cache is not None:
            facts.update(
                {
                    "engine_cache": self.cache_state,
                    "engine_cache_dir": str(self.cache.root),
                    **{k: v for k, v in machine_facts().items() if k not in ("cpus", "system")},
                }
            )
        device = self.device_facts()
        return {**facts, **{k: v for k, v in device.items() if not (k == "gpu" and facts["gpu"])}}


def open_runner(target: TargetSpec, model: Path) -> Runner:
    host = open_host(target)
    try:
        return TrtexecRunner(host, model, target, cache=EngineCache() if isinstance(host, LocalHost) else None)
    except BaseException:
        host.close()
        raise


def probe() -> dict:
    found = find_trtexec()
    if found is None:
        return {
            "usable": False,
            "detail": f"not on PATH nor at {DEFAULT_TRTEXEC}",
            "path": shutil.which("trtexec"),
        }
    return {
        "usable": True,
        "detail": f"{found} (TensorRT {trtexec_version(found) or '?'})",
        "path": found,
        "tensorrt": trtexec_version(found),
    }


RUNTIME = register_runtime(
    Runtime(
        "trtexec",
        "TensorRT's trtexec command line, here or on a Jetson over ssh",
        open_runner,
        probe,
        install="install TensorRT: its tar or deb packages (trtexec ships in bin/), or JetPack on a Jetson (/usr/src/tensorrt/bin/trtexec)",
        artifacts={"fp32": FP32, "fp16": FP32, "int8": INT8_TENSORRT},  # fp16: an engine built from the fp32 file
        builds_engine=True,
        options=TrtexecOptions,
        over_ssh=True,
        timed_by_duration=False,
    )
)
