"""The thin command line on top of the pipeline stages."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args, get_origin

import typer
from rich import box
from rich.console import Console, ConsoleDimensions
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from .backends import RUNTIMES, runtimes_reading
from .config.schema import TargetSpec
from .errors import BadInput, EdgeDistillError
from .version import __version__


class _PlainArgument(TyperArgument):
    """Help names an argument by its metavar (RECIPE), without typer's Python type (<path>) or {braces}."""

    def display_type_rich(self, ctx) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required or name.startswith("[") else f"[{name}]"


class _PlainOption(TyperOption):
    """Help shows an option's metavar, or its kind of value (TEXT, PATH, INTEGER), never <bool> or <list[str]>."""

    KINDS = {str: "TEXT", Path: "PATH", int: "INTEGER", float: "NUMBER"}

    def display_type_rich(self, ctx) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if self.is_flag:
            return None
        annotation = self.type_descriptor.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        return self.KINDS.get(annotation, "VALUE")


def _plain_help(params: list) -> list:
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _PlainArgument
        elif type(param) is TyperOption:
            param.__class__ = _PlainOption
    return params


class _Command(TyperCommand):
    def get_params(self, ctx) -> list:
        return _plain_help(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx) -> list:
        return _plain_help(super().get_params(ctx))


class _App(typer.Typer):
    """Every command's help in plain words (_Command)."""

    def command(self, *args, cls: type[TyperCommand] = _Command, **kwargs):
        return super().command(*args, cls=cls, **kwargs)


app = _App(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Distill a trained image classifier into a small deployable model, without its training data.",
)
UNWRAPPED_WIDTH = 100_000


class _Console(Console):
    """Off a terminal (a CI log, a file, a pipe) nothing is wrapped or cut: rich would otherwise take 80 columns, break
    lines mid-sentence and cut table cells ("agr…"); in a terminal it fits the window as usual."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED_WIDTH, size.height)


console = _Console(stderr=True)
out = _Console()

RecipeArg = typer.Argument(..., metavar="RECIPE", help="recipe YAML file", show_default=False)
RunDirOpt = typer.Option(None, "--run-dir", metavar="DIR", help="where artifacts go (default: runs/NAME, with the recipe's name)")
SetOpt = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help="override a recipe value for this run, e.g. distill.epochs=5 or targets.0.budget.p99_ms=2 (repeatable)",
)
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress output; errors and the final verdict still print")


def _version(value: bool) -> None:
    if value:
        out.print(f"edgedistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version")) -> None:
    pass


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _verdict_cell(target) -> str:
    """unavailable, FAIL k/n, inconclusive k/n (exit 5), pass n/n, or - without budgets (a report's Target, or its dict)."""
    from .results.report import Target, target_verdict

    t = target if isinstance(target, Target) else Target.model_validate(target)
    state = target_verdict(t)
    count = sum(v.verdict == state for v in t.verdicts)
    return {
        "unavailable": "[red]unavailable",
        "fail": f"[red]FAIL {count}/{len(t.verdicts)}",
        "inconclusive": f"[yellow]inconclusive {count}/{len(t.verdicts)}",
        "pass": f"[green]pass {count}/{len(t.verdicts)}",
    }.get(state, "-")


def _print_gate_lines(report) -> None:
    """Every budget not passed, with its figures; what the noisy flag means where it is set; the gate's verdict."""
    from .results.report import as_report, exit_code, gate_headline, verdict_message

    r = as_report(report)
    for t in r.targets:
        if t.latency is not None and t.latency.noisy:
            out.print(
                f"[yellow]~ {t.name}: noisy: the rounds' median latency differed by {t.latency.round_spread or 0:.0%} (over 10%): "
                "the machine's speed changed while it was measured",
                highlight=False,
            )
        for v in t.verdicts:
            if v.verdict != "pass":
                out.print(f"[{'red' if v.verdict == 'fail' else 'yellow'}]{t.name}: {verdict_message(v)}", highlight=False)
    out.print(f"gate: {gate_headline(r)} (exit {exit_code(r)})", highlight=False)


def print_report(report) -> None:
    """A run's report (report.json's dict, or a Report): the deployment table per target, then the gate's lines."""
    from .results.plan import plan_of, print_plan
    from .results.report import Student, Teacher, as_report, deployment_rows, device_label, recommendation_lines, throughput_rows

    r = as_report(report)
    teacher, student = r.teacher or Teacher(), r.student or Student()
    out.print(
        f"[bold]{r.name}[/]: teacher {teacher.arch or '-'}, student {student.arch or '-'}, evaluated on "
        f"{r.eval.name} ({r.eval.samples} images). img/s: at the largest batch; speed: p50 latency "
        "against the teacher's on the same target; the gated model in bold",
        highlight=False,
    )
    rows = deployment_rows(r)
    for t in r.targets:
        table = Table(
            title=f"{t.name}: {t.runtime} on {device_label(t)}; gate {_verdict_cell(t)}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
        )
        for col in ("model", "acc", "agree", "p50 ms", "p99 ms", "img/s", "KiB", "speed"):
            table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
        for row in (row for row in rows if row.target == t.name):
            name = row.model if row.precision == "fp32" else f"{row.model} {row.precision}"
            table.add_row(
                f"[bold]{name}[/]" if row.gated else name + (" [yellow](not measured)" if row.error else ""),
                _fmt(row.accuracy, "{:.2%}"),
                _fmt(row.agreement, "{:.2%}"),
                _fmt(row.p50_ms, "{:.3g}"),
                _fmt(row.p99_ms, "{:.3g}"),
                _fmt(row.throughput_per_s, "{:,.0f}"),
                _fmt(row.bytes and row.bytes / 1024, "{:,.0f}"),
                _fmt(row.speedup, "{:.1f}x"),
            )
        out.print(table)
    for line in recommendation_lines(r):
        out.print(f"recommended: {line}", highlight=False)
    for warning in r.warnings:
        out.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    rates = throughput_rows(r)
    if rates:
        out.print(
            "throughput: " + ", ".join(f"{stage} {rate:,.0f} img/s ({ratio:.2f}x {ceiling})" for stage, rate, ceiling, _, ratio in rates),
            highlight=False,
        )
    if r.int8 is not None:
        q = r.int8
        out.print(
            f"INT8 student.int8.onnx ({q.method}, {q.calibration_samples} calibration images) on {q.runtime}: "
            f"{q.basis} {_fmt(q.int8, '{:.2%}')} vs fp32 {_fmt(q.fp32, '{:.2%}')} (drop {_fmt(q.drop and q.drop * 100, '{:.2f}')} "
            f"points), {(student.int8_onnx_bytes or 0) / 1024:.0f} KiB",
            highlight=False,
        )
    print_plan(out, plan_of(r))
    _print_gate_lines(r)


def _run(fn: Callable[[], dict | None], quiet: bool = False) -> None:
    """One line and a documented exit code for every expected failure; no traceback. `quiet`: the verdict in one
    line instead of the report's tables."""
    try:
        report = fn()
    except EdgeDistillError as exc:
        report = getattr(exc, "report", None)
        if report and not quiet:
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
    except OSError as exc:  # the machine's state, not a bug: one line naming the file and what to do (bad input)
        import errno

        fix = {
            errno.ENOSPC: "free space on that disk (or write elsewhere: --run-dir/--out), then run the same command again",
            errno.EDQUOT: "your disk quota is used up; free some of it (or write elsewhere: --run-dir/--out) and run again",
            errno.EROFS: "that file system is read-only; write elsewhere (--run-dir/--out)",
            errno.EACCES: "you may not write (or read) there; fix its permissions or use another path (--run-dir/--out)",
        }.get(exc.errno)
        if fix is None:
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        console.print(f"[bold red]error:[/] {where}{exc.strerror or exc}; {fix}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if report and quiet:
        from .results.report import gate_headline

        out.print(f"gate: {gate_headline(report)}", highlight=False)
    elif report:
        print_report(report)


def _pipeline_console(quiet: bool) -> Console:
    return _Console(stderr=True, quiet=True) if quiet else console


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _stage_command(stages: tuple[str, ...]) -> Callable:
    def command(
        recipe: Path = RecipeArg,
        run_dir: Path | None = RunDirOpt,
        fresh: bool = typer.Option(False, "--fresh", help="ignore finished stages and redo everything"),
        set_: list[str] | None = SetOpt,
        quiet: bool = QuietOpt,
        preflight: bool = typer.Option(
            False,
            "--preflight",
            help="only check, in seconds, what these stages need here and on every target (GPU, sources, host names, "
            "ssh login, remote Python, trtexec); one line per target and check; exit 0, 2 or 4 (docs/ci.md)",
        ),
    ) -> None:
        from .pipeline import compress
        from .recipe import load_recipe

        def work() -> dict | None:
            loaded = load_recipe(recipe, set_ or [])  # checked once, a misspelt --set value blamed on that option
            if preflight:
                from .stages.preflight import failure
                from .stages.preflight import preflight as checks_of

                checks = checks_of(loaded, stages)
                for check in checks:
                    if not quiet or not check.ok:
                        out.print(check.line(), highlight=False, soft_wrap=True, markup=False)
                if (error := failure(checks)) is not None:
                    raise error
                return None
            return compress(loaded, run_dir, fresh=fresh, stages=stages, console=_pipeline_console(quiet))

        _run(work, quiet)

    return command


app.command("compress", help="Run every stage: select, distill, export, validate.")(
    _stage_command(("select", "distill", "export", "validate"))
)
app.command("select", help="Score the pool with the teacher and keep a class-balanced subset.")(_stage_command(("select",)))
app.command("distill", help="Train the student on the selection (runs select first if needed).")(_stage_command(("distill",)))
app.command("export", help="Export the student to ONNX with a parity check.")(_stage_command(("export",)))


@app.command(
    "plan",
    help="Choose the student: time every candidate on every target as the gate does, keep those within every latency "
    "budget, probe the largest briefly and choose by teacher agreement; no distillation (docs/plan.md).",
)
def plan_command(
    recipe: Path = RecipeArg,
    run_dir: Path | None = RunDirOpt,
    fresh: bool = typer.Option(False, "--fresh", help="redo selection too (timings still come from the latency cache)"),
    set_: list[str] | None = SetOpt,
    quiet: bool = QuietOpt,
) -> None:
    from .pipeline import compress
    from .recipe import load_recipe

    def work() -> None:
        loaded = load_recipe(recipe, set_ or [])
        if not loaded.student.planned:
            raise BadInput(f"{recipe}: student names one arch; give student.candidates (or arch: auto) to plan")
        compress(loaded, run_dir, fresh=fresh, stages=("plan",), console=_pipeline_console(quiet))
        if quiet:
            chosen = json.loads(((run_dir or Path("runs") / loaded.name) / "plan_choice.json").read_text())
            out.print(f"plan: chosen {chosen['arch']}", highlight=False)

    _run(work, quiet)


ModelOpt = "MODEL.onnx mode"


def _default(field: str) -> object:
    """A target setting's default, from the schema, or a runtime's option's from the first row that reads it: the help
    of the MODEL.onnx options shows what an unset one is."""
    if field in TargetSpec.model_fields:
        return TargetSpec.model_fields[field].default
    return runtimes_reading(field)[0].options.model_fields[field].default


def _readers(option: str) -> str:
    """The runtimes that read a target option, from the table: `onnxruntime, openvino or litert`."""
    names = [r.name for r in runtimes_reading(option)]
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


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
    save: bool = typer.Option(
        False, "--save", help="keep the --set overrides in the run's recorded recipe (default: they apply to this invocation only)"
    ),
    quiet: bool = QuietOpt,
    runtime: str | None = typer.Option(
        None, "--runtime", help=f"{', '.join(RUNTIMES)} (default: {_default('runtime')})", rich_help_panel=ModelOpt
    ),
    budget: list[str] | None = typer.Option(
        None,
        "--budget",
        help="p50_ms, p90_ms, p99_ms, mean_ms, min_accuracy or max_unreadable, e.g. p99_ms=2 (repeatable)",
        rich_help_panel=ModelOpt,
    ),
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
        None,
        "--threads",
        min=0,
        help=f"intra-op threads of {_readers('threads')} (default {_default('threads')}; 0: all cores)",
        rich_help_panel=ModelOpt,
    ),
    iterations: int | None = typer.Option(
        None,
        "--iterations",
        min=1,
        help=f"timed calls at batch 1, all rounds together (default {_default('iterations')})",
        rich_help_panel=ModelOpt,
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", min=0, help=f"untimed calls before each round (default {_default('warmup')})", rich_help_panel=ModelOpt
    ),
    precision: str | None = typer.Option(
        None,
        "--precision",
        help=f"{'/'.join(r.name for r in RUNTIMES.values() if r.builds_engine)} engine: fp32, fp16 or int8 "
        f"(default {_default('precision')}; a Q/DQ model builds as int8)",
        rich_help_panel=ModelOpt,
    ),
    provider: list[str] | None = typer.Option(
        None,
        "--provider",
        help=f"{_readers('providers')} execution provider: cpu, cuda, tensorrt (repeatable, in order)",
        rich_help_panel=ModelOpt,
    ),
    trtexec: str | None = typer.Option(
        None,
        "--trtexec",
        help=f"the trtexec binary of runtime {_readers('trtexec')} (default: {_default('trtexec')}, then PATH)",
        rich_help_panel=ModelOpt,
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="use at most this many labeled images", rich_help_panel=ModelOpt),
    duration: float | None = typer.Option(
        None, "--duration", min=0.01, help="time batch 1 for this many seconds instead of --iterations calls", rich_help_panel=ModelOpt
    ),
    rounds: int | None = typer.Option(
        None,
        "--rounds",
        min=1,
        max=100,
        help="split the timed calls into this many rounds; latency budgets are judged on their median and interval "
        f"(default {_default('rounds')}; for a recipe, overrides every validated target's rounds)",
    ),
    on_inconclusive: str | None = typer.Option(
        None,
        "--on-inconclusive",
        metavar="fail|pass|'retry N'",
        help="what an inconclusive latency verdict becomes: fail, pass, or 'retry N' (re-time up to N times with twice "
        f"the rounds, then exit 5); overrides every target's on_inconclusive (default: {_default('on_inconclusive')})",
    ),
) -> None:
    """Measure accuracy and latency on each target and check the budgets.

    Re-gates an existing run without redoing select, distill or export: `validate --run-dir DIR` reuses the recipe the run recorded.

    --set targets.0.budget.p99_ms=2 or --target NAME make a what-if: only validation runs (it never retrains or re-exports),
    its report goes to RUN_DIR/what-if/, and the run's recipe, artifacts and the verdict `gate` reports stay as they were
    (--save keeps --set in the run instead). --rounds N alone re-measures the run itself with more rounds.

    Gates any ONNX classifier too:
    `validate MODEL.onnx --runtime onnxruntime --budget p99_ms=2 --budget min_accuracy=0.9 --labeled FOLDER`.

    Exit codes: 0 all budgets met (or nothing gated), 2 bad input, 3 a budget failed, 4 a target unavailable,
    5 a latency budget inconclusive (retry with more --rounds on a quieter machine).
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
    if on_inconclusive is not None:
        _check_on_inconclusive(on_inconclusive)
    if recipe is not None and recipe.suffix.lower() == ".onnx":
        recipe_options = [
            name
            for name, value in (("--run-dir", run_dir), ("--set", set_), ("--target", target), ("--fresh", fresh), ("--save", save))
            if value
        ]
        if recipe_options:
            _fail(f"{', '.join(recipe_options)} apply to a recipe; {recipe} is validated with --runtime, --budget and --labeled")
        options = {
            "runtime": runtime,
            "threads": threads,
            "warmup": warmup,
            "iterations": iterations,
            "rounds": rounds,
            "on_inconclusive": on_inconclusive,
            "precision": precision,
            "providers": provider or None,
            "trtexec": trtexec,
        }
        given = {key: value for key, value in options.items() if value is not None}  # the rest: the schema's defaults
        _validate_model(recipe, given, budget or [], labeled, mean, std, out_dir, limit, duration, quiet=quiet)
        return
    given = [name for name, value in model_options.items() if value]
    if given:
        _fail(f"{', '.join(given)} apply to `validate MODEL.onnx`; a recipe sets them per target (use --set)")
    from .pipeline import regate

    def work() -> dict | None:
        return regate(
            run_dir,
            recipe,
            set_ or [],
            target or [],
            {"on_inconclusive": on_inconclusive} if on_inconclusive is not None else None,
            rounds=rounds,
            save=save,
            fresh=fresh,
            console=_pipeline_console(quiet),
        )

    _run(work, quiet)


def _check_on_inconclusive(policy: str) -> None:
    from pydantic import ValidationError

    from .config.schema import TargetSpec

    try:
        TargetSpec(name="-", on_inconclusive=policy)
    except ValidationError:
        _fail(f"--on-inconclusive {policy!r}: use fail, pass or 'retry N' with N from 0 to 10 (e.g. --on-inconclusive 'retry 2')")


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
    from .errors import did_you_mean

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in Budget.model_fields:
            raise BadInput(
                f"--budget {item!r}: expected NAME=VALUE with NAME one of {', '.join(Budget.model_fields)}"
                + (did_you_mean(key, list(Budget.model_fields)) if sep else "")
            )
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
    target: dict,
    budget: list[str],
    labeled: Path | None,
    mean: str | None,
    std: str | None,
    out_dir: Path | None,
    limit: int | None,
    duration: float | None,
    quiet: bool = False,
) -> None:
    """`validate MODEL.onnx`: `target` holds the target options given (TargetSpec's fields); the rest are the schema's."""
    from .results.report import exit_code, gate_error
    from .stages.validate import validate_model_file

    try:
        if not model.is_file():
            raise BadInput(f"{model}: file not found")
        out_dir = out_dir or Path("runs") / f"validate-{model.stem}"
        report = validate_model_file(
            model,
            out_dir,
            {**target, "budget": _budget(budget)},
            labeled=labeled,
            mean=_floats("--mean", mean),
            std=_floats("--std", std),
            limit=limit,
            duration_s=duration,
        )
    except EdgeDistillError as exc:
        _fail(str(exc), exc.exit_code)
    if not quiet:
        print_model_report(report)
    _print_gate_lines(report)
    error = gate_error(report)
    if error is not None:
        console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    out.print(f"report: {out_dir / 'report.json'}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code(report))


def _latency_cells(lat) -> list[str]:
    """p50, p99 (marked ~ when noisy) and CV of a report's Latency."""
    noisy = "[yellow]~" if lat.noisy else ""  # explained under the table (_print_gate_lines)
    return [_fmt(lat.p50_ms, "{:.3f}") + noisy, _fmt(lat.p99_ms, "{:.3f}") + noisy, _fmt(lat.cv, "{:.2f}")]


def print_model_report(report) -> None:
    """One row for a model validated on its own: accuracy, latency at batch 1 with its CV, throughput."""
    from .results.report import Latency, Throughput, as_report

    r = as_report(report)
    t = r.targets[0]
    model = Path(r.model.path).name if r.model is not None and r.model.path else r.name
    table = Table(title=f"{model} on {r.eval.name} ({r.eval.samples} images)")
    throughput = t.throughput or Throughput()
    for col in ("runtime", "prec", "acc", "p50 ms", "p99 ms", "CV", f"img/s b{throughput.batch or '-'}", "budgets"):
        table.add_column(col, justify="left" if col in ("runtime", "prec", "budgets") else "right")
    table.add_row(
        t.runtime,
        t.precision,
        _fmt(t.accuracy, "{:.2%}"),
        *_latency_cells(t.latency or Latency()),
        _fmt(throughput.throughput_per_s, "{:,.0f}"),
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
    force: bool = typer.Option(False, "--force", help="replace the output file if it exists (default: refuse)"),
) -> None:
    """Quantize any ONNX classifier to INT8 (Q/DQ), calibrated on a folder of images.

    Input size and channels come from the model's input; mean/std from edgedistill's metadata or --mean/--std.
    An existing output file is never replaced without --force.
    """
    from . import quantize

    def work() -> None:
        settings = {"method": method, "samples": samples, "seed": seed, "for_tensorrt": for_tensorrt}
        settings |= {"mean": _floats("--mean", mean), "std": _floats("--std", std)}
        result = quantize(model, calib, out_path, settings, force=force)
        skipped = result["unreadable"]
        note = f", {len(skipped)} unreadable files skipped" if skipped else ""
        out.print(
            f"{result['path']}: INT8 ({method}, {result['calibration_samples']} calibration images{note}), "
            f"{result['size_bytes'] / 1024:.0f} KiB from {result['fp32_size_bytes'] / 1024:.0f} KiB",
            highlight=False,
            soft_wrap=True,
        )

    _run(work)


@app.command("doctor")
def doctor_command(as_json: bool = typer.Option(False, "--json", help="print the facts as JSON")) -> None:
    """What this machine can run: every runtime of the table and the parts its probe reports, GPUs, plugins, CPU."""
    from .doctor import collect_facts, facts_table

    facts = collect_facts()
    if as_json:
        sys.stdout.write(json.dumps(facts, indent=2, default=str) + "\n")
    else:
        out.print(facts_table(facts))


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="run directory with a report.json", show_default=False),
) -> None:
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
def gate_command(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="run directory of a finished run", show_default=False),
) -> None:
    """Exit with the verdict of the run's last complete validation, as compress would have: 0 all budgets met, 3 a
    budget failed, 4 a target unavailable, 5 a latency budget inconclusive; 2 when there is none for the recipe and the
    files as they are now (a file changed, or a rerun stopped before it validated). The CI gate step after
    `torchrun ... compress`, which always exits 0."""
    from .pipeline import gate_report
    from .results.report import exit_code

    try:
        report = gate_report(run_dir)
    except EdgeDistillError as exc:
        _fail(str(exc), exc.exit_code)
    if report.model is not None:
        print_model_report(report)
        _print_gate_lines(report)
    else:
        print_report(report)
    raise typer.Exit(exit_code(report))


@app.command("recipe-schema")
def recipe_schema_command() -> None:
    """Print the recipe's JSON Schema (for editor completion)."""
    from .extensions import recipe_schema

    sys.stdout.write(json.dumps(recipe_schema(), indent=2) + "\n")


@app.command("report-schema")
def report_schema_command() -> None:
    """Print report.json's JSON Schema (its fields, for CI scripts that read it; docs/ci.md)."""
    from .results.report import report_schema

    sys.stdout.write(json.dumps(report_schema(), indent=2) + "\n")


def main() -> None:
    app()
