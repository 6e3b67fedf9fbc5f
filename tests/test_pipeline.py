"""End to end: `compress` on a tiny recipe with real ONNX Runtime; resume after a run is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import edgedistill
from edgedistill.cli import app
from edgedistill.errors import BudgetFailed
from edgedistill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "teachers" / "mnist_lenet5.safetensors"


def tiny_recipe(tmp_path: Path, budget: dict | None = None, **distill) -> Path:
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(TEACHER)
    data["pool"] = [{"builtin": "sklearn-digits"}, {"builtin": "fashion-mnist", "count": 2000}]
    data["select"] = {"strategy": "balanced", "per_class": 60}
    # Mixing (on by default) slows a 3-epoch run on 600 images to near chance; tests that need it pass `augment`.
    data["distill"].update({"epochs": 3, "batch_size": 32, "augment": {"cutmix": 0.0, "mosaic": 0.0}, **distill})
    data["eval"] = {"labeled": "builtin:mnist-heldout", "limit": 500}
    data["targets"] = [
        {
            "name": "cpu",
            "runtime": "onnxruntime",
            "threads": 1,
            "iterations": 30,
            "budget": {"p99_ms": 50.0, "min_accuracy": 0.2} if budget is None else budget,
        }
    ]
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = tiny_recipe(tmp)
    report = edgedistill.compress(recipe, run_dir=tmp / "run")
    return recipe, tmp / "run", report


def test_compress_writes_every_artifact(finished_run):
    _, run, report = finished_run
    for name in (
        "selected.npz",
        "selection.json",
        "student.safetensors",
        "student.json",
        "history.json",
        "student.onnx",
        "parity.json",
        "report.json",
        "run.json",
        "run.log",
    ):
        assert (run / name).is_file(), name
    on_disk = json.loads((run / "report.json").read_text())
    assert on_disk["passed"] is report["passed"] is True
    target = on_disk["targets"][0]
    assert 0.2 <= target["accuracy"] <= 1 and target["latency"]["p99_ms"] > 0 and target["latency"]["iterations"] == 30
    assert on_disk["parity"]["top1_agreement"] == 1.0 and on_disk["parity"]["max_abs_diff"] < 1e-3
    assert on_disk["teacher"]["accuracy"] > 0.9 and on_disk["student"]["parameters"] < on_disk["teacher"]["parameters"]
    assert on_disk["selection"]["selected"] == sum(on_disk["selection"]["selected_per_class"])
    assert len(on_disk["history"]) == 3 and not list(run.glob("*.part"))
    rates = on_disk["throughput"]
    assert rates["select"]["images_per_s"] > 0 and rates["select"]["bare_forward_images_per_s"] > 0
    assert rates["distill"]["ratio"] == pytest.approx(rates["distill"]["images_per_s"] / rates["distill"]["bare_step_images_per_s"])
    assert "| pool scoring |" in (run / "summary.md").read_text() and "<h2>Throughput</h2>" in (run / "report.html").read_text()


def test_rerun_skips_finished_stages_and_budget_exit_code(finished_run, tmp_path):
    recipe, run, _ = finished_run
    result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    for stage in ("select", "distill", "export", "validate"):
        assert f"{stage}: up to date, skipped" in result.output
    strict = CliRunner().invoke(app, ["validate", str(recipe), "--run-dir", str(run), "--set", "targets.0.budget.min_accuracy=0.999"])
    assert strict.exit_code == 3, strict.output
    assert "min_accuracy" in strict.output and (run / "what-if" / "report.json").is_file()  # a what-if: validation only
    with pytest.raises(BudgetFailed):
        edgedistill.compress(load_recipe(recipe, ["targets.0.budget.p99_ms=0.000001"]), run_dir=run)


def _wait_for(folder: Path, proc: subprocess.Popen, pattern: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not list(folder.glob(pattern)):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"{folder / pattern} never appeared"
        time.sleep(0.05)


def test_killed_run_resumes_without_redoing_finished_work(tmp_path):
    recipe = tiny_recipe(tmp_path, budget={}, epochs=4)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgedistill", "compress", str(recipe), "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for(run, proc, "distill-*.ckpt")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "stages" / "select.json").exists() and not (run / "stages" / "distill.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "select: up to date, skipped" in done.stderr
    assert "resumed at epoch" in done.stderr
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert not list(run.glob("distill-*.ckpt"))


def test_checkpoint_left_by_other_inputs_is_not_resumed(finished_run, tmp_path):
    """Scratch files are named by the distill stage's inputs: a changed recipe trains afresh and removes them."""
    import shutil

    recipe, run, _ = finished_run
    from edgedistill.results.rundir import RunDir

    copy = Path(shutil.copytree(run, tmp_path / "run"))
    earlier = RunDir(copy)  # what an interrupted run of another recipe left, as it recorded it
    earlier.open()
    earlier.artifact("distill-000000000000.ckpt").write_bytes(b"left by an interrupted run of another recipe")
    earlier.artifact("teacher_outputs-000000000000.npy").write_bytes(b"stale")
    earlier.close()
    (copy / "distill-mine.ckpt").write_bytes(b"a file the user put here: never touched")
    report = edgedistill.compress(load_recipe(recipe, ["distill.epochs=2", "targets.0.budget.min_accuracy=0"]), run_dir=copy)
    assert len(report["history"]) == 2
    assert [p.name for p in copy.glob("distill-*.ckpt")] == ["distill-mine.ckpt"] and not list(copy.glob("teacher_outputs-*.npy"))


def test_the_kept_epoch_is_chosen_without_reading_the_evaluation_set(tmp_path):
    """Checkpoint choice (`keep: best`) reads teacher agreement on the selection's held-out images only: two runs that
    differ in nothing but their labeled evaluation set keep the same epoch and byte-identical weights."""
    students, kept = [], []
    for name, labeled in (("heldout", "builtin:mnist-heldout"), ("fashion", "builtin:fashion-mnist-test")):
        recipe = load_recipe(tiny_recipe(tmp_path, epochs=4), ["distill.keep=best"])
        recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"labeled": labeled, "limit": 300}), "targets": []})
        edgedistill.compress(recipe, run_dir=tmp_path / name, stages=("select", "distill"))
        history = json.loads((tmp_path / name / "history.json").read_text())
        record = json.loads((tmp_path / name / "stages" / "distill.json").read_text())["info"]
        scores = [h["holdout_agreement"] for h in history]
        assert record["kept_epoch"] == max(e for e, s in enumerate(scores, 1) if s == max(scores))  # ties: the later
        assert all("accuracy" in h for h in history)  # the evaluation set is still measured, for the report
        students.append((tmp_path / name / "student.safetensors").read_bytes())
        kept.append(record["kept_epoch"])
    assert kept[0] == kept[1] and students[0] == students[1]
