#!/usr/bin/env python3
"""STAND-IN for NVIDIA trtexec, used only by contract tests of the command lines edgedistill builds.

It is NOT trtexec and does no GPU work. It checks its flags the way TensorRT 10's trtexec does
(`--name=value` pairs; flags removed in TRT 10 such as --workspace, --explicitBatch and --buildOnly
are unknown options; --onnx or --loadEngine is required; --loadInputs files must exist and have the
binding's byte size), then prints a log in the TRT 10 layout with synthetic, deterministic timings
and writes the --exportTimes / --exportOutput JSON files in trtexec's layout. Every log it prints
says that it is a stand-in. Standard library only.
"""

from __future__ import annotations

import math
import os
import sys
import time

VERSION_TAG = "[TensorRT v100300]"
KNOWN_VALUE_OPTIONS = {
    "--onnx",
    "--loadEngine",
    "--saveEngine",
    "--shapes",
    "--minShapes",
    "--optShapes",
    "--maxShapes",
    "--warmUp",
    "--iterations",
    "--duration",
    "--percentile",
    "--avgRuns",
    "--exportTimes",
    "--exportOutput",
    "--exportProfile",
    "--exportLayerInfo",
    "--loadInputs",
    "--memPoolSize",
    "--device",
    "--timingCacheFile",
    "--builderOptimizationLevel",
    "--infStreams",
    "--inputIOFormats",
    "--outputIOFormats",
    "--useDLACore",
    "--staticPlugins",
    "--profilingVerbosity",
    "--sleepTime",
    "--idleTime",
}
KNOWN_FLAG_OPTIONS = {
    "--fp16",
    "--int8",
    "--bf16",
    "--best",
    "--noTF32",
    "--stronglyTyped",
    "--verbose",
    "--useSpinWait",
    "--noDataTransfers",
    "--useCudaGraph",
    "--separateProfileRun",
    "--dumpProfile",
    "--dumpOutput",
    "--skipInference",
    "--allowGPUFallback",
}
INT_OPTIONS = {"--warmUp", "--iterations", "--duration", "--avgRuns", "--device", "--infStreams"}


class Reject(Exception):
    """An argument trtexec would refuse."""


def log(severity: str, message: str) -> None:
    stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
    print(f"[{stamp}] [{severity}] {message}")


def parse_arguments(argv: list[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Split like trtexec's argsToArgumentsMap: the text before the first '=' is the option."""
    known, unknown = {}, []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in KNOWN_VALUE_OPTIONS or key in KNOWN_FLAG_OPTIONS:
            known[key] = value
        else:
            unknown.append((key, value))
    return known, unknown


def split_name_value(entry: str) -> tuple[str, str]:
    """TRT 10 splitNameAndValue: 'name':value, or else split on the last ':'."""
    if "'" in entry:
        parts = entry.split("'")
        if len(parts) != 3 or not parts[2].startswith(":"):
            raise Reject(f"Found invalid number of 's when parsing {entry}")
        return parts[0] + parts[1], parts[2][1:]
    if ":" not in entry:
        raise Reject(f"Invalid name:value entry {entry}")
    name, _, value = entry.rpartition(":")
    return name, value


def parse_shapes(text: str) -> dict[str, list[int]]:
    shapes = {}
    for entry in text.split(","):
        name, dims = split_name_value(entry)
        try:
            shapes[name] = [int(d) for d in dims.split("x")]
        except ValueError:
            raise Reject(f"Invalid dimensions {dims} for input {name}") from None
    return shapes


def check_options(opts: dict[str, str]) -> dict[str, list[int]]:
    for key in INT_OPTIONS & opts.keys():
        try:
            int(opts[key])
        except ValueError:
            raise Reject(f"Invalid value {opts[key]} for {key}") from None
    if "--onnx" not in opts and "--loadEngine" not in opts:
        raise Reject("Model missing or format not recognized")
    if "--loadEngine" in opts and "--saveEngine" in opts:
        raise Reject("Incompatible load and save engine options selected")
    for p in opts["--percentile"].split(",") if opts.get("--percentile") else []:
        try:
            value = float(p)
        except ValueError:
            raise Reject(f"Invalid percentile {p}") from None
        if not 0 <= value <= 100:
            raise Reject(f"Percentile {p}is not in [0,100]")
    shapes = parse_shapes(opts["--shapes"]) if opts.get("--shapes") else {}
    if any(d <= 0 for dims in shapes.values() for d in dims):
        raise Reject("Shape dimensions must be positive")
    return shapes


def check_model(opts: dict[str, str]) -> None:
    if "--onnx" in opts and not os.path.isfile(opts["--onnx"]):
        log("E", f"Could not open file {opts['--onnx']}")
        raise Reject("Failed to parse onnx file")
    if "--loadEngine" in opts and not os.path.isfile(opts["--loadEngine"]):
        raise Reject(f"Error opening engine file: {opts['--loadEngine']}")


def check_inputs(opts: dict[str, str], shapes: dict[str, list[int]]) -> None:
    """fp32 bindings assumed: the file must hold volume*4 bytes (TRT 10 also accepts twice that)."""
    if not opts.get("--loadInputs"):
        return
    for entry in opts["--loadInputs"].split(","):
        name, path = split_name_value(entry)
        if not os.path.isfile(path):
            raise Reject(f"Cannot open file {path}!")
        if name in shapes:
            expected = math.prod(shapes[name]) * 4
            actual = os.path.getsize(path)
            if actual not in (expected, 2 * expected):
                raise Reject(
                    f"Unexpected file size for input file: {path}. Note: Input binding size is: {expected} bytes "
                    f"but the file size is {actual} bytes. Double check the size and datatype of the provided data."
                )
        log("I", f"Using values loaded from {path} for input {name}")


def synthetic_trace(n: int) -> list[dict[str, float]]:
    """Deterministic timings in the 8.5+/10.x --exportTimes key layout."""
    records, clock = [], 0.0
    for i in range(n):
        h2d, compute, d2h = 0.05, 1.0 + 0.01 * (i % 10), 0.02
        start = clock
        rec = {
            "startEnqMs": start,
            "endEnqMs": start + 0.1,
            "startH2dMs": start + 0.1,
            "endH2dMs": start + 0.1 + h2d,
            "startComputeMs": start + 0.1 + h2d,
            "endComputeMs": start + 0.1 + h2d + compute,
            "startD2hMs": start + 0.1 + h2d + compute,
            "endD2hMs": start + 0.1 + h2d + compute + d2h,
            "h2dMs": h2d,
            "computeMs": compute,
            "d2hMs": d2h,
            "latencyMs": h2d + compute + d2h,
        }
        records.append(rec)
        clock = rec["endD2hMs"]
    return records


def fmt(x: float) -> str:
    """Like a C++ ostream printing a float: 6 significant digits."""
    return f"{x:.6g}"


def write_export_times(path: str, records: list[dict[str, float]]) -> None:
    rows = []
    for i, r in enumerate(records):
        body = ", ".join(f'"{k}" : {fmt(v)}' for k, v in r.items())
        rows.append(("  " if i == 0 else ", ") + "{ " + body + " }")
    with open(path, "w") as f:
        f.write("[\n" + "\n".join(rows) + "\n]\n")


def write_export_output(path: str) -> None:
    values = ", ".join(fmt(0.1 * i - 0.45) for i in range(10))
    with open(path, "w") as f:
        f.write('[\n  { "name" : "y"\n  , "dimensions" : "1x10"\n  , "values" : [ ' + values + " ]\n  }\n]\n")


def percentile(sorted_values: list[float], p: float) -> float:
    index = max(0, min(len(sorted_values) - 1, int(math.ceil(p / 100 * len(sorted_values))) - 1))
    return sorted_values[index]


def stats_line(name: str, values: list[float], percentiles: list[float]) -> str:
    ordered = sorted(values)
    median = ordered[len(ordered) // 2]
    parts = [
        f"min = {fmt(ordered[0])} ms",
        f"max = {fmt(ordered[-1])} ms",
        f"mean = {fmt(sum(values) / len(values))} ms",
        f"median = {fmt(median)} ms",
    ]
    parts += [f"percentile({p:g}%) = {fmt(percentile(ordered, p))} ms" for p in percentiles]
    return f"{name}: " + ", ".join(parts)


def benchmark(opts: dict[str, str]) -> None:
    iterations = int(opts.get("--iterations", "10"))
    percentiles = [float(p) for p in opts.get("--percentile", "90,95,99").split(",")]
    records = synthetic_trace(iterations)
    walltime_s = records[-1]["endD2hMs"] / 1000
    log("I", f"Warmup completed 0 queries over {int(opts.get('--warmUp', '200'))} ms")
    log("I", f"Timing trace has {iterations} queries over {fmt(walltime_s)} s")
    log("I", "=== Performance summary ===")
    log("I", f"Throughput: {fmt(iterations / walltime_s)} qps")
    column = {k: [r[k] for r in records] for k in ("latencyMs", "h2dMs", "computeMs", "d2hMs")}
    enqueue = [r["endEnqMs"] - r["startEnqMs"] for r in records]
    for name, values in (
        ("Latency", column["latencyMs"]),
        ("Enqueue Time", enqueue),
        ("H2D Latency", column["h2dMs"]),
        ("GPU Compute Time", column["computeMs"]),
        ("D2H Latency", column["d2hMs"]),
    ):
        log("I", stats_line(name, values, percentiles))
    log("I", f"Total Host Walltime: {fmt(walltime_s)} s")
    log("I", f"Total GPU Compute Time: {fmt(sum(column['computeMs']) / 1000)} s")
    log("I", "Explanations of the performance metrics are printed in the verbose logs.")
    if opts.get("--exportTimes"):
        write_export_times(opts["--exportTimes"], records)
    if opts.get("--exportOutput"):
        write_export_output(opts["--exportOutput"])


def main(argv: list[str]) -> int:
    command = " ".join(["trtexec", *argv])
    print(f"&&&& RUNNING TensorRT.trtexec {VERSION_TAG} # {command}")
    log("I", "STAND-IN: tests/fake_trtexec_standin.py, not NVIDIA trtexec; no GPU work, synthetic timings")
    opts, unknown = parse_arguments(argv)
    try:
        if unknown:
            for key, value in unknown:
                log("E", f"Unknown option: {key} {value}")
            raise Reject(None)
        shapes = check_options(opts)
        log("I", "=== Device Information ===")
        log("I", "Selected Device: stand-in (no GPU)")
        log("I", "TensorRT version: 10.3.0")
        check_model(opts)
        if opts.get("--saveEngine"):
            with open(opts["--saveEngine"], "wb") as f:
                f.write(b"STAND-IN ENGINE, not a TensorRT plan\n")
            log("I", "Engine built in 0.001 sec.")
        check_inputs(opts, shapes)
        if "--skipInference" not in opts:
            benchmark(opts)
    except Reject as e:
        if e.args[0]:
            log("E", str(e.args[0]))
        print(f"&&&& FAILED TensorRT.trtexec {VERSION_TAG} # {command}")
        return 1
    print(f"&&&& PASSED TensorRT.trtexec {VERSION_TAG} # {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
