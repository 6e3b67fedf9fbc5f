"""Validation on the device itself: ONNX Runtime or TensorRT's trtexec, reached over SSH.

Latency only means something where the model will run, so the exported model goes to
the board: it is uploaded once into a private work dir, run there, and the outputs come
back for accuracy to be computed here. The work dir is removed when the runner closes,
also after a failure. Every failure a user can act on (unreachable board, host key,
missing runtime, full disk, timeout) becomes a TargetUnavailable with one line.

`runtime: trtexec` without `ssh` uses the same code on this machine, for a CI runner
that is itself the Jetson.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from .errors import BadInput, EdgeDistillError, TargetUnavailable
from .runtimes import LatencyStats, resolve_providers
from .ssh import RemoteCommandFailed, SSHTarget
from .trtexec import TrtexecRun, load_trtexec_json, parse_export_output, parse_export_times, parse_trtexec_log, \
    trtexec_command, write_raw_input

if TYPE_CHECKING:
    from .recipe import TargetSpec

__all__ = ["RemoteOnnxRuntimeRunner", "RemoteTrtexecRunner", "LocalHost", "create_device_runner", "device_facts",
           "parse_device_facts"]

MISSING_MODULE_EXIT = 3
MODEL_REJECTED_EXIT = 4
MISSING_PROVIDER_EXIT = 5
EVAL_CHUNK_ELEMENTS = 1 << 24
EVAL_CHUNK_MAX = 1024
THROUGHPUT_BATCH = 64
TRTEXEC_WARMUP_MS = 500
CONNECT_TIMEOUT_S = 10
_FULL_DISK = re.compile(r"No space left on device|Disk quota exceeded")


class Host(Protocol):
    """What a runner needs from a machine: SSHTarget, or LocalHost for this one."""

    destination: str

    def run(self, argv: Sequence[str], *, timeout_s: float | None = 300, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]: ...

    def put(self, local: Path, remote: str, *, timeout_s: float | None = 600) -> None: ...

    def get(self, remote: str, local: Path, *, timeout_s: float | None = 600) -> None: ...

    def make_workdir(self) -> str: ...

    def remove(self, remote_path: str) -> None: ...

    def which(self, program: str) -> str | None: ...

    def close(self) -> None: ...


class LocalHost:
    """This machine behind the Host interface, so a Jetson CI runner can use trtexec without ssh to itself."""

    destination = "this machine"

    def run(self, argv: Sequence[str], *, timeout_s: float | None = 300, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                                    capture_output=True, timeout=timeout_s)
        except FileNotFoundError:
            raise TargetUnavailable(f"{self.destination}: `{argv[0]}` not found. Hint: install it or give its full path.") from None
        except subprocess.TimeoutExpired:
            raise TargetUnavailable(f"{self.destination}: `{os.path.basename(argv[0])}` timed out after {timeout_s:g} s. "
                                    "Hint: raise the target's timeout_s if this step is legitimately slow.") from None
        if check and result.returncode != 0:
            raise RemoteCommandFailed(self.destination, argv, result.returncode, result.stdout, result.stderr)
        return result

    def put(self, local: Path, remote: str, *, timeout_s: float | None = 600) -> None:
        _copy(Path(local), Path(remote))

    def get(self, remote: str, local: Path, *, timeout_s: float | None = 600) -> None:
        _copy(Path(remote), Path(local))

    def make_workdir(self) -> str:
        return tempfile.mkdtemp(prefix="edgedistill.")

    def remove(self, remote_path: str) -> None:
        shutil.rmtree(remote_path, ignore_errors=True)

    def which(self, program: str) -> str | None:
        if "/" in program:
            return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
        return shutil.which(program)

    def close(self) -> None:
        pass


def _copy(source: Path, dest: Path) -> None:
    try:
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    except OSError as exc:
        raise TargetUnavailable(f"this machine: cannot copy {source} to {dest}: {exc.strerror or exc}") from None


def open_host(target: "TargetSpec") -> Host:
    if not target.ssh:
        return LocalHost()
    return SSHTarget(target.ssh, config_file=target.ssh_config, known_hosts=target.known_hosts,
                     host_key_policy=target.host_key_policy, connect_timeout_s=min(CONNECT_TIMEOUT_S, target.timeout_s))


def create_device_runner(target: "TargetSpec", model: Path):
    """The runner for a target with `ssh` (either runtime) or a local trtexec target."""
    host = open_host(target)
    try:
        if target.runtime == "trtexec":
            return RemoteTrtexecRunner(host, model, target)
        return RemoteOnnxRuntimeRunner(host, model, target)
    except BaseException:
        host.close()
        raise


def _last_line(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else "no error output"
    return line if len(line) <= 200 else line[:197] + "..."


class _DeviceRunner:
    """Work-dir lifecycle and device facts shared by both remote runtimes."""

    infer_batch = None  # validate hands over the whole eval set: one upload, one remote run

    def __init__(self, host: Host, target: "TargetSpec"):
        self.host, self.target = host, target
        self.destination = host.destination
        self.workdir: str | None = None
        self._device_facts: dict | None = None

    def _path(self, name: str) -> str:
        return f"{self.workdir}/{name}"

    def _start(self, work) -> None:
        """Runs the setup steps; on any failure the work dir and connection are released before raising."""
        try:
            self.workdir = self.host.make_workdir()
            work()
        except BaseException:
            self.close()
            raise

    def _read_text(self, remote: str) -> str:
        try:
            return self.host.run(["cat", remote], timeout_s=self.target.timeout_s).stdout.decode("utf-8", "replace")
        except RemoteCommandFailed as exc:
            raise TargetUnavailable(f"{self.destination}: cannot read {remote}: {_last_line(exc.stderr)}") from None

    def _unavailable_if_full(self, stderr: bytes) -> None:
        text = stderr.decode("utf-8", "replace")
        if _FULL_DISK.search(text):
            raise TargetUnavailable(f"{self.destination}: no space left on device ({_last_line(text)}). "
                                    "Hint: free space on the board (the work dir is under its $TMPDIR or /tmp).")

    def device_facts(self) -> dict:
        if self._device_facts is None:
            self._device_facts = device_facts(self.host, min(60.0, self.target.timeout_s))
        return self._device_facts

    def close(self) -> None:
        """Removes the work dir and ends the connection; never raises, since it runs after failures too."""
        workdir, self.workdir = self.workdir, None
        try:
            if workdir is not None:
                self.host.remove(workdir)
        except EdgeDistillError:
            pass
        finally:
            self.host.close()


# ----------------------------------------------------------------------------------------- onnxruntime

# Runs on the device with its own Python (3.6+, numpy and onnxruntime); prints one JSON line.
# argv: MODE MODEL THREADS PROVIDERS [mode arguments]; modes: check, infer, time.
ORT_SCRIPT = r'''
import json, os, platform, sys, time

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:
    sys.stderr.write("missing module: %s\n" % exc)
    sys.exit(3)


def session(model, threads, providers):
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        sys.stderr.write("onnxruntime %s on the target lacks %s (available: %s)\n"
                         % (ort.__version__, ", ".join(missing), ", ".join(available)))
        sys.exit(5)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(model, options, providers=providers)
    except Exception as exc:
        sys.stderr.write("onnxruntime %s cannot load the model: %s\n" % (ort.__version__, str(exc).splitlines()[0]))
        sys.exit(4)


def main(mode, model, threads, providers, *rest):
    sess = session(model, int(threads), providers.split(","))
    inp = sess.get_inputs()[0]
    if mode == "check":
        result = {"version": ort.__version__, "providers": sess.get_providers(),
                  "available_providers": ort.get_available_providers(), "python": platform.python_version(),
                  "machine": platform.machine(), "cpus": os.cpu_count()}
    elif mode == "infer":
        source, target, batch = rest[0], rest[1], int(rest[2])
        x = np.load(source)
        out = [sess.run(None, {inp.name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
        np.save(target, np.concatenate(out))
        result = {"outputs": target}
    else:
        batch, warmup, iterations = int(rest[0]), int(rest[1]), int(rest[2])
        shape = [batch] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feed = {inp.name: np.random.RandomState(0).standard_normal(shape).astype(np.float32)}
        for _ in range(warmup):
            sess.run(None, feed)
        samples = []
        for _ in range(iterations):
            start = time.perf_counter()
            sess.run(None, feed)
            samples.append((time.perf_counter() - start) * 1000.0)
        result = {"samples_ms": samples}
    print(json.dumps(result))


main(*sys.argv[1:])
'''


class RemoteOnnxRuntimeRunner(_DeviceRunner):
    """ONNX Runtime in the device's own Python (the target's providers, CPU by default), driven by a small uploaded script."""

    name = "onnxruntime"

    def __init__(self, host: Host, model: Path, target: "TargetSpec"):
        super().__init__(host, target)
        self.python = target.remote_python
        self.providers = resolve_providers(getattr(target, "providers", None))

        def setup() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / "edgedistill_ort.py"
                script.write_text(ORT_SCRIPT, encoding="utf-8")
                self.host.put(script, self._path("edgedistill_ort.py"), timeout_s=target.timeout_s)
            self.host.put(Path(model), self._path("model.onnx"), timeout_s=target.timeout_s)
            self.runtime_facts = self._call("check")

        self._start(setup)

    def _call(self, mode: str, *args: object) -> dict:
        argv = [self.python, self._path("edgedistill_ort.py"), mode, self._path("model.onnx"), str(self.target.threads),
                ",".join(self.providers), *map(str, args)]
        result = self.host.run(argv, timeout_s=self.target.timeout_s, check=False)
        if result.returncode == 127:
            raise TargetUnavailable(f"{self.destination}: `{self.python}` not found on the target. "
                                    "Hint: install Python 3 there or set the target's remote_python to its path.")
        if result.returncode == MISSING_MODULE_EXIT:
            raise TargetUnavailable(f"{self.destination}: {self.python} lacks onnxruntime or numpy ({_last_line(result.stderr)}). "
                                    "Hint: pip install onnxruntime on the board (on Jetson, the wheel built for its JetPack), "
                                    "or set remote_python to a Python that has it.")
        if result.returncode == MISSING_PROVIDER_EXIT:
            raise TargetUnavailable(f"{self.destination}: {_last_line(result.stderr)}. Hint: GPU providers need the "
                                    "onnxruntime-gpu build for the board, or list only the providers it has.")
        if result.returncode == MODEL_REJECTED_EXIT:
            raise TargetUnavailable(f"{self.destination}: {_last_line(result.stderr)}. "
                                    "Hint: upgrade onnxruntime on the board; the export uses ONNX opset 17.")
        if result.returncode != 0:
            self._unavailable_if_full(result.stderr)
            raise TargetUnavailable(f"{self.destination}: the onnxruntime helper exited with {result.returncode}: "
                                    f"{_last_line(result.stderr)}")
        try:
            return json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            raise TargetUnavailable(f"{self.destination}: the onnxruntime helper printed no result "
                                    f"({_last_line(result.stdout + result.stderr)})") from None

    def infer(self, x: np.ndarray) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            np.save(Path(tmp) / "inputs.npy", np.ascontiguousarray(x, dtype=np.float32))
            self.host.put(Path(tmp) / "inputs.npy", self._path("inputs.npy"), timeout_s=self.target.timeout_s)
            self._call("infer", self._path("inputs.npy"), self._path("outputs.npy"), 256)
            self.host.get(self._path("outputs.npy"), Path(tmp) / "outputs.npy", timeout_s=self.target.timeout_s)
            return np.load(Path(tmp) / "outputs.npy")

    def time(self, batch: int, warmup: int, iterations: int) -> LatencyStats:
        samples = self._call("time", batch, warmup, iterations)["samples_ms"]
        return LatencyStats.from_samples(np.asarray(samples), batch)

    def facts(self) -> dict:
        return {"runtime": "onnxruntime", **self.runtime_facts, "intra_op_threads": self.target.threads or "default",
                "ssh": self.target.ssh, **self.device_facts()}


# ---------------------------------------------------------------------------------------------- trtexec

def _onnx_io(model: Path) -> tuple[str, tuple[int, ...], int | None, str | None, bool]:
    """Input name, per-item shape, fixed batch (None when dynamic), first output name, whether it has Q/DQ nodes."""
    import onnx

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise BadInput(f"{model}: not a readable ONNX model ({exc})") from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BadInput(f"{model}: trtexec validation needs a model with one input, it has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    item = tuple(d.dim_value for d in dims[1:])
    if not item or any(d <= 0 for d in item):
        raise BadInput(f"{model}: input {inputs[0].name} needs fixed sizes after the batch axis, got {item}")
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    output = proto.graph.output[0].name if proto.graph.output else None
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    return inputs[0].name, item, batch, output, quantized


def _version_tuple(version: str | None) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version or ""))[:3]


class RemoteTrtexecRunner(_DeviceRunner):
    """TensorRT through trtexec: the engine is built on the device, then timed and run from the saved plan.

    One engine serves every batch size validate needs: a dynamic-batch ONNX gets an optimisation
    profile from 1 (tuned for, as the p99 budget is at batch 1) up to the largest eval chunk.
    """

    name = "trtexec"

    def __init__(self, host: Host, model: Path, target: "TargetSpec"):
        super().__init__(host, target)
        self.input_name, self.item_shape, self.fixed_batch, self.output_name, self.quantized = _onnx_io(Path(model))
        self.max_batch: int | None = None
        self.build: TrtexecRun | None = None
        self.last_run: TrtexecRun | None = None
        self.trtexec = target.trtexec

        def setup() -> None:
            found = self.host.which(target.trtexec)
            if found is None:
                raise TargetUnavailable(f"{self.destination}: trtexec not found at {target.trtexec}. Hint: install TensorRT "
                                        "(JetPack puts trtexec in /usr/src/tensorrt/bin) or set the target's trtexec path.")
            self.trtexec = found
            self.host.put(Path(model), self._path("model.onnx"), timeout_s=target.timeout_s)

        self._start(setup)

    def _shape(self, batch: int) -> str:
        return "x".join(str(d) for d in (batch, *self.item_shape))

    def _shapes(self, batch: int) -> dict[str, tuple[int, ...]] | None:
        return None if self.fixed_batch else {self.input_name: (batch, *self.item_shape)}

    def _run(self, argv: list[str], what: str) -> TrtexecRun:
        result = self.host.run(argv, timeout_s=self.target.timeout_s, check=False)
        log = (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace")
        if result.returncode == 127:
            raise TargetUnavailable(f"{self.destination}: `{self.trtexec}` could not be started ({_last_line(result.stderr)}).")
        run = parse_trtexec_log(log)
        if result.returncode != 0 or not run.passed:
            self._unavailable_if_full(result.stderr + result.stdout)
            raise TargetUnavailable(f"{self.destination}: trtexec {what} failed: {run.failure or _last_line(log)}")
        return run

    def _ensure_engine(self, batch: int) -> int:
        """Builds the engine on first use; returns the batch size to run at (clamped to what the engine takes)."""
        if self.fixed_batch:
            self.max_batch = self.fixed_batch
        if self.build is None:
            self.max_batch = self.max_batch or max(batch, THROUGHPUT_BATCH)
            argv = trtexec_command(self.trtexec, onnx=self._path("model.onnx"), save_engine=self._path("model.engine"),
                                   precision=self.target.precision, shapes=self._shapes(1), warmup_ms=0, iterations=1)
            if not self.fixed_batch:
                argv += [f"--minShapes={self.input_name}:{self._shape(1)}", f"--optShapes={self.input_name}:{self._shape(1)}",
                         f"--maxShapes={self.input_name}:{self._shape(self.max_batch)}"]
            self.build = self._run(argv, "engine build")
        return self.fixed_batch or min(batch, self.max_batch)

    def _warmup_records(self, run: TrtexecRun) -> int:
        """--exportTimes holds the warm-up queries up to TensorRT 8.4; later releases leave them out."""
        version = _version_tuple(run.trt_version or (self.build.trt_version if self.build else None))
        return (run.warmup_queries or 0) if not version or version < (8, 5) else 0

    def time(self, batch: int, warmup: int, iterations: int) -> LatencyStats:
        batch = self._ensure_engine(batch)
        times = self._path(f"times_b{batch}.json")
        argv = trtexec_command(self.trtexec, engine=self._path("model.engine"), shapes=self._shapes(batch),
                               warmup_ms=TRTEXEC_WARMUP_MS if warmup else 0, iterations=iterations, export_times=times)
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
                part = x[start:start + chunk]
                if len(part) < chunk:
                    part = np.concatenate([part, np.zeros((chunk - len(part), *part.shape[1:]), np.float32)])
                write_raw_input(part, inputs / f"chunk_{i:05d}.bin")
            self.host.put(inputs, self._path("inputs"), timeout_s=self.target.timeout_s)
        outputs = [self._infer_chunk(i, chunk) for i in range(len(starts))]
        return np.concatenate(outputs)[: len(x)]

    def _infer_chunk(self, index: int, batch: int) -> np.ndarray:
        out = self._path(f"outputs_{index:05d}.json")
        argv = trtexec_command(self.trtexec, engine=self._path("model.engine"), shapes=self._shapes(batch), warmup_ms=0,
                               iterations=1, load_inputs={self.input_name: self._path(f"inputs/chunk_{index:05d}.bin")},
                               export_output=out)
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
            raise TargetUnavailable(f"{self.destination}: trtexec returned output {name} of shape "
                                    f"{'x'.join(map(str, values.shape))} for a batch of {batch}")
        return values.reshape(batch, -1).astype(np.float32)

    def facts(self) -> dict:
        build = self.build
        facts = {"runtime": "trtexec", "tensorrt": build.trt_version if build else None,
                 "gpu": build.device if build else None, "precision": self.target.precision, "trtexec": self.trtexec,
                 "engine_max_batch": self.max_batch, "ssh": self.target.ssh}
        if self.last_run is not None:
            facts["throughput_qps"] = self.last_run.throughput_qps
            facts["trtexec_warnings"] = self.last_run.warnings
        if self.target.precision == "int8" and not self.quantized:
            facts["note"] = ("int8 without Q/DQ nodes: trtexec has no calibration data and uses placeholder ranges, "
                             "so latency is indicative and accuracy is not meaningful")
        device = self.device_facts()
        return {**facts, **{k: v for k, v in device.items() if not (k == "gpu" and facts["gpu"])}}


# ---------------------------------------------------------------------------------------- device facts

_FACTS_SCRIPT = r"""
section() { printf '\n@@%s\n' "$1"; }
section model; cat /proc/device-tree/model 2>/dev/null | tr -d '\000'
section compatible; cat /proc/device-tree/compatible 2>/dev/null | tr '\000' ' '
section tegra; cat /etc/nv_tegra_release 2>/dev/null
section jetpack; dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null
section nvpmodel; command -v nvpmodel >/dev/null 2>&1 && nvpmodel -q 2>/dev/null
section gpu; command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1
section uname; uname -srm
section cpus; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
section hostname; hostname 2>/dev/null || uname -n
exit 0
"""

# L4T release -> JetPack, for boards without the nvidia-jetpack package (shared/trtexec_samples/jetson_facts.md, section 5).
L4T_JETPACK = {
    "32.3.1": "4.3", "32.4.3": "4.4", "32.5.0": "4.5", "32.5.1": "4.5.1", "32.5.2": "4.5.1", "32.6.1": "4.6",
    "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4", "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
    "36.4.4": "6.2.1", "36.4.7": "6.2.1", "36.5.0": "6.2.2", "38.2.0": "7.0", "38.2.1": "7.0", "39.2.0": "7.2",
}
_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")
_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_device_facts(text: str) -> dict:
    """What the facts script printed, as optional fields: a board that lacks a file gives null."""
    sections: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("@@"):
            name = line[2:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    get = lambda key: (sections.get(key) or "").strip() or None  # noqa: E731
    tegra = get("tegra")
    l4t = None
    if tegra and (m := _L4T.search(tegra)):
        revision = m.group(2).rstrip(".")
        l4t = f"{m.group(1)}.{revision if '.' in revision else revision + '.0'}"
    jetpack = get("jetpack")
    jetpack = jetpack.split("-")[0].split("+")[0] if jetpack else L4T_JETPACK.get(l4t or "")
    power_mode = None
    if nvpmodel := get("nvpmodel"):
        lines = nvpmodel.splitlines()
        for i, line in enumerate(lines):
            if m := _POWER_MODE.search(line):
                mode_id = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().isdigit() else None
                power_mode = m.group(1) + (f" (mode {mode_id})" if mode_id else "")
                break
    soc = next((w.split(",", 1)[1] for w in (get("compatible") or "").split() if re.fullmatch(r"nvidia,tegra\d+\w*", w)), None)
    cpus = get("cpus")
    return {"hostname": get("hostname"), "system": get("uname"), "cpus": int(cpus) if cpus and cpus.isdigit() else None,
            "device_model": get("model"), "soc": soc, "gpu": get("gpu"), "nv_tegra_release": tegra.splitlines()[0] if tegra else None,
            "l4t": l4t, "jetpack": jetpack, "power_mode": power_mode}


def device_facts(host: Host, timeout_s: float = 60) -> dict:
    """Board, SoC/GPU, L4T/JetPack and power mode where readable; a facts failure never fails the target."""
    try:
        result = host.run(["sh", "-c", _FACTS_SCRIPT], timeout_s=timeout_s, check=False)
    except TargetUnavailable as exc:
        return {"facts_error": str(exc)}
    return parse_device_facts(result.stdout.decode("utf-8", "replace"))
