"""A gate that is never stale: a rerun redoes a stage whose files changed under the same path and says why, `gate`
judges only the last complete validation of the recipe and the files as they are now, and a what-if re-validates
without touching the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.fingerprint import paths_fingerprint, tree_fingerprint
from tests.remote_run import make_teacher


def _digits(folder: Path, per_class: int, offset: int = 0) -> None:
    """sklearn's 8x8 digits as 28x28 PNG files in one subfolder per class."""
    data = load_builtin("sklearn-digits")
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(data.labels == c)[offset : offset + per_class]):
            Image.fromarray(data.images[index].squeeze()).resize((28, 28)).save(folder / str(c) / f"{i:03d}.png")


def _recipe(folder: Path) -> Path:
    recipe = {
        "name": "stale",
        "teacher": {
            "arch": "lenet5",
            "weights": "teacher.safetensors",
            "num_classes": 10,
            "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]},
        },
        "pool": [{"folder": "pool"}],
        "select": {"per_class": 8, "batch_size": 64},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 16, "augment": None},
        "eval": {"labeled": "eval"},
        "export": {"int8": {"enabled": False}, "teacher": False},
        "targets": [{"name": "cpu", "threads": 1, "warmup": 1, "iterations": 10, "budget": {"min_accuracy": 0.0, "p99_ms": 1000.0}}],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished compress of a tiny folder-pool recipe; tests work on copies (copytree keeps mtimes)."""
    folder = tmp_path_factory.mktemp("stale")
    make_teacher(folder / "teacher.safetensors")
    _digits(folder / "pool", 30)
    _digits(folder / "eval", 10, offset=60)
    recipe = _recipe(folder)
    result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(folder / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A private copy of the recipe's folder and run; run.json is pointed at the copy's recipe folder."""
    folder = Path(shutil.copytree(finished, tmp_path / "work", symlinks=True))
    run_json = folder / "run" / "run.json"
    recorded = json.loads(run_json.read_text())
    recorded["recipe_dir"] = str(folder)
    run_json.write_text(json.dumps(recorded))
    return folder


def gate(folder: Path):
    return CliRunner().invoke(app, ["gate", str(folder / "run")])


def compress(folder: Path, *extra: str):
    return CliRunner().invoke(app, ["compress", str(folder / "recipe.yaml"), "--run-dir", str(folder / "run"), *extra])


def _replace_class(folder: Path, old: str, new: str) -> None:
    """Every image of class `old` replaced, same names, by images of class `new`: the audit's silent case."""
    for target, source in zip(sorted((folder / old).iterdir()), sorted((folder / new).iterdir())):
        shutil.copyfile(source, target)


def _overwrite_teacher(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "teacher.safetensors"))
    save_file({k: (v.flip(0) if k.endswith("fc.weight") else v) for k, v in weights.items()}, str(folder / "teacher.safetensors"))


def _add_pool_images(folder: Path) -> None:
    for i in range(3):
        shutil.copyfile(folder / "pool" / "1" / "000.png", folder / "pool" / "1" / f"extra{i}.png")


# changed file -> (the first stage redone, what the rerun says, what gate says)
CHANGES = [
    (lambda f: _replace_class(f / "eval", "3", "7"), "validate", "eval.labeled changed: 10 files modified"),
    (_overwrite_teacher, "select", "teacher.weights changed"),
    (_add_pool_images, "select", "pool.0 changed: 3 files added"),
]


@pytest.mark.parametrize("change,stage,why", CHANGES, ids=["eval-images", "teacher-weights", "pool-images"])
def test_a_file_changed_under_the_same_path_stales_the_gate_and_the_rerun_redoes_it(run, change, stage, why):
    assert gate(run).exit_code == 0
    change(run)
    stale = gate(run)
    assert stale.exit_code == 2, stale.output
    assert f"{stage} is out of date ({why}" in stale.output and stale.output.count("error:") == 1
    rerun = compress(run)
    assert rerun.exit_code == 0, rerun.output
    assert f"{stage}: redone: {why}" in rerun.output
    assert f"{stage}: up to date, skipped" not in rerun.output
    assert gate(run).exit_code == 0


def test_the_rerun_scores_the_new_eval_images(run):
    before = json.loads((run / "run" / "report.json").read_text())["teacher"]["accuracy"]
    _replace_class(run / "eval", "3", "7")
    assert compress(run).exit_code == 0
    after = json.loads((run / "run" / "report.json").read_text())["teacher"]["accuracy"]
    assert after < before  # the class-3 folder now holds sevens: the teacher is wrong on all of them


def test_unchanged_files_are_skipped(run):
    result = compress(run)
    assert result.exit_code == 0, result.output
    for stage in ("select", "distill", "export"):
        assert f"{stage}: up to date, skipped" in result.output


def test_a_stopped_rerun_with_a_stricter_budget_leaves_no_gate(run):
    """The rerun records its recipe first; killed before validate, the old pass is not the gate's verdict."""
    recorded = json.loads((run / "run" / "run.json").read_text())
    recorded["recipe"]["targets"][0]["budget"]["p99_ms"] = 0.0001  # what a rerun with a stricter budget records first
    (run / "run" / "run.json").write_text(json.dumps(recorded))
    result = gate(run)
    assert result.exit_code == 2 and "validate is out of date (the recipe's targets changed)" in result.output


def test_what_if_never_changes_the_run(run):
    state = {p: p.stat().st_mtime_ns for p in (run / "run").rglob("*") if p.is_file() and p.name != ".edgedistill-run"}
    result = CliRunner().invoke(
        app, ["validate", "--run-dir", str(run / "run"), "--set", "targets.0.budget.p99_ms=0.00001", "--set", "eval.limit=20"]
    )
    assert result.exit_code == 3, result.output
    assert "up to date" not in result.output and "redone" not in result.output
    what_if = json.loads((run / "run" / "what-if" / "report.json").read_text())
    assert what_if["eval"]["samples"] == 20 and not what_if["passed"]
    assert {p: p.stat().st_mtime_ns for p in state} == state  # nothing the run had was rewritten (the marker lists what-if/)
    assert gate(run).exit_code == 0  # the gate still judges the saved recipe's last validation


def test_what_if_with_a_target_keeps_every_target_of_the_recipe(run):
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run / "run"), "--target", "cpu", "--rounds", "2"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((run / "run" / "run.json").read_text())["recipe"]
    assert recorded["targets"][0]["rounds"] == 5


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "distill.epochs=3"], "changes distill, which distill depends on"),
        (["--set", "targets.0.budget.p99_ms=1", "--fresh"], "--fresh redoes the run"),
        (["--target", "cpu", "--save"], "--target chooses what one invocation checks"),
    ],
    ids=["retrain", "fresh", "save-target"],
)
def test_what_if_refuses_what_would_rewrite_the_run(run, args, needle):
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run / "run"), *args])
    assert result.exit_code == 2 and needle in result.output, result.output
    assert "Traceback" not in result.output


def test_what_if_on_a_stale_run_refuses_to_retrain(run):
    _overwrite_teacher(run)
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run / "run"), "--set", "targets.0.budget.p99_ms=5"])
    assert result.exit_code == 2 and "a what-if never redoes it" in result.output, result.output


def test_saved_what_if_becomes_the_recipe(run):
    result = CliRunner().invoke(app, ["validate", "--run-dir", str(run / "run"), "--set", "targets.0.budget.p99_ms=500", "--save"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run" / "run.json").read_text())["recipe"]["targets"][0]["budget"]["p99_ms"] == 500
    assert gate(run).exit_code == 0


def test_gate_on_a_standalone_validation_checks_the_model_file(run, tmp_path):
    model = tmp_path / "m.onnx"
    shutil.copyfile(run / "run" / "student.onnx", model)
    out = tmp_path / "v"
    result = CliRunner().invoke(app, ["validate", str(model), "--out", str(out), "--budget", "p99_ms=1000"])
    assert result.exit_code == 0, result.output
    assert gate(out.parent / "x").exit_code == 2  # no report at all
    ok = CliRunner().invoke(app, ["gate", str(out)])
    assert ok.exit_code == 0, ok.output
    shutil.copyfile(run / "run" / "student.onnx", model)  # same bytes: still the model it judged
    assert CliRunner().invoke(app, ["gate", str(out)]).exit_code == 0
    model.write_bytes(b"not the model any more")
    changed = CliRunner().invoke(app, ["gate", str(out)])
    assert changed.exit_code == 2 and "changed since" in changed.output, changed.output


def test_corrupt_report_or_record_is_one_line(run):
    (run / "run" / "stages" / "distill.json").write_text("{not json")
    result = compress(run)
    assert result.exit_code == 0 and "distill: up to date" not in result.output, result.output
    (run / "run" / "report.json").write_text("[1, 2")
    broken = gate(run)
    assert broken.exit_code == 2 and broken.output.count("error:") == 1 and "Traceback" not in broken.output


def test_fingerprints_explain_changes(tmp_path):
    _digits(tmp_path / "f", 2)
    before = tree_fingerprint(tmp_path / "f")
    assert before.files == 20 and tree_fingerprint(tmp_path / "f") == before
    (tmp_path / "f" / "0" / "000.png").write_bytes((tmp_path / "f" / "1" / "000.png").read_bytes())
    (tmp_path / "f" / "2" / "001.png").unlink()
    after = tree_fingerprint(tmp_path / "f", contents=True)
    assert after != before and after.describe_change(tree_fingerprint(tmp_path / "f", contents=True).table) == "contents changed"
    assert tree_fingerprint(tmp_path / "f").describe_change(before.table) == "1 file modified, 1 file removed"
    assert paths_fingerprint([tmp_path / "missing.png"]).files == 1  # a file gone counts as a state, not a crash


def test_a_users_file_in_the_run_directory_is_refused_before_any_stage(run):
    """The audit's case: a teacher.onnx of the user's in a finished run directory; the rerun (here: new teacher
    weights) is refused before it scores the pool, not when export reaches that name."""
    (run / "run" / "teacher.onnx").write_bytes(b"the user's model")
    _overwrite_teacher(run)
    selection = (run / "run" / "selection.json").stat().st_mtime_ns
    result = compress(run)
    assert result.exit_code == 2 and "teacher.onnx: not written by an edgedistill run" in result.output, result.output
    assert (run / "run" / "teacher.onnx").read_bytes() == b"the user's model"
    assert (run / "run" / "selection.json").stat().st_mtime_ns == selection


STUDENT_MODULE = """
from torch import nn

STRIDE = 1  # a test changes it: the same name then builds another network


def build(num_classes=10, in_channels=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, STRIDE, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes)
    )
"""


def test_a_student_name_that_builds_another_network_is_distilled_again(run):
    """An upgrade can change what an architecture's name builds (the zoo's MobileNetV3 stems below 64 px did): the
    rerun distills again instead of keeping a student of the old network."""
    import sys

    (run / "stale_student_net.py").write_text(STUDENT_MODULE)
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    recipe["student"] = {"arch": "stale_student_net:build"}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        assert compress(run).exit_code == 0
        assert "distill: up to date, skipped" in compress(run).output
        sys.modules["stale_student_net"].STRIDE = 2
        rerun = compress(run)
        assert rerun.exit_code == 0, rerun.output
        assert "distill: redone: the recipe's student network changed" in rerun.output
    finally:
        sys.modules.pop("stale_student_net", None)
