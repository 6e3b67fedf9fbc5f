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

COMMANDS = ("compress", "select", "distill", "export", "validate", "quantize", "doctor", "report", "gate", "recipe-schema")


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
    saved = runner.invoke(app, [*strict, "--save"])
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
