"""Build NVIDIA trtexec command lines and read what trtexec writes back.

Pure functions only: nothing here runs trtexec. The parsers follow real logs
from TensorRT 7.1 to 10.16 (tests/data/trtexec_samples/README.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import BadInput


@dataclass
class TrtexecRun:
    """What one trtexec console log says about its run: the figures themselves come from --exportTimes."""

    passed: bool
    trt_version: str | None
    device: str | None
    throughput_qps: float | None
    warnings: list[str]
    failure: str | None
    warmup_queries: int | None = None


# ---------------------------------------------------------------- log lines

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TIMESTAMP = re.compile(r"\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\]")
_SEVERITY = re.compile(r"^\s*\[([IWEVF])\](?: |$)(.*)$")
_RESULT = re.compile(
    r"&&&& (RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec"
    r"(?: \[TensorRT v(\d+)\])?(?: \[b\d+\])?(?: # (.*))?"
)


@dataclass
class _Line:
    severity: str | None  # None for text trtexec did not prefix (&&&&, shell, continuation lines)
    text: str


def _split_lines(text: str) -> list[_Line]:
    """Cut collided log lines apart at every embedded timestamp (sample 07)."""
    lines = []
    for raw in text.splitlines():
        raw = raw.rstrip("\r")
        for i, part in enumerate(re.split(f"(?={_TIMESTAMP.pattern})", raw)):
            stamped = bool(_TIMESTAMP.match(part))
            body = _TIMESTAMP.sub("", part, count=1) if stamped else part
            sev = _SEVERITY.match(body)
            if sev:
                lines.append(_Line(sev.group(1), sev.group(2)))
            elif not stamped and i == 0:
                lines.append(_Line(None, part))
    return lines


# ------------------------------------------------------------ summary parse

_METRICS = {
    "Latency": "latency",
    "Host Latency": "latency",
    "End-to-End Host Latency": "end_to_end",
    "Enqueue Time": "enqueue",
    "H2D Latency": "h2d",
    "GPU Compute Time": "gpu_compute",
    "D2H Latency": "d2h",
}
_METRIC_LINE = re.compile(r"^(" + "|".join(re.escape(k) for k in _METRICS) + r"): (.*)$")
_FIELD = re.compile(rf"(?:^|, )(min|max|mean|median) = ({_NUM}) ms(?=,|\s*$)")
_PCT_FIELD = re.compile(rf"(?:^|, )percentile\(({_NUM})%\) = ({_NUM}) ms(?=,|\s*$)")

# TRT 7 prints each metric as a block: a title line, then "min: X ms (end to end Y ms)" lines.
_TRT7_BLOCKS = {"Host Latency": "latency", "Enqueue Time": "enqueue", "GPU Compute": "gpu_compute"}
_TRT7_STAT = re.compile(rf"^(min|max|mean|median): ({_NUM}) ms(?: \(end to end ({_NUM}) ms\))?\s*$")
_TRT7_PCT = re.compile(rf"^percentile: ({_NUM}) ms at ({_NUM})%(?: \(end to end ({_NUM}) ms at ({_NUM})%\))?\s*$")

_THROUGHPUT = re.compile(rf"^throughput: ({_NUM}) qps", re.I)
_WALLTIME = re.compile(rf"^(?:Total Host Walltime|walltime): ({_NUM}) s\b")
_TRACE = re.compile(rf"^Timing trace has (\d+) queries over ({_NUM}) s")
_WARMUP = re.compile(r"^Warmup completed (\d+) queries")
_DEVICE = re.compile(r"^Selected Device: (.+?)\s*$")
_VERSION_LINE = re.compile(r"^TensorRT version: ([\d.]+)\s*$")


def decode_trt_version(code: int | str) -> str:
    """Turn trtexec's integer version (8601, 100300, 101601) into "8.6.1" / "10.3.0" / "10.16.1".

    TRT 8 packs M*1000+m*100+p; from TRT 9 on it is M*10000+m*100+p.
    """
    n = int(code)
    if n >= 10000:
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"


@dataclass
class _Scan:
    """Everything picked out of the log lines in one pass."""

    result: str | None = None
    version_code: str | None = None
    version_line: str | None = None
    command: str | None = None
    device: str | None = None
    throughput: float | None = None
    walltime_s: float | None = None
    queries: int | None = None
    warmup: int | None = None
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_text: list[str] = field(default_factory=list)  # [E] lines and the unprefixed lines that continue them
    warning_text: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)
    trt7_block: str | None = None  # TRT 7 prints each metric as a block of lines under its title
    saw_latency: bool = False  # the performance summary printed latency figures


def _scan(lines: list[_Line]) -> _Scan:
    s = _Scan()
    last_sev: str | None = None
    in_perf_warning = False
    for line in lines:
        if line.severity is None:
            _scan_unprefixed(s, line.text, last_sev)
            last_sev = last_sev if line.text.strip() else None
            continue
        last_sev = line.severity
        msg = line.text
        if line.severity == "W":
            in_perf_warning = _scan_warning(s, msg, in_perf_warning)
            s.warning_text.append(msg)
            continue
        in_perf_warning = False
        if line.severity in "EF":
            s.errors.append(msg.strip())
            s.error_text.append(msg)
        elif line.severity == "I":
            _scan_info(s, msg)
    return s


def _scan_unprefixed(s: _Scan, text: str, last_sev: str | None) -> None:
    if m := _RESULT.search(text):
        if m.group(2):
            s.version_code = m.group(2)
        if m.group(3) and s.command is None:
            s.command = m.group(3).strip()
        if m.group(1) != "RUNNING" and s.result is None:
            s.result = m.group(1)
    elif last_sev in ("E", "F") and text.strip() and s.result is None:
        s.error_text.append(text.strip())


def _scan_warning(s: _Scan, msg: str, in_perf_warning: bool) -> bool:
    if msg.startswith("* "):
        s.warnings.append(msg[2:].strip())
        return True
    if in_perf_warning and msg.startswith("  ") and msg.strip():
        s.warnings[-1] += " " + msg.strip()
        return True
    return False


def _scan_info(s: _Scan, msg: str) -> None:
    if m := _METRIC_LINE.match(msg):
        s.trt7_block = None
        s.saw_latency |= _METRICS[m.group(1)] == "latency" and bool(_FIELD.search(m.group(2)) or _PCT_FIELD.search(m.group(2)))
        return
    if msg in _TRT7_BLOCKS:
        s.trt7_block = _TRT7_BLOCKS[msg]
        return
    if s.trt7_block is not None and (_TRT7_STAT.match(msg) or _TRT7_PCT.match(msg)):
        s.saw_latency |= s.trt7_block == "latency"
        return
    if msg.startswith("==="):
        s.trt7_block = None
    elif m := _THROUGHPUT.match(msg):
        s.throughput = float(m.group(1))
    elif m := _WALLTIME.match(msg):
        s.walltime_s = float(m.group(1))
    elif m := _TRACE.match(msg):
        s.queries = int(m.group(1))
        s.walltime_s = s.walltime_s or float(m.group(2))
    elif m := _WARMUP.match(msg):
        s.warmup = int(m.group(1))
    elif m := _DEVICE.match(msg):
        s.device = m.group(1)
    elif m := _VERSION_LINE.match(msg):
        s.version_line = m.group(1)
    if msg.strip() and not msg.startswith("[TRT]"):
        s.infos.append(msg.strip())


def _version(s: _Scan) -> str | None:
    if s.version_code:
        return decode_trt_version(s.version_code)
    if s.version_line is None:
        return None
    if "." in s.version_line:
        return s.version_line
    return decode_trt_version(s.version_line)


# ----------------------------------------------------------- failure causes

_REMOVED_IN_TRT10 = {
    "--workspace": "use --memPoolSize=workspace:<MiB>M",
    "--explicitBatch": "drop it, explicit batch is always on",
    "--buildOnly": "use --skipInference",
    "--maxBatch": "drop it and give shapes with --shapes/--optShapes",
    "--batch": "drop it and give shapes with --shapes",
    "--deploy": "Caffe support was removed; export to ONNX",
    "--model": "Caffe support was removed; export to ONNX",
    "--uff": "UFF support was removed; export to ONNX",
}
_UNKNOWN_OPTION = re.compile(r"Unknown option: (\S+)")
_VERSION_MISMATCH = re.compile(
    r"kPLAN_MAGIC_TAG|magicTag|incompatible serialization version|Version tag does not match"
    r"|not compatible with this version of TensorRT|Serialization assertion",
    re.I,
)
_WRONG_GPU = re.compile(r"generated on an incompatible device", re.I)
_OOM = re.compile(r"out of memory|could not be allocated|OutOfMemory|Insufficient memory", re.I)
_OOM_BYTES = re.compile(r"(?:GPU memory \((\d+) bytes\)|allocating (\d+)-byte)")
_BUILD_CONTEXT = re.compile(r"buildSerializedNetwork|Engine could not be created|Could not find any implementation|autotuning|tactic", re.I)
_ONNX_PARSE = re.compile(
    r"Failed to parse onnx file|Parsing model failed|ModelImporter|No importer registered for op"
    r"|Plugin not found|UNSUPPORTED_NODE|onnx2trt",
    re.I,
)
_ONNX_OP = re.compile(
    r"No importer registered for op: (\w+)|While parsing node number \d+ \[(\w+)|operator: (\w+)"
    r"|Searching for plugin: (\w+)"
)
_NOISE = re.compile(r"^(?:\[TRT\]\s*)?(?:\S+\.cpp:\d+: )?(?:-{3,}.*)?\s*$")  # "--- End node ---", rulers


def _one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unknown_options(errors: list[str], version: str | None) -> str | None:
    names = [m.group(1) for e in errors if (m := _UNKNOWN_OPTION.search(e))]
    if not names:
        return None
    hints = [f"{n}: {_REMOVED_IN_TRT10[n]}" for n in names if n in _REMOVED_IN_TRT10]
    where = f"TensorRT {version}" if version else "this trtexec"
    plural = "s" if len(names) > 1 else ""
    line = f"trtexec rejected unknown option{plural} {', '.join(names)} (not accepted by {where})"
    if hints:
        line += "; removed in TensorRT 10 - " + "; ".join(hints)
    return line


def _version_mismatch(context: str, version: str | None) -> str | None:
    here = f"this trtexec (TensorRT {version})" if version else "this trtexec"
    if _WRONG_GPU.search(context):
        return f"engine was built for a different GPU than {here} runs on; rebuild the engine from ONNX on the target"
    if _VERSION_MISMATCH.search(context):
        return (
            f"engine was built with a different TensorRT version or platform than {here}; "
            "rebuild the engine from ONNX on the target with the same TensorRT"
        )
    return None


def _out_of_memory(context: str, warnings: str) -> str | None:
    if not _OOM.search(context):
        return None
    sizes = [int(a or b) for a, b in _OOM_BYTES.findall(context + "\n" + warnings)]
    asked = f" (asked for {max(sizes) / 2**30:.1f} GiB)" if sizes else ""
    if _BUILD_CONTEXT.search(context):
        return (
            f"out of GPU memory during engine build{asked}; cap the builder with --memPoolSize=workspace:<MiB>M, "
            "use smaller input shapes, or free GPU memory (on Jetson it is shared with system RAM)"
        )
    return f"out of GPU memory{asked}; use smaller input shapes or free GPU memory"


def _onnx_parse(context: str) -> str | None:
    if not _ONNX_PARSE.search(context):
        return None
    op = next((g for m in _ONNX_OP.finditer(context) for g in m.groups() if g), None)
    node = f" (op {op})" if op else ""
    if re.search(r"Plugin not found|No importer registered", context, re.I):
        return (
            f"ONNX parse failed: a node{node} has no TensorRT importer and no plugin was found; "
            "re-export the model without that op (or with another opset) or load its plugin with --staticPlugins"
        )
    detail = next((e for e in context.splitlines() if re.search(r"ERROR|Assertion|Unsupported", e)), "")
    return _one_line(f"ONNX parse failed{node}: {detail or 'see the [E] lines'}")


def _silent_failure(s: _Scan) -> str:
    last = s.infos[-1] if s.infos else None
    step = f" (last step: {last})" if last else ""
    argv = (s.command or "").split()
    building = any(a.startswith(("--onnx", "--deploy", "--uff", "--model")) for a in argv)
    built = any(i.startswith("Engine built") for i in s.infos)
    what = "engine build failed" if building and not built else "trtexec failed"
    if "--verbose" in argv:
        hint = "it already ran with --verbose, so check the options (e.g. input names in --shapes/--optShapes)"
    else:
        hint = "rerun with --verbose to see why"
    return f"{what} with no error reported{step}; {hint}"


def _first_error(errors: list[str]) -> str | None:
    for e in errors:
        if not _NOISE.match(e):
            return _one_line("trtexec error: " + re.sub(r"^\[TRT\]\s*", "", e))
    return None


def _failure(s: _Scan, version: str | None) -> str:
    context = "\n".join(s.error_text)
    for cause in (
        _unknown_options(s.errors, version),
        _version_mismatch(context, version),
        _out_of_memory(context, "\n".join(s.warning_text)),
        _onnx_parse(context),
    ):
        if cause:
            return cause
    if s.errors:
        return _first_error(s.errors) or _one_line("trtexec error: " + s.errors[0])
    if s.result == "FAILED":
        return _silent_failure(s)
    if s.result == "WAIVED":
        return "trtexec WAIVED the run (it printed help or skipped the test): check the command line"
    if s.command:
        last = f" after: {s.infos[-1]}" if s.infos else ""
        return f"trtexec did not finish: the log stops before its '&&&& PASSED/FAILED' line{last} (killed, timed out or cut off)"
    return "no trtexec result in the log: no '&&&& PASSED/FAILED' line and no performance summary"


# ---------------------------------------------------------------- the parse


def _throughput(s: _Scan) -> float | None:
    """Old releases can print 0 qps (NVIDIA/TensorRT#1162); recompute it from the trace when possible."""
    if s.throughput == 0 and s.queries and s.walltime_s:
        return s.queries / s.walltime_s
    return s.throughput


def parse_trtexec_log(text: str) -> TrtexecRun:
    """Read a trtexec console log (any release from TRT 7.1 to 10.x) into a TrtexecRun.

    Never raises on odd input: lines cut at the terminal width, collided lines and
    trailing non-trtexec text are skipped, so a partial log still yields what it holds.
    A log cut off before its '&&&& PASSED/FAILED' line passed if it printed latency figures and no error.
    """
    s = _scan(_split_lines(text))
    version = _version(s)
    passed = s.result == "PASSED" if s.result is not None else s.saw_latency and not s.errors
    return TrtexecRun(
        passed=passed,
        trt_version=version,
        device=s.device,
        throughput_qps=_throughput(s),
        warnings=s.warnings,
        failure=None if passed else _failure(s, version),
        warmup_queries=s.warmup,
    )


# ------------------------------------------------------------- JSON exports

_BARE_NONFINITE = re.compile(r'("(?:[^"\\]|\\.)*")|(-?)\b(nan|inf)\b', re.I)


def _jsonable(text: str) -> str:
    """C++ streams print nan/inf, which JSON lacks; turn them into Python's NaN/Infinity outside strings."""

    def fix(m: re.Match[str]) -> str:
        if m.group(1):
            return m.group(1)
        if m.group(3).lower() == "nan":
            return "NaN"
        return m.group(2) + "Infinity"

    return _BARE_NONFINITE.sub(fix, text)


def load_trtexec_json(text: str | bytes) -> list[Any]:
    """Parse a trtexec JSON export into its documents.

    TRT 7 appends one document per run to the same file (the result is not valid
    JSON as a whole), and fp16 outputs can hold nan/inf, so json.loads alone fails.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    text = _jsonable(text)
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return docs
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise BadInput(f"trtexec JSON export is malformed at character {e.pos}: {e.msg}") from None
        docs.append(doc)


_TIME_KEYS = {
    "latency": ("latencyMs",),
    "compute": ("computeMs",),
    "h2d": ("h2dMs", "inMs"),
    "d2h": ("d2hMs", "outMs"),
    "end_to_end": ("endToEndMs",),
}


def _records(data: list | dict) -> list[dict]:
    records = [data] if isinstance(data, dict) else list(data)
    if not all(isinstance(r, dict) for r in records):
        raise BadInput("--exportTimes data must be a JSON array of objects (one per inference)")
    return records


def _enqueue_ms(r: dict) -> float:
    if "startH2dMs" in r:
        return r["endEnqMs"] - r["startEnqMs"]
    if "startEnqMs" in r and "startInMs" in r:
        # TRT 7.1/7.2 write the H2D times under *Enq* and the enqueue times under *In* (json_formats.md 1.2).
        return r["endInMs"] - r["startInMs"]
    raise BadInput("this --exportTimes file has no enqueue timestamps (TRT 7.0 layout)")


def _record_ms(r: dict, metric: str) -> float:
    if metric == "enqueue":
        return _enqueue_ms(r)
    for key in _TIME_KEYS[metric]:
        if key in r:
            return r[key]
    if metric == "latency":
        return sum(_record_ms(r, m) for m in ("h2d", "compute", "d2h"))
    if metric == "end_to_end":
        raise BadInput("--exportTimes has no endToEndMs: TensorRT writes it only up to 8.2")
    raise BadInput(f"--exportTimes record lacks any of {', '.join(_TIME_KEYS[metric])}: {sorted(r)}")


def parse_export_times(data: list | dict, metric: str = "latency", warmup: int = 0) -> np.ndarray:
    """Per-inference times in ms from a --exportTimes document, for every key layout from TRT 7.0 to 11.

    metric: latency (H2D+compute+D2H), compute, h2d, d2h, enqueue, or end_to_end (TRT <= 8.2 only).
    warmup: records to drop first. Files from TRT <= 8.4 include the warm-up queries;
    pass TrtexecRun.warmup_queries for them. From 8.5 trtexec already leaves them out.
    """
    if metric not in (*_TIME_KEYS, "enqueue"):
        raise BadInput(f"unknown exportTimes metric {metric!r}")
    records = _records(data)[warmup:]
    return np.array([float(_record_ms(r, metric)) for r in records], dtype=np.float64)


def _dims(text: str) -> tuple[int, ...]:
    text = str(text).strip()
    if not text:
        return ()
    try:
        return tuple(int(d) for d in text.split("x"))
    except ValueError:
        raise BadInput(f"--exportOutput dimensions {text!r} are not like 1x1000") from None


def parse_export_output(data: list | dict) -> dict[str, np.ndarray]:
    """Output tensors from a --exportOutput document, each shaped by its "dimensions" string."""
    records = [data] if isinstance(data, dict) else list(data)
    outputs = {}
    for r in records:
        if not isinstance(r, dict) or not {"name", "dimensions", "values"} <= r.keys():
            raise BadInput("--exportOutput entries need name, dimensions and values")
        shape = _dims(r["dimensions"])
        values = np.asarray(r["values"])
        if values.dtype.kind not in "iufb":
            raise BadInput(f"--exportOutput values of {r['name']!r} are not numbers")
        if values.size != math.prod(shape):
            raise BadInput(f"--exportOutput {r['name']!r} has {values.size} values but dimensions {r['dimensions']!r}")
        outputs[r["name"]] = values.reshape(shape)
    return outputs


# ------------------------------------------------------------ --loadInputs

_RAW_DTYPES = {np.dtype(t) for t in (np.float32, np.float16, np.int8, np.uint8, np.int32, np.int64, np.bool_)}


def write_raw_input(array: np.ndarray, path: str | Path) -> None:
    """Write an array as trtexec --loadInputs reads it: headerless, C order, little-endian, no conversion.

    trtexec copies the bytes straight into the input binding and checks only the size
    (volume x element size), so the dtype must already be the binding's (fp32 by default).
    """
    a = np.asarray(array)
    native = a.dtype.newbyteorder("=") if a.dtype.byteorder not in "=|" else a.dtype
    if native not in _RAW_DTYPES:
        raise BadInput(f"trtexec has no input binding type for {a.dtype}; cast to float32 (or float16 with --inputIOFormats=fp16:chw)")
    little = np.ascontiguousarray(a, dtype=native.newbyteorder("<"))
    Path(path).write_bytes(little.tobytes(order="C"))


# ------------------------------------------------------------ command line

_PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8"]}


def _check_name(name: str, what: str) -> None:
    if not name or "," in name or "'" in name:
        raise BadInput(f"{what} name {name!r} cannot be passed to trtexec (empty, or holds ',' or a quote)")


def _shapes_arg(shapes: dict[str, tuple[int, ...]]) -> str:
    """trtexec splits each entry on its last ':', so names may hold ':' (e.g. 'x:0') as they are."""
    parts = []
    for name, dims in shapes.items():
        _check_name(name, "input")
        if not dims or any(int(d) <= 0 for d in dims):
            raise BadInput(f"shape for {name!r} must be positive sizes, got {dims!r}")
        parts.append(f"{name}:{'x'.join(str(int(d)) for d in dims)}")
    return ",".join(parts)


def _load_inputs_arg(load_inputs: dict[str, str]) -> str:
    """trtexec splits on the last ':', so a path holding ':' (a Windows drive) needs the
    quoted-name form 'x':C:\\data.bin, which only newer trtexec releases understand."""
    parts = []
    for name, file in load_inputs.items():
        _check_name(name, "input")
        file = str(file)
        if "," in file:
            raise BadInput(f"--loadInputs file {file!r} holds ',', which trtexec treats as a separator")
        parts.append(f"'{name}':{file}" if ":" in file else f"{name}:{file}")
    return ",".join(parts)


def _percentile_arg(percentiles: tuple[float, ...] | list[float]) -> str:
    """Highest first: TRT <= 8.4 reads the value with std::stoi and keeps only the leading
    integer, while 8.5+ reads the whole comma list; this spelling is valid on both."""
    values = [float(p) for p in percentiles]
    if not values or any(not 0 <= p <= 100 for p in values):
        raise BadInput(f"percentiles must be in [0, 100], got {percentiles!r}")
    ordered = [max(values)] + sorted(set(values) - {max(values)})
    return ",".join(f"{p:g}" for p in ordered)


def trtexec_command(
    trtexec: str,
    onnx: str | None = None,
    engine: str | None = None,
    save_engine: str | None = None,
    precision: str = "fp32",
    shapes: dict[str, tuple[int, ...]] | None = None,
    warmup_ms: int = 500,
    iterations: int = 200,
    duration_s: int = 0,
    export_times: str | None = None,
    load_inputs: dict[str, str] | None = None,
    export_output: str | None = None,
    percentiles: tuple[float, ...] = (50, 90, 99),
) -> list[str]:
    """argv for one trtexec build-and-benchmark (onnx) or benchmark (engine) run.

    Uses only flags that TRT 8.x and 10.x both accept: no --workspace, --explicitBatch,
    --buildOnly or --batch (removed in 10). precision applies to builds only; an engine
    keeps the precision it was built with. fp32 leaves TF32 on, as trtexec does by default.
    duration_s=0 makes `iterations` the only stopping rule (trtexec runs at least both).
    """
    if (onnx is None) == (engine is None):
        raise BadInput("give exactly one of onnx (build from a model) or engine (load a built engine)")
    if engine is not None and save_engine is not None:
        raise BadInput("trtexec cannot load and save an engine in the same run")
    if precision not in _PRECISION_FLAGS:
        raise BadInput(f"precision must be one of {', '.join(_PRECISION_FLAGS)}, got {precision!r}")
    if warmup_ms < 0 or iterations < 1 or duration_s < 0:
        raise BadInput("warmup_ms and duration_s must be >= 0 and iterations >= 1")

    argv = [str(trtexec)]
    if onnx is not None:
        argv += [f"--onnx={onnx}", *_PRECISION_FLAGS[precision]]
        if save_engine is not None:
            argv.append(f"--saveEngine={save_engine}")
    else:
        argv.append(f"--loadEngine={engine}")
    if shapes:
        argv.append(f"--shapes={_shapes_arg(shapes)}")
    if load_inputs:
        argv.append(f"--loadInputs={_load_inputs_arg(load_inputs)}")
    argv += [
        f"--warmUp={int(warmup_ms)}",
        f"--iterations={int(iterations)}",
        f"--duration={int(duration_s)}",
        f"--percentile={_percentile_arg(percentiles)}",
    ]
    if export_times is not None:
        argv.append(f"--exportTimes={export_times}")
    if export_output is not None:
        argv.append(f"--exportOutput={export_output}")
    return argv
