"""Teacher FP32, student FP32 and student INT8 side by side on every runtime this machine has, in one run.

    .venv/bin/python -m benchmarks.deploy [--run-dir runs/mnist-lenet5-half]

The runtimes come from edgedistill.backends.RUNTIMES: each one whose probe says it is usable here and that runs
ONNX files on this machine (ONNX Runtime and OpenVINO on a CPU machine; TensorRT too where there is a GPU).
Accuracy on mnist-heldout, latency at batch 1 (p50/p99, CV), throughput at batch 64, model size. All models on all
runtimes are timed in interleaved rounds so that background load on a shared machine hits them alike. Prints one
markdown table and writes it, with the command and versions, into docs/deploy.md between the benchmark markers.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deploy.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
AIM_SPEEDUP, AIM_INT8_DROP_POINTS = 3.0, 0.5


@dataclass
class Measured:
    name: str
    path: Path
    precision: str = "fp32"
    runtime: str = "onnxruntime"
    accuracy: float = 0.0
    size_bytes: int = 0
    batch1: object = None
    batched: object = None


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _load_run(run_dir: Path):
    """The run's recipe as recorded, and the teacher it names; or a message saying how to make the run."""
    from edgedistill.config.load import recipe_from_dict

    make = "make it with `make demo` (or `.venv/bin/edgedistill compress recipes/demo.yaml`), then rerun this benchmark"
    if not (run_dir / "run.json").is_file() or not (run_dir / "student.onnx").is_file():
        _fail(f"{run_dir}: no finished run (run.json and student.onnx); {make}")
    if not (run_dir / "student.int8.onnx").is_file():
        _fail(
            f"{run_dir}: no student.int8.onnx (export.int8.enabled off, or a run from before INT8 export); "
            f"rerun `.venv/bin/edgedistill export --run-dir {run_dir} RECIPE` or {make}"
        )
    recorded = json.loads((run_dir / "run.json").read_text())
    return recipe_from_dict(recorded["recipe"], base_dir=Path(recorded.get("recipe_dir") or run_dir))


def _accuracy(runner, x: np.ndarray, labels: np.ndarray) -> float:
    pred = np.concatenate([runner.infer(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1)
    return float((pred == labels).mean())


def measure(
    models: list[Measured], x: np.ndarray, labels: np.ndarray, threads: int, iterations: int, warmup: int, batch: int, rounds: int
) -> dict:
    from edgedistill.backends import create_runner
    from edgedistill.backends.base import LatencyStats
    from edgedistill.config.schema import TargetSpec
    from edgedistill.models.onnx_info import onnx_info

    # one runner per model row, in the rows' order: the same model name appears once per runtime
    runners = [create_runner(TargetSpec(name=m.name, runtime=m.runtime, threads=threads, precision=m.precision), m.path) for m in models]
    for m, runner in zip(models, runners):
        m.accuracy = _accuracy(runner, x, labels)
        m.size_bytes = onnx_info(m.path).size_bytes
    single: list[list] = [[] for _ in models]
    many: list[list] = [[] for _ in models]
    for _ in range(rounds):
        for i, runner in enumerate(runners):
            single[i].append(runner.time(1, warmup, iterations // rounds).samples_ms)
            many[i].append(runner.time(batch, max(1, warmup // 10), max(10, iterations // 10 // rounds)).samples_ms)
    for m, one, batched in zip(models, single, many):
        m.batch1 = LatencyStats.from_samples(np.concatenate(one), 1)
        m.batched = LatencyStats.from_samples(np.concatenate(batched), batch)
    return {m.runtime: runner.facts() for m, runner in zip(models, runners)}


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def table(models: list[Measured], batch: int) -> str:
    """One row per model and runtime; speed-ups against the FP32 teacher on the same runtime."""
    lines = [
        f"| model | runtime | accuracy | Δ vs teacher | p50 ms (b1) | p99 ms (b1) | CV (b1) | speed-up p50 | "
        f"images/s (b{batch}) | × teacher | size | × smaller |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in models:
        teacher = next(t for t in models if t.runtime == m.runtime)
        noisy = " noisy" if m.batch1.noisy else ""
        lines.append(
            f"| {m.name} | {m.runtime} | {m.accuracy:.2%} | {(m.accuracy - teacher.accuracy) * 100:+.2f} pt | {m.batch1.p50_ms:.4f} | "
            f"{m.batch1.p99_ms:.4f} | {m.batch1.cv:.2f}{noisy} | {_ratio(teacher.batch1.p50_ms, m.batch1.p50_ms)} | "
            f"{m.batched.throughput_per_s:,.0f} | {_ratio(m.batched.throughput_per_s, teacher.batched.throughput_per_s)} | "
            f"{m.size_bytes / 1024:.0f} KiB | {_ratio(teacher.size_bytes, m.size_bytes)} |"
        )
    return "\n".join(lines)


def verdict(models: list[Measured]) -> list[str]:
    lines = []
    for runtime in dict.fromkeys(m.runtime for m in models):
        teacher, student, int8 = (m for m in models if m.runtime == runtime)
        speedup = teacher.batch1.p50_ms / int8.batch1.p50_ms
        drop = (student.accuracy - int8.accuracy) * 100
        lines += [
            f"- {runtime}: student INT8 vs teacher FP32 at batch 1 (p50) **{speedup:.2f}x** "
            f"({'meets' if speedup >= AIM_SPEEDUP else 'misses'} the {AIM_SPEEDUP:g}x aim); accuracy lost to INT8 "
            f"**{drop:+.2f} points** ({'within' if drop <= AIM_INT8_DROP_POINTS else 'over'} the {AIM_INT8_DROP_POINTS:g}-point aim); "
            f"student FP32 vs teacher FP32 {teacher.batch1.p50_ms / student.batch1.p50_ms:.2f}x, "
            f"INT8 vs FP32 student {student.batch1.p50_ms / int8.batch1.p50_ms:.2f}x."
        ]
    return lines


def versions(facts_by_runtime: dict) -> str:
    import onnx
    import torch

    from edgedistill import __version__

    facts = facts_by_runtime["onnxruntime"]
    others = "".join(f", {name} {f.get('version')}" for name, f in facts_by_runtime.items() if name != "onnxruntime")
    return (
        f"edgedistill {__version__}, onnxruntime {facts['version']} ({', '.join(facts['providers'])}){others}, "
        f"onnx {onnx.__version__}, torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}; "
        f"CPU {facts.get('cpu_model') or facts['processor']} ({facts['usable_cpus']} of {facts['cpus']} cores usable, "
        f"governor {facts.get('cpu_governor') or 'unknown'}), {facts['system']}; "
        f"intra-op threads {facts['intra_op_threads']}, inter-op threads {facts['inter_op_threads']}"
    )


def local_runtimes() -> list[str]:
    """The runtimes of the table usable here that run the CPU INT8 export (a GPU runtime needs its own INT8 file)."""
    from edgedistill.backends import RUNTIMES

    return [name for name, r in RUNTIMES.items() if r.int8_flavour == "cpu" and r.probe().get("usable")]


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.is_file() else f"# Deployment\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(f"{head}{START}\n{section}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/mnist-lenet5-half"))
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (0: each runtime's default)")
    parser.add_argument("--iterations", type=int, default=2000, help="timed calls at batch 1 per model, over all rounds")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64, help="throughput batch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/deploy.md alone")
    args = parser.parse_args(argv)

    import torch

    from edgedistill.inputs.builtin import load_builtin
    from edgedistill.inputs.images import convert_array, normalize
    from edgedistill.pipeline import load_teacher
    from edgedistill.stages.export import export_onnx

    recipe = _load_run(args.run_dir)
    spec = recipe.teacher.input
    data = load_builtin("mnist-heldout")
    x = normalize(torch.from_numpy(convert_array(data.images, spec)), spec).numpy()
    int8_info = json.loads((args.run_dir / "int8.json").read_text()) if (args.run_dir / "int8.json").is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher_onnx = export_onnx(load_teacher(recipe), spec, Path(tmp) / "teacher.onnx", recipe.teacher.class_names)
        models = [
            m
            for runtime in local_runtimes()
            for m in (
                Measured(f"teacher {recipe.teacher.arch} FP32", teacher_onnx, "fp32", runtime),
                Measured(f"student {recipe.student.arch} FP32", args.run_dir / "student.onnx", "fp32", runtime),
                Measured(f"student {recipe.student.arch} INT8", args.run_dir / "student.int8.onnx", "int8", runtime),
            )
        ]
        started = time.perf_counter()
        facts = measure(models, x, data.labels, args.threads, args.iterations, args.warmup, args.batch, args.rounds)
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "benchmarks.deploy", *(argv or sys.argv[1:])])
    calibration = (
        f"INT8: {int8_info.get('method', '?')} calibration on {int8_info.get('calibration_samples', '?')} "
        f"selected pool images (no MNIST), ONNX Runtime QDQ U8S8."
        if int8_info
        else ""
    )
    section = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} with `{command}` on run `{args.run_dir}` (recipe `{recipe.name}`, "
            f"teacher weights `{recipe.teacher.weights}`) "
            f"({len(x)} mnist-heldout digits; {args.iterations} timed calls at batch 1 and "
            f"{len(models[0].batched.samples_ms)} at batch {args.batch} per model and runtime, "
            f"interleaved in {args.rounds} rounds, {time.perf_counter() - started:.0f} s). {calibration}",
            "",
            table(models, args.batch),
            "",
            *verdict(models),
            "",
            f"Versions and machine: {versions(facts)}.",
            "",
            "A CV (std/mean of the batch-1 samples) above 0.1 is flagged noisy: p99 on a shared machine then measures "
            "the neighbours as much as the model; p50 is the figure to compare.",
        ]
    )
    print(section)
    if not args.no_write:
        write_doc(section)
        print(f"\nwritten to {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
