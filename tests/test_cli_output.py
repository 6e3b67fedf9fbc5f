"""What the command line prints where nobody watches a terminal: plain progress lines in a CI log, --quiet, what-if
re-gates that do not stick, and help without Python type names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from edgedistill.cli import app
from tests.remote_run import make_teacher

COMMANDS = ("compress", "select", "distill", "export", "validate", "quantize", "doctor", "report", "gate", "recipe-schema", "report-schema")


def small_recipe(folder: Path) -> Path:
    recipe = {
        "name": "ci-lines",
        "teacher": {
            "arch": "lenet5",
            "weights": str(make_teacher(folder / "teacher.safetensors")),
            "num_classes": 10,
            "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]},
        },
        "pool": [{"builtin": "sklearn-digits", "count": 400}],
        "select": {"per_class": 20, "batch_size": 20},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 2, "batch_size": 32, "augment": None},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def edgedistill_piped(*args: str) -> subprocess.CompletedProcess:
    """The CLI as a CI job runs it: stdout and stderr are pipes, not a terminal."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edgedistill", *args], capture_output=True, text=True, timeout=300, env=env)


def test_progress_is_plain_lines_on_stdout_when_piped_and_quiet_silences_it(tmp_path):
    recipe = small_recipe(tmp_path)
    done = edgedistill_piped("distill", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    scoring = [line for line in lines if line.startswith("select: scoring pool: ")]
    assert len(scoring) >= 10 and scoring[-1].startswith("select: scoring pool: 400/400 (100%) after ")  # a line per tenth
    epochs = [line for line in lines if line.startswith("distill: ") and "epoch" in line]
    assert any("; epoch 1 loss " in line for line in epochs) and any("; epoch 2 loss " in line for line in epochs)
    assert "\x1b" not in done.stdout and "━" not in done.stdout + done.stderr  # no escape codes, no bars
    layers = json.loads((tmp_path / "run" / "student.json").read_text())["feature_layers"]
    assert layers == {"teacher": "fc (its input)", "student": "fc (its input)"}

    runner = CliRunner()  # not a terminal either
    quiet = runner.invoke(app, ["select", str(recipe), "--run-dir", str(tmp_path / "quiet"), "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == "", quiet.output
    assert (tmp_path / "quiet" / "selected.npz").is_file()
    failed = runner.invoke(app, ["select", str(recipe), "--quiet", "--set", "select.per_clas=5"], terminal_width=2000)
    assert failed.exit_code == 2
    assert failed.output.startswith("error: --set select.per_clas=5: select.per_clas: unknown key; did you mean 'per_class'?")


def test_what_if_regate_applies_once_unless_saved(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    recorded = (run / "run.json").read_text()
    runner = CliRunner()
    strict = ["validate", "--run-dir", str(run), "--target", "cpu", "--set", "targets.0.budget.min_accuracy=1"]
    result = runner.invoke(app, strict)
    assert result.exit_code == 3, result.output
    assert (run / "run.json").read_text() == recorded  # the next plain re-gate uses the recipe the run was made with
    plain = runner.invoke(app, ["validate", "--run-dir", str(run), "--target", "cpu", "--quiet"])
    assert plain.exit_code == 0, plain.output
    assert plain.output.strip().splitlines() == ["gate: all budgets met"]  # --quiet: the verdict alone
    refused = runner.invoke(app, [*strict, "--save"])  # --target is never saved
    assert refused.exit_code == 2 and "drop --save or --target" in refused.output, refused.output
    saved = runner.invoke(app, ["validate", "--run-dir", str(run), "--set", "targets.0.budget.min_accuracy=1", "--save"])
    assert saved.exit_code == 3, saved.output
    assert json.loads((run / "run.json").read_text())["recipe"]["targets"][0]["budget"]["min_accuracy"] == 1
    again = runner.invoke(app, ["validate", "--run-dir", str(run), "--target", "cpu", "--quiet"])
    assert again.exit_code == 3 and "min_accuracy" in again.output, again.output
    model_mode = runner.invoke(app, ["validate", str(run / "student.onnx"), "--save"])
    assert model_mode.exit_code == 2 and "--save apply to a recipe" in model_mode.output


def test_help_names_values_in_words_not_python_types():
    runner = CliRunner()
    for command in ("", *COMMANDS):
        result = runner.invoke(app, [command, "--help"] if command else ["--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        for internal in ("<bool>", "<str>", "<path>", "<int", "<float", "<list[", "{recipe}", "{run_dir}", "run_dir"):
            assert internal not in result.output, (command, internal, result.output)
    compress = runner.invoke(app, ["compress", "--help"], terminal_width=200).output
    assert "compress [OPTIONS] RECIPE" in compress and "--set" in compress and "KEY=VALUE" in compress
    assert "--quiet" in compress
    schema = json.loads(runner.invoke(app, ["recipe-schema"]).output)
    assert all("title" not in section for section in schema["$defs"].values())  # no TeacherSpec, TargetSpec in editors


def tiny_onnx(folder: Path) -> Path:
    import torch

    from edgedistill.config.schema import InputSpec
    from edgedistill.models.factory import create_model
    from edgedistill.stages.export import export_onnx

    torch.manual_seed(0)
    spec = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])
    return export_onnx(create_model("lenet5_half", 10, 1).eval(), spec, folder / "a-model-with-a-rather-long-file-name.onnx")


def test_piped_output_is_never_wrapped_and_table_cells_are_whole(tmp_path):
    """A CI log is not an 80-column terminal: a line is one line, a table cell is whole (no "agr…")."""
    model = tiny_onnx(tmp_path)
    done = edgedistill_piped(
        "validate", str(model), "--iterations", "20", "--warmup", "1", "--budget", "p50_ms=1e-6", "--out", str(tmp_path / "o")
    )
    assert done.returncode == 3, done.stdout + done.stderr
    budget_lines = [line for line in done.stdout.splitlines() if ": p50_ms: measured " in line]
    assert len(budget_lines) == 1 and budget_lines[0].endswith(" ms)") and "median of 5 rounds" in budget_lines[0]
    assert "…" not in done.stdout + done.stderr
    report = {
        "name": "a-recipe-name-long-enough-to-matter",
        "eval": {"name": "builtin:mnist-heldout", "samples": 5000},
        "teacher": {"arch": "torchvision:resnet50"},
        "student": {"arch": "torchvision:mobilenet_v3_small"},
        "warnings": ["the student reached 11.00% teacher agreement, barely above chance (10.00% for 10 classes): it has not learned"],
        "targets": [
            {"name": "cpu-openvino-int8", "runtime": "openvino", "facts": {"cpu_model": "AMD EPYC 7B13 64-Core Processor"}, "verdicts": []}
        ],
        "deployment": {
            "rows": [
                {
                    "target": "cpu-openvino-int8",
                    "model": "student",
                    "precision": "int8",
                    "gated": False,
                    "error": "no INT8 model",
                    "accuracy": 0.9632,
                    "agreement": 0.9658,
                    "p50_ms": 0.031,
                    "p99_ms": 0.0495,
                    "throughput_per_s": 72990.0,
                    "bytes": 65536,
                    "speedup": 1.4,
                }
            ]
        },
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    script = f"import json; from edgedistill.cli import print_report; print_report(json.load(open({str(tmp_path / 'report.json')!r})))"
    printed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert printed.returncode == 0, printed.stderr
    assert "…" not in printed.stdout and "student int8 (not measured)" in printed.stdout and "agree" in printed.stdout
    assert any(
        line.startswith("warning: the student reached") and line.endswith("it has not learned") for line in printed.stdout.splitlines()
    )


def test_doctor_piped_cuts_no_cell():
    done = edgedistill_piped("doctor")
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    cpu = [line for line in done.stdout.splitlines() if "│ CPU " in line]
    assert len(cpu) == 1 and "OMP_NUM_THREADS=" in cpu[0]


def test_one_p99_per_model_in_summary_and_report(tmp_path):
    """A real measurement: the table's p99 and the budget line's p99 are one figure, the gate's median of rounds."""
    model = tiny_onnx(tmp_path)
    result = CliRunner().invoke(
        app, ["validate", str(model), "--iterations", "100", "--warmup", "2", "--budget", "p99_ms=10000", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    entry = json.loads((tmp_path / "o" / "report.json").read_text())["targets"][0]
    (verdict,) = entry["verdicts"]
    assert entry["latency"]["p99_ms"] == verdict["measured"] and "pooled" in entry["latency"]
    summary = (tmp_path / "o" / "summary.md").read_text()
    shown = f"{verdict['measured']:.4g}"
    assert f"| {shown} |" in summary and f"| p99_ms | {shown} ms |" in summary


def test_every_exit_code_is_documented_where_validate_and_gate_list_them():
    """Exit 5 (inconclusive) is in `gate --help`, validate's docs and the README's API section."""
    gate_help = CliRunner().invoke(app, ["gate", "--help"], terminal_width=200).output
    assert "5 a latency budget inconclusive" in " ".join(gate_help.split())
    root = Path(__file__).resolve().parents[1]
    assert "exits 0, 3, 4 or 5" in (root / "docs" / "scale.md").read_text()
    assert "4 (runtime unavailable) or 5 (a latency budget inconclusive" in (root / "docs" / "deploy.md").read_text()
    assert "`BudgetInconclusive`" in (root / "README.md").read_text()
