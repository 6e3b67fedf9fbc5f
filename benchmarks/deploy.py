"""FP32 vs INT8 vs FP16 side by side on every runtime this machine has, in one run: real model sizes for speed,
the demo run for accuracy.

    .venv/bin/python -m benchmarks.deploy [--run-dir runs/mnist-lenet5-half] [--part all|sizes|demo]

The runtimes come from edgedistill.backends.RUNTIMES: each one whose probe says it is usable here and that runs
the CPU INT8 export (ONNX Runtime and OpenVINO on a CPU machine).

- sizes: torchvision ResNet-50 and ResNet-18 (teachers), MobileNetV3-Small and a half-width ResNet-18 (students),
  untrained, at 224 and 96 px; each exported, quantized (edgedistill's INT8 export, calibrated on random pixels:
  timing only) and converted to FP16 exactly as a run does; latency at batch 1 and throughput at batch 32, with
  speed-ups against the same model's FP32 and against the ResNet-50 teacher on the same runtime.
- demo: the demo run's teacher and student at each precision on mnist-heldout: the accuracy each precision costs.
  The INT8 and FP16 files are made afresh from the run's student.onnx (with the run's calibration images), so the
  figures are those of the current export code.

All models of one table part are timed in interleaved rounds, so that background load on a shared machine hits
them alike. Prints markdown and writes it, with the command and versions, into docs/deploy.md between the markers.
"""

from __future__ import annotations

import argparse
import json
import os
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
AIM_RESNET_INT8, AIM_MOBILENET_INT8 = 5.0, 1.0  # INT8 student vs its own FP32 on the best runtime (issue 14)
PRECISIONS = ("fp32", "int8", "fp16")
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
REAL_MODELS = {"resnet50": "teacher", "resnet18": "teacher", "mobilenet_v3_small": "student", "resnet18_half": "student"}
REFERENCE_TEACHER = "resnet50"
ROUND_BUDGET_S = {1: 0.4, "batched": 1.2}  # timed seconds per model and round; at least 3 calls at batch 1, 1 batched


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
    inference: str = ""  # what the runtime ran it at: OpenVINO's inference precision
    predictions: np.ndarray | None = None
    agreement: float | None = None  # top-1 agreement with the FP32 student on the same runtime


@dataclass
class SpeedRow:
    model: str
    size: int
    runtime: str
    precision: str
    inference: str = ""  # what the runtime ran it at: OpenVINO's inference precision
    size_bytes: int = 0
    batch1: object = None
    batched: object = None


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)


def _load_run(run_dir: Path):
    """The run's recipe as recorded, and the teacher it names; or a message saying how to make the run."""
    from edgedistill.recipe import recipe_from_dict

    make = "make it with `make demo` (or `.venv/bin/edgedistill compress recipes/demo.yaml`), then rerun this benchmark"
    if not (run_dir / "run.json").is_file() or not (run_dir / "student.onnx").is_file():
        _fail(f"{run_dir}: no finished run (run.json and student.onnx); {make}")
    if not (run_dir / "selected.npz").is_file():
        _fail(f"{run_dir}: no selected.npz, whose images calibrate INT8; {make}")
    recorded = json.loads((run_dir / "run.json").read_text())
    return recipe_from_dict(recorded["recipe"], base_dir=Path(recorded.get("recipe_dir") or run_dir))


def _predict(runner, x: np.ndarray) -> np.ndarray:
    return np.concatenate([runner.infer(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1)


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
        m.predictions = _predict(runner, x)
        m.accuracy = float((m.predictions == labels).mean())
        m.size_bytes = onnx_info(m.path).size_bytes
        m.inference = str(runner.facts().get("inference_precision", m.precision))
    for m in models:
        student = next((s for s in models if s.runtime == m.runtime and s.name.startswith("student") and s.precision == "fp32"), None)
        if student is not None:
            m.agreement = float((m.predictions == student.predictions).mean())
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


def _precision(row) -> str:
    """`fp16 (bf16)` where the runtime ran a precision other than the file's."""
    ran = {"bf16": "bf16", "f16": "fp16", "f32": "fp32"}.get(row.inference, row.precision)
    return row.precision if ran == row.precision or row.precision == "int8" else f"{row.precision} ({ran})"


def table(models: list[Measured], batch: int) -> str:
    """The demo: one row per model, precision and runtime; what each precision costs against the FP32 student."""
    lines = [
        f"| model | runtime | precision | accuracy | Δ vs student FP32 | agreement with student FP32 | Δ vs teacher | "
        f"p50 ms (b1) | images/s (b{batch}) | size |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for m in models:
        teacher = next(t for t in models if t.runtime == m.runtime)
        student = next((s for s in models if s.runtime == m.runtime and s.name.startswith("student") and s.precision == "fp32"), m)
        agreement = "-" if m.agreement is None else f"{m.agreement:.2%}"
        lines.append(
            f"| {m.name} | {m.runtime} | {_precision(m)} | {m.accuracy:.2%} | {(m.accuracy - student.accuracy) * 100:+.2f} pt | "
            f"{agreement} | {(m.accuracy - teacher.accuracy) * 100:+.2f} pt | {m.batch1.p50_ms:.4f} | "
            f"{m.batched.throughput_per_s:,.0f} | {m.size_bytes / 1024:.0f} KiB |"
        )
    return "\n".join(lines)


def demo_drops(models: list[Measured]) -> dict[tuple[str, str], float]:
    """Accuracy points each (runtime, precision) of the student loses against its FP32 on the same runtime."""
    students = [m for m in models if m.name.startswith("student")]
    reference = {m.runtime: m.accuracy for m in students if m.precision == "fp32"}
    return {(m.runtime, m.precision): (reference[m.runtime] - m.accuracy) * 100 for m in students}


def verdict(models: list[Measured]) -> list[str]:
    lines = []
    for (runtime, precision), drop in demo_drops(models).items():
        if precision != "fp32":
            ran = _precision(next(m for m in models if m.runtime == runtime and m.precision == precision))
            lines.append(
                f"- {runtime} {ran}: accuracy lost on the demo **{drop:+.2f} points** "
                f"({'within' if drop <= AIM_INT8_DROP_POINTS else 'over'} the {AIM_INT8_DROP_POINTS:g}-point budget)."
            )
    return lines


# ------------------------------------------------------------------------------------------- real model sizes


def resnet18_half(num_classes: int = 1000):
    """ResNet-18 with every stage half as wide (32-64-128-256 channels), as lenet5_half is to LeNet-5:
    torchvision's BasicBlock ResNet has no width knob, so the stages are rebuilt with its own _make_layer."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.inplanes = 32
    model.conv1, model.bn1 = nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32)
    model.layer1 = model._make_layer(BasicBlock, 32, 2)
    model.layer2 = model._make_layer(BasicBlock, 64, 2, stride=2)
    model.layer3 = model._make_layer(BasicBlock, 128, 2, stride=2)
    model.layer4 = model._make_layer(BasicBlock, 256, 2, stride=2)
    model.fc = nn.Linear(256, num_classes)
    return model.eval()


def real_model(name: str):
    import torchvision

    return resnet18_half() if name == "resnet18_half" else getattr(torchvision.models, name)(weights=None, num_classes=1000).eval()


def make_artifacts(name: str, size: int, folder: Path, calibration_images: int) -> dict[str, Path]:
    """FP32 export, CPU INT8 and FP16 of one model at one input size, made as a run makes them."""
    import torch

    from edgedistill.config.schema import InputSpec
    from edgedistill.stages.export import export_onnx
    from edgedistill.stages.fp16 import convert_fp16
    from edgedistill.stages.quantize import quantize_int8

    spec = InputSpec(channels=3, size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with torch.no_grad():
        fp32 = export_onnx(real_model(name), spec, folder / f"{name}.onnx")
    calibration = np.random.default_rng(0).integers(0, 256, (calibration_images, 3, size, size), dtype=np.uint8)
    return {
        "fp32": fp32,
        "int8": quantize_int8(fp32, folder / f"{name}.int8.onnx", calibration, IMAGENET_MEAN, IMAGENET_STD).path,
        "fp16": convert_fp16(fp32, folder / f"{name}.fp16.onnx"),
    }


def _calls_per_round(runner, batch: int, budget_s: float, least: int) -> int:
    """As many calls as fit the round's time budget, judged from one call (which also warms the runner up)."""
    seconds = runner.time(batch, 1, 1).p50_ms / 1000
    return max(least, min(200, int(budget_s / max(seconds, 1e-6))))


def measure_sizes(
    names: list[str], sizes: list[int], runtimes: list[str], threads: int, rounds: int, batch: int, calibration_images: int
) -> list[SpeedRow]:
    """Every model at every size on every runtime and precision; one model and size at a time, its runners interleaved."""
    from edgedistill.backends import create_runner
    from edgedistill.backends.base import LatencyStats
    from edgedistill.config.schema import TargetSpec
    from edgedistill.models.onnx_info import onnx_info

    rows: list[SpeedRow] = []
    for name in names:
        for size in sizes:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                files = make_artifacts(name, size, Path(tmp), calibration_images)
                group = [SpeedRow(name, size, runtime, precision) for runtime in runtimes for precision in PRECISIONS]
                runners = [
                    create_runner(TargetSpec(name=name, runtime=r.runtime, threads=threads, precision=r.precision), files[r.precision])
                    for r in group
                ]
                try:
                    plan = [
                        (_calls_per_round(x, 1, ROUND_BUDGET_S[1], 3), _calls_per_round(x, batch, ROUND_BUDGET_S["batched"], 1))
                        for x in runners
                    ]
                    one: list[list] = [[] for _ in group]
                    many: list[list] = [[] for _ in group]
                    for _ in range(rounds):
                        for i, runner in enumerate(runners):
                            one[i].append(runner.time(1, 2, plan[i][0]).samples_ms)
                            many[i].append(runner.time(batch, 0, plan[i][1]).samples_ms)
                    for row, runner, single, batched in zip(group, runners, one, many):
                        row.batch1 = LatencyStats.from_rounds(single, 1)
                        row.batched = LatencyStats.from_rounds(batched, batch)
                        row.inference = str(runner.facts().get("inference_precision", row.precision))
                        row.size_bytes = onnx_info(files[row.precision]).size_bytes
                finally:
                    for runner in runners:
                        runner.close()
            rows += group
            print(f"  {name} {size}px: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def sizes_table(rows: list[SpeedRow], batch: int) -> str:
    """Speed-ups against the same model's FP32 and against the reference teacher's FP32, same runtime and size."""
    lines = [
        f"| model | px | runtime | precision | p50 ms (b1) | × own FP32 (b1) | × {REFERENCE_TEACHER} (b1) | best ms (b1) | "
        f"× own FP32 (best) | images/s (b{batch}) | × own FP32 (b{batch}) | × {REFERENCE_TEACHER} (b{batch}) | size MiB |",
        "|---|--:|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        own = next(f for f in rows if (f.model, f.size, f.runtime, f.precision) == (r.model, r.size, r.runtime, "fp32"))
        ref = next((f for f in rows if (f.model, f.size, f.runtime, f.precision) == (REFERENCE_TEACHER, r.size, r.runtime, "fp32")), None)
        noisy = " (noisy)" if r.batch1.noisy else ""
        lines.append(
            f"| {r.model} | {r.size} | {r.runtime} | {_precision(r)} | {r.batch1.p50_ms:.2f}{noisy} | "
            f"{_ratio(own.batch1.p50_ms, r.batch1.p50_ms)} | {_ratio(ref.batch1.p50_ms, r.batch1.p50_ms) if ref else '-'} | "
            f"{r.batch1.min_ms:.2f} | {_ratio(own.batch1.min_ms, r.batch1.min_ms)} | {r.batched.throughput_per_s:,.1f} | "
            f"{_ratio(r.batched.throughput_per_s, own.batched.throughput_per_s)} | "
            f"{_ratio(r.batched.throughput_per_s, ref.batched.throughput_per_s) if ref else '-'} | {r.size_bytes / 2**20:.1f} |"
        )
    return "\n".join(lines)


def sizes_verdict(rows: list[SpeedRow], drops: dict[tuple[str, str], float]) -> list[str]:
    """The issue's aims for the INT8 students on their best runtime, and the fastest setting within the accuracy budget."""
    lines = []

    def stats(model: str, size: int, runtime: str, precision: str):
        return next(r.batch1 for r in rows if (r.model, r.size, r.runtime, r.precision) == (model, size, runtime, precision))

    for model, aim in (("resnet18_half", AIM_RESNET_INT8), ("resnet18", AIM_RESNET_INT8), ("mobilenet_v3_small", AIM_MOBILENET_INT8)):
        for size in dict.fromkeys(r.size for r in rows if r.model == model):
            gains = {}
            for rt in dict.fromkeys(r.runtime for r in rows):
                fp32, int8 = stats(model, size, rt, "fp32"), stats(model, size, rt, "int8")
                gains[rt] = (fp32.p50_ms / int8.p50_ms, fp32.min_ms / int8.min_ms)
            best = max(gains, key=lambda rt: gains[rt][0])
            others = ", ".join(f"{rt} {g[0]:.2f}x" for rt, g in gains.items() if rt != best)
            lines.append(
                f"- {model} {size}px: INT8 vs its FP32 at batch 1 **{gains[best][0]:.2f}x on {best}** by p50, {gains[best][1]:.2f}x "
                f"by best call ({'meets' if gains[best][0] >= aim else 'misses'} the {aim:g}x aim by p50)"
                f"{'; ' + others if others else ''}."
            )
    for model in (m for m, role in REAL_MODELS.items() if role == "student"):
        for size in dict.fromkeys(r.size for r in rows if r.model == model):
            same = [r for r in rows if (r.model, r.size) == (model, size)]
            allowed = [r for r in same if drops.get((r.runtime, r.precision), 0.0) <= AIM_INT8_DROP_POINTS]
            if allowed:
                best = min(allowed, key=lambda r: r.batch1.p50_ms)
                lines.append(
                    f"- recommended for {model} {size}px: **{best.runtime} {_precision(best)}**, {best.batch1.p50_ms:.2f} ms at batch 1 "
                    f"(the fastest setting that stays within {AIM_INT8_DROP_POINTS:g} points on the demo)."
                )
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
    from edgedistill.backends.runtime import INT8_CPU, RUNTIMES

    return [name for name, r in RUNTIMES.items() if r.artifacts.get("int8") is INT8_CPU and r.probe().get("usable")]


def write_doc(section: str) -> None:
    from edgedistill.atomic import atomic_write_text

    text = DOC.read_text() if DOC.is_file() else f"# Deployment\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(DOC, f"{head}{START}\n{section}\n{END}{tail}")


def demo_models(run_dir: Path, folder: Path, runtimes: list[str]) -> tuple[list[Measured], object, str]:
    """The demo's teacher (exported now), its student.onnx, and INT8 and FP16 copies made now as the run makes them."""
    from edgedistill.pipeline import load_teacher
    from edgedistill.results.selection import load_selection
    from edgedistill.stages.export import export_onnx
    from edgedistill.stages.fp16 import convert_fp16
    from edgedistill.stages.quantize import quantize_int8

    recipe = _load_run(run_dir)
    spec, q = recipe.teacher.input, recipe.export.int8
    calibration, _ = load_selection(run_dir / "selected.npz").split()
    student = run_dir / "student.onnx"
    int8 = quantize_int8(
        student, folder / "student.int8.onnx", calibration, spec.mean, spec.std, q.method, max_samples=q.samples, seed=recipe.seed
    )
    files = {
        "teacher": export_onnx(load_teacher(recipe), spec, folder / "teacher.onnx", recipe.teacher.class_names),
        "fp32": student,
        "int8": int8.path,
        "fp16": convert_fp16(student, folder / "student.fp16.onnx"),
    }
    models = [
        m
        for runtime in runtimes
        for m in (
            Measured(f"teacher {recipe.teacher.arch}", files["teacher"], "fp32", runtime),
            *(Measured(f"student {recipe.student.arch}", files[p], p, runtime) for p in PRECISIONS),
        )
    ]
    how = (
        f"INT8: {q.method} calibration on {int8.calibration_samples} selected pool images (no MNIST), QDQ U8S8; "
        "INT8 and FP16 made from the run's student.onnx by this benchmark, with the current export code."
    )
    return models, recipe, how


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/mnist-lenet5-half"))
    parser.add_argument("--part", choices=("all", "sizes", "demo"), default="all", help="only `all` rewrites docs/deploy.md")
    parser.add_argument("--models", default=",".join(REAL_MODELS), help="real-size models, comma-separated")
    parser.add_argument("--sizes", default="224,96", help="input sizes in pixels, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (0: each runtime's default)")
    parser.add_argument("--iterations", type=int, default=2000, help="demo: timed calls at batch 1 per model, over all rounds")
    parser.add_argument("--warmup", type=int, default=50, help="demo: untimed calls before each round")
    parser.add_argument("--batch", type=int, default=32, help="throughput batch")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--calibration-images", type=int, default=16, help="real sizes: random images INT8 is calibrated on")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/deploy.md alone")
    args = parser.parse_args(argv)

    import torch

    from edgedistill.inputs.builtin import load_builtin
    from edgedistill.inputs.images import convert_array, normalize

    torch.set_num_threads(max(1, args.threads))
    runtimes = local_runtimes()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "-m", "benchmarks.deploy", *(argv or sys.argv[1:])])
    load_before, started = _load(), time.perf_counter()
    parts: list[str] = [f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`; before: {load_before}."]
    models, facts, drops = [], {}, {}
    if args.part in ("all", "demo"):
        with tempfile.TemporaryDirectory() as tmp:
            models, recipe, how = demo_models(args.run_dir, Path(tmp), runtimes)
            spec = recipe.teacher.input
            data = load_builtin("mnist-heldout")
            x = normalize(torch.from_numpy(convert_array(data.images, spec)), spec).numpy()
            demo_started = time.perf_counter()
            facts = measure(models, x, data.labels, args.threads, args.iterations, args.warmup, args.batch, args.rounds)
        drops = demo_drops(models)
        parts += [
            "",
            "### The demo: what each precision costs in accuracy",
            "",
            f"Run `{args.run_dir}` (recipe `{recipe.name}`, teacher weights `{recipe.teacher.weights}`), {len(x)} mnist-heldout "
            f"digits; {args.iterations} timed calls at batch 1 per model and runtime in {args.rounds} interleaved rounds "
            f"({time.perf_counter() - demo_started:.0f} s). {how} At 0.03 ms a call, LeNet latency is call overhead: "
            "the speed figures are in the table above.",
            "",
            table(models, args.batch),
            "",
            *verdict(models),
        ]
    if args.part in ("all", "sizes"):
        names, sizes = args.models.split(","), [int(v) for v in args.sizes.split(",")]
        sizes_started = time.perf_counter()
        rows = measure_sizes(names, sizes, runtimes, args.threads, args.rounds, args.batch, args.calibration_images)
        parts[1:1] = [
            "",
            "### Real model sizes: speed",
            "",
            f"Untrained torchvision models ({', '.join(names)}; resnet18_half: ResNet-18 at half width), exported, INT8-quantized "
            f"({args.calibration_images} random calibration images: speed only) and FP16-converted by edgedistill; "
            f"{args.threads} thread(s); batch 1 and {args.batch}; {args.rounds} interleaved rounds of about "
            f"{ROUND_BUDGET_S[1]:g} s (batch 1) and {ROUND_BUDGET_S['batched']:g} s (batch {args.batch}) per model "
            f"({time.perf_counter() - sizes_started:.0f} s). Speed-ups are against the same model's FP32 and against "
            f"{REFERENCE_TEACHER} FP32, on the same runtime and input size; `(noisy)`: the rounds' medians differ by over 10%.",
            "",
            sizes_table(rows, args.batch),
            "",
            *sizes_verdict(rows, drops),
        ]
    parts += ["", f"After: {_load()}; {time.perf_counter() - started:.0f} s in all."]
    if facts:
        parts += ["", f"Versions and machine: {versions(facts)}."]
    section = "\n".join(parts)
    print(section)
    if args.part == "all" and not args.no_write:
        write_doc(section)
        print(f"\nwritten to {DOC.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
