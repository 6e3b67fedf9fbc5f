"""The thin command line on top of the pipeline stages."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .backends import RUNTIMES
from .errors import BadInput, EdgeDistillError
from .version import __version__

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill a trained image classifier into a small deployable model, without its training data.",
)
console = Console(stderr=True)
out = Console()

RecipeArg = typer.Argument(..., help="recipe YAML file", show_default=False)
RunDirOpt = typer.Option(None, "--run-dir", help="where artifacts go (default: runs/<recipe name>)")
SetOpt = typer.Option(None, "--set", help="override a recipe value: section.key=value (repeatable)")


def _version(value: bool) -> None:
    if value:
        out.print(f"edgedistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    pass


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _verdict_cell(target: dict) -> str:
    if target["error"]:
        return "[red]unavailable"
    total = len(target["verdicts"])
    failed = sum(not v["passed"] for v in target["verdicts"])
    if failed:
        return f"[red]FAIL {failed}/{total}"
    return f"[green]pass {total}/{total}" if total else "-"


def print_report(report: dict) -> None:
    from .results.report import throughput_rows

    teacher, student = report["teacher"], report["student"]
    table = Table(
        title=f"{report['name']}: teacher {teacher['arch']}, student {student['arch']}, "
        f"evaluated on {report['eval']['name']} ({report['eval']['samples']} images)",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for col in ("model", "target", "acc", "agree", "params", "size", "p50 ms", "p99 ms", "gate"):
        table.add_column(col, justify="left" if col in ("model", "target", "gate") else "right", no_wrap=True)
    table.add_row("teacher", "pytorch", _fmt(teacher["accuracy"], "{:.2%}"), "-", f"{teacher['parameters']:,}", "-", "-", "-", "")
    for t in report["targets"]:
        lat = t["latency"] or {}
        int8 = t.get("precision") == "int8"
        onnx_bytes = student.get("int8_onnx_bytes") if int8 and student.get("int8_onnx_bytes") else student["onnx_bytes"]
        table.add_row(
            "student" + (" int8" if int8 else ""),
            t["name"],
            _fmt(t["accuracy"], "{:.2%}"),
            _fmt(t["agreement"], "{:.2%}"),
            f"{student['parameters']:,}",
            f"{onnx_bytes / 1024:.0f}K",
            _fmt(lat.get("p50_ms"), "{:.3f}"),
            _fmt(lat.get("p99_ms"), "{:.3f}") + ("[yellow]~" if lat.get("noisy") else ""),
            _verdict_cell(t),
        )
    out.print(table)
    if any((t["latency"] or {}).get("noisy") for t in report["targets"]):
        out.print("[yellow]~[/] noisy: latency varied by more than 10% between runs (cv in report.json)")
    rates = throughput_rows(report)
    if rates:
        out.print(
            "throughput: " + ", ".join(f"{stage} {rate:,.0f} img/s ({ratio:.2f}x {ceiling})" for stage, rate, ceiling, _, ratio in rates),
            highlight=False,
        )
    if report.get("int8"):
        q = report["int8"]
        out.print(
            f"INT8 student.int8.onnx ({q['method']}, {q['calibration_samples']} calibration images) on {q['runtime']}: "
            f"{q['basis']} {q['int8']:.2%} vs fp32 {q['fp32']:.2%} (drop {q['drop'] * 100:.2f} points), "
            f"{student.get('int8_onnx_bytes', 0) / 1024:.0f} KiB",
            highlight=False,
        )
    for t in report["targets"]:
        for v in t["verdicts"]:
            if not v["passed"]:
                out.print(f"[red]{t['name']}: {v['budget']} measured {v['measured']:.4g}, limit {v['limit']:.4g} ({v['basis']})")


def _run(fn: Callable[[], dict | None]) -> None:
    """One line and a documented exit code for every expected failure; no traceback."""
    try:
        report = fn()
    except EdgeDistillError as exc:
        report = getattr(exc, "report", None)
        if report:
            print_report(report)
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        if report and _under_torchrun():
            # torchrun takes any non-zero exit for a crash (and retries it with --max-restarts): a verdict is not one
            console.print(
                f"under torchrun this process exits 0 so the launcher does not restart it; the gate's exit code "
                f"({exc.exit_code}) comes from `edgedistill gate RUN_DIR` (docs/ci.md)",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(0) from None
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished stages are kept; run the same command again to resume")
        raise typer.Exit(130) from None
    if report:
        print_report(report)


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _stage_command(stages: tuple[str, ...]) -> Callable:
    def command(
        recipe: Path = RecipeArg,
        run_dir: Path | None = RunDirOpt,
        fresh: bool = typer.Option(False, "--fresh", help="ignore finished stages and redo everything"),
        set_: list[str] | None = SetOpt,
    ) -> None:
        from .config.load import load_recipe
        from .pipeline import compress

        _run(lambda: compress(load_recipe(recipe, set_ or []), run_dir, fresh=fresh, stages=stages, console=console))

    return command


app.command("compress", help="Run every stage: select, distill, export, validate.")(
    _stage_command(("select", "distill", "export", "validate"))
)
app.command("select", help="Score the pool with the teacher and keep a class-balanced subset.")(_stage_command(("select",)))
app.command("distill", help="Train the student on the selection (runs select first if needed).")(_stage_command(("distill",)))
app.command("export", help="Export the student to ONNX with a parity check.")(_stage_command(("export",)))


ModelOpt = "MODEL.onnx mode"


@app.command("validate")
def validate_command(
    recipe: Path | None = typer.Argument(
        None,
        metavar="[RECIPE|MODEL.onnx]",
        show_default=False,
        help="recipe YAML file (default: the recipe recorded in --run-dir), or any ONNX classifier to gate on its own",
    ),
    run_dir: Path | None = RunDirOpt,
    set_: list[str] | None = SetOpt,
    target: list[str] | None = typer.Option(None, "--target", help="validate only this target (repeatable)"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore finished stages and redo everything"),
    runtime: str | None = typer.Option(None, "--runtime", help=f"{', '.join(RUNTIMES)} (default: onnxruntime)", rich_help_panel=ModelOpt),
    budget: list[str] | None = typer.Option(None, "--budget", help="p99_ms=2 or min_accuracy=0.9 (repeatable)", rich_help_panel=ModelOpt),
    labeled: Path | None = typer.Option(None, "--labeled", help="folder with one subfolder of images per class", rich_help_panel=ModelOpt),
    mean: str | None = typer.Option(
        None,
        "--mean",
        help="per-channel mean of pixels/255, e.g. 0.485,0.456,0.406 (default: the model's metadata)",
        rich_help_panel=ModelOpt,
    ),
    std: str | None = typer.Option(None, "--std", help="per-channel std, like --mean", rich_help_panel=ModelOpt),
    out_dir: Path | None = typer.Option(
        None, "--out", help="where report.json goes (default: runs/validate-<model name>)", rich_help_panel=ModelOpt
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=0, help="onnxruntime intra-op threads (0: its default)", rich_help_panel=ModelOpt
    ),
    iterations: int | None = typer.Option(
        None, "--iterations", min=1, help="timed calls at batch 1 (default 200)", rich_help_panel=ModelOpt
    ),
    warmup: int | None = typer.Option(None, "--warmup", min=0, help="untimed calls first (default 20)", rich_help_panel=ModelOpt),
    precision: str | None = typer.Option(
        None, "--precision", help="tensorrt/trtexec engine: fp32, fp16 or int8 (a Q/DQ model builds as int8)", rich_help_panel=ModelOpt
    ),
    provider: list[str] | None = typer.Option(
        None, "--provider", help="onnxruntime execution provider: cpu, cuda, tensorrt (repeatable, in order)", rich_help_panel=ModelOpt
    ),
    trtexec: str | None = typer.Option(
        None, "--trtexec", help="trtexec binary (default: PATH, then /usr/src/tensorrt/bin/trtexec)", rich_help_panel=ModelOpt
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="use at most this many labeled images", rich_help_panel=ModelOpt),
    duration: float | None = typer.Option(
        None, "--duration", min=0.01, help="time batch 1 for this many seconds instead of --iterations calls", rich_help_panel=ModelOpt
    ),
) -> None:
    """Measure accuracy and latency on each target and check the budgets.

    Re-gates an existing run without redoing select, distill or export: `validate --run-dir DIR` reuses the recipe
    the run recorded; add --set targets.0.budget.p99_ms=2 or --target NAME to change what is checked.

    Gates any ONNX classifier too:
    `validate MODEL.onnx --runtime onnxruntime --budget p99_ms=2 --budget min_accuracy=0.9 --labeled FOLDER`.

    Exit codes: 0 all budgets met, 2 bad input, 3 a budget failed, 4 a target unavailable.
    """
    model_options = {
        "--runtime": runtime,
        "--budget": budget,
        "--labeled": labeled,
        "--mean": mean,
        "--std": std,
        "--out": out_dir,
        "--threads": threads,
        "--iterations": iterations,
        "--warmup": warmup,
        "--precision": precision,
        "--provider": provider,
        "--trtexec": trtexec,
        "--limit": limit,
        "--duration": duration,
    }
    if recipe is not None and recipe.suffix.lower() == ".onnx":
        recipe_options = [
            name for name, value in (("--run-dir", run_dir), ("--set", set_), ("--target", target), ("--fresh", fresh)) if value
        ]
        if recipe_options:
            _fail(f"{', '.join(recipe_options)} apply to a recipe; {recipe} is validated with --runtime, --budget and --labeled")
        _validate_model(
            recipe,
            runtime or "onnxruntime",
            budget or [],
            labeled,
            mean,
            std,
            out_dir,
            threads or 0,
            20 if warmup is None else warmup,
            iterations or 200,
            precision or "fp32",
            provider,
            trtexec,
            limit,
            duration,
        )
        return
    given = [name for name, value in model_options.items() if value]
    if given:
        _fail(f"{', '.join(given)} apply to `validate MODEL.onnx`; a recipe sets them per target (use --set)")
    from .config.load import recipe_for_regate
    from .pipeline import compress

    _run(
        lambda: compress(
            recipe_for_regate(run_dir, recipe, set_ or [], target or []), run_dir, fresh=fresh, stages=("validate",), console=console
        )
    )


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _floats(option: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise BadInput(f"{option} {text!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406") from None


def _budget(items: list[str]):
    from pydantic import ValidationError

    from .config.schema import Budget

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in Budget.model_fields:
            raise BadInput(f"--budget {item!r}: expected NAME=VALUE with NAME one of {', '.join(Budget.model_fields)}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise BadInput(f"--budget {item!r}: {raw!r} is not a number") from None
    try:
        return Budget(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise BadInput(f"--budget {err['loc'][0]}: {err['msg']}") from None


def _validate_model(
    model: Path,
    runtime: str,
    budget: list[str],
    labeled: Path | None,
    mean: str | None,
    std: str | None,
    out_dir: Path | None,
    threads: int,
    warmup: int,
    iterations: int,
    precision: str,
    providers: list[str] | None,
    trtexec: str | None,
    limit: int | None,
    duration: float | None,
) -> None:
    from .results.report import exit_code, verdict_message
    from .stages.validate import validate_model_file

    try:
        if not model.is_file():
            raise BadInput(f"{model}: file not found")
        out_dir = out_dir or Path("runs") / f"validate-{model.stem}"
        report = validate_model_file(
            model,
            runtime,
            _budget(budget),
            out_dir,
            labeled,
            _floats("--mean", mean),
            _floats("--std", std),
            threads,
            warmup,
            iterations,
            precision,
            providers,
            trtexec,
            limit,
            duration,
        )
    except EdgeDistillError as exc:
        _fail(str(exc), exc.exit_code)
    result = report["targets"][0]
    print_model_report(report)
    for v in result["verdicts"]:
        if not v["passed"]:
            out.print(f"[red]{verdict_message(v)}", highlight=False)
    if result["error"]:
        console.print(f"[bold red]error:[/] {result['error']}", highlight=False, soft_wrap=True)
    out.print(f"report: {out_dir / 'report.json'}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(report))


def _latency_cells(latency: dict | None) -> list[str]:
    lat = latency or {}
    noisy = " [yellow]noisy" if lat.get("noisy") else ""
    return [_fmt(lat.get("p50_ms"), "{:.3f}"), _fmt(lat.get("p99_ms"), "{:.3f}"), _fmt(lat.get("cv"), "{:.2f}") + noisy]


def print_model_report(report: dict) -> None:
    """One row for a model validated on its own: accuracy, latency at batch 1 with its CV, throughput."""
    t = report["targets"][0]
    table = Table(title=f"{Path(report['model']['path']).name} on {report['eval']['name']} ({report['eval']['samples']} images)")
    throughput = t["throughput"] or {}
    for col in ("runtime", "prec", "acc", "p50 ms", "p99 ms", "CV", f"img/s b{throughput.get('batch', '-')}", "budgets"):
        table.add_column(col, justify="left" if col in ("runtime", "prec", "budgets") else "right")
    table.add_row(
        t["runtime"],
        t.get("precision", "fp32"),
        _fmt(t["accuracy"], "{:.2%}"),
        *_latency_cells(t["latency"]),
        _fmt(throughput.get("throughput_per_s"), "{:,.0f}"),
        _verdict_cell(t),
    )
    out.print(table)


@app.command("quantize")
def quantize_command(
    model: Path = typer.Argument(..., metavar="MODEL.onnx", help="fp32 ONNX image classifier", show_default=False),
    calib: Path = typer.Option(..., "--calib", help="folder of calibration images (searched recursively)", show_default=False),
    out_path: Path | None = typer.Option(
        None, "--out", help="output file (default: MODEL.int8.onnx, or MODEL.int8.trt.onnx with --for-tensorrt)"
    ),
    method: str = typer.Option("minmax", "--method", help="calibration: minmax, entropy or percentile"),
    samples: int = typer.Option(512, "--samples", min=1, help="calibration images to use at most"),
    for_tensorrt: bool = typer.Option(False, "--for-tensorrt", help="symmetric INT8 that TensorRT's ONNX parser accepts"),
    mean: str | None = typer.Option(None, "--mean", help="per-channel mean of pixels/255 (default: the model's metadata)"),
    std: str | None = typer.Option(None, "--std", help="per-channel std (default: the model's metadata)"),
    seed: int = typer.Option(0, "--seed", help="which calibration images a --samples limit picks"),
) -> None:
    """Quantize any ONNX classifier to INT8 (Q/DQ), calibrated on a folder of images.

    Input size and channels come from the model's input; mean/std from edgedistill's metadata or --mean/--std.
    """
    from .inputs.images import sample_folder
    from .stages.quantize import quantize_int8
    from .stages.validate import model_input_spec

    def work() -> None:
        spec, _ = model_input_spec(model, _floats("--mean", mean), _floats("--std", std))
        target = out_path or model.with_name(model.name.removesuffix(".onnx") + (".int8.trt.onnx" if for_tensorrt else ".int8.onnx"))
        if not calib.is_dir():
            raise BadInput(f"--calib {calib}: not a directory of calibration images")
        images, skipped = sample_folder(calib, spec, samples, seed)
        if not len(images):
            raise BadInput(f"--calib {calib}: no readable images ({len(skipped)} unreadable)")
        result = quantize_int8(
            model, target, images, spec.mean, spec.std, method=method, max_samples=samples, seed=seed, for_tensorrt=for_tensorrt
        )
        note = f", {len(skipped)} unreadable files skipped" if skipped else ""
        out.print(
            f"{result.path}: INT8 ({method}, {result.calibration_samples} calibration images{note}), "
            f"{result.size_bytes / 1024:.0f} KiB from {result.fp32_size_bytes / 1024:.0f} KiB",
            highlight=False,
            soft_wrap=True,
        )

    _run(work)


@app.command("doctor")
def doctor_command(as_json: bool = typer.Option(False, "--json", help="print the facts as JSON")) -> None:
    """What this machine can run: runtimes, ONNX Runtime execution providers, GPUs, TensorRT, trtexec, CPU."""
    from .doctor import collect_facts, facts_table

    facts = collect_facts()
    if as_json:
        sys.stdout.write(json.dumps(facts, indent=2, default=str) + "\n")
    else:
        out.print(facts_table(facts))


@app.command("report")
def report_command(run_dir: Path = typer.Argument(..., help="run directory with a report.json", show_default=False)) -> None:
    """Rebuild RUN_DIR/report.html (and junit.xml, summary.md) from the run's files."""
    from .results.gate import GATE_FILES, write_gate_files
    from .results.html import write_report_html
    from .results.rundir import RunDir

    def rebuild() -> None:
        run = RunDir(run_dir)
        if not (run_dir / "report.json").is_file():
            raise BadInput(f"{run_dir}: no report.json; run `edgedistill validate` (or compress) for this run first")
        run.open()
        try:
            run.artifact("report.html", *GATE_FILES)
            path = write_report_html(run_dir)
            write_gate_files(run_dir, json.loads((run_dir / "report.json").read_text()))
        finally:
            run.close()
        out.print(str(path), highlight=False, soft_wrap=True)

    _run(rebuild)


@app.command("gate")
def gate_command(run_dir: Path = typer.Argument(..., help="run directory of a finished run", show_default=False)) -> None:
    """Exit with the verdict of a finished run, as compress would have: 0 all budgets met, 3 a budget failed, 4 a target
    unavailable (2 when there is no report). The CI gate step after `torchrun ... compress`, which always exits 0."""
    from .results.report import exit_code

    try:
        report = json.loads((run_dir / "report.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"{run_dir}: no readable report.json ({type(exc).__name__}); run compress (or validate) for it first")
    print_report(report)
    raise typer.Exit(exit_code(report))


@app.command("recipe-schema")
def recipe_schema_command() -> None:
    """Print the recipe's JSON Schema (for editor completion)."""
    from .extensions import recipe_schema

    sys.stdout.write(json.dumps(recipe_schema(), indent=2) + "\n")


def main() -> None:
    app()
