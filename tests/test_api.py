"""The Python API (edgedistill.compress, validate, quantize): the command line's work, with --set style overrides
given as strings or a dict."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgedistill
from edgedistill.backends import RUNTIMES, option_keys, runtimes_reading
from edgedistill.config.schema import InputSpec, TargetSpec
from edgedistill.errors import BadInput, BudgetFailed
from edgedistill.models.factory import create_model
from edgedistill.recipe import load_recipe
from edgedistill.stages.export import export_onnx
from tests.test_cli_output import small_recipe

SPEC = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])


@pytest.fixture(scope="module")
def model_and_images(tmp_path_factory) -> tuple[Path, Path]:
    """An (untrained) LeNet-5 as ONNX, and a labeled folder of 3 classes x 4 grayscale images."""
    folder = tmp_path_factory.mktemp("api")
    torch.manual_seed(0)
    model = export_onnx(create_model("lenet5", 3, 1).eval(), SPEC, folder / "lenet.onnx", ["a", "b", "c"])
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        (folder / "labeled" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / "labeled" / name / f"{i}.png")
    return model, folder / "labeled"


def test_compress_takes_overrides_as_a_dict_or_strings(tmp_path):
    recipe = small_recipe(tmp_path)
    edgedistill.compress(recipe, tmp_path / "run", stages=("select", "distill"), overrides={"distill.epochs": 1, "select.per_class": 10})
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 1
    selection = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert selection["selected"] <= 10 * 10
    loaded = load_recipe(recipe)
    with pytest.raises(BadInput, match=r"--set distill\.epochz=2: distill\.epochz: unknown key; did you mean 'epochs'"):
        edgedistill.compress(loaded, tmp_path / "other", overrides=["distill.epochz=2"])
    assert not (tmp_path / "other").exists() and loaded.distill.epochs == 2  # the given Recipe is left as it was


def test_validate_a_model_file_with_settings_and_budgets(model_and_images, tmp_path):
    model, labeled = model_and_images
    settings = {"labeled": str(labeled), "iterations": 20, "warmup": 1, "budget.p99_ms": 1000, "budget.min_accuracy": 0.0}
    report = edgedistill.validate(model, settings, out_dir=tmp_path / "gate")
    target = report["targets"][0]
    assert report["eval"]["samples"] == 12 and target["passed"] and target["runtime"] == "onnxruntime"
    assert json.loads((tmp_path / "gate" / "report.json").read_text())["targets"][0]["passed"]
    with pytest.raises(BudgetFailed) as failed:
        edgedistill.validate(model, [f"labeled={labeled}", "iterations=20", "budget.p50_ms=0.000001"], out_dir=tmp_path / "strict")
    assert not failed.value.report["targets"][0]["passed"]
    with pytest.raises(BadInput, match="did you mean 'iterations'"):
        edgedistill.validate(model, {"iteration": 5}, out_dir=tmp_path / "typo")


def test_validate_a_run_directory_applies_overrides_once(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    recorded = (run / "run.json").read_text()
    with pytest.raises(BudgetFailed):
        edgedistill.validate(run, {"targets.0.budget.min_accuracy": 1.0})
    assert (run / "run.json").read_text() == recorded


def test_quantize_a_model_file_on_a_folder(model_and_images, tmp_path):
    model, labeled = model_and_images
    result = edgedistill.quantize(model, labeled, tmp_path / "q.onnx", {"samples": 8, "seed": 1})
    assert result["path"] == tmp_path / "q.onnx" and result["path"].is_file()
    assert result["calibration_samples"] == 8 and result["unreadable"] == [] and result["size_bytes"] < result["fp32_size_bytes"]
    with pytest.raises(BadInput, match="quantize takes method, samples, seed, for_tensorrt, mean, std; did you mean 'method'"):
        edgedistill.quantize(model, labeled, tmp_path / "x.onnx", ["methd=entropy"])


# ------------------------------------------------------------------ one validation path, defaults in the schema only


def test_a_model_file_is_validated_with_the_schemas_defaults(model_and_images, tmp_path):
    """Nothing given: the target is TargetSpec's defaults, as a recipe's target would be, named after its runtime."""
    model, _ = model_and_images
    field = TargetSpec.model_fields
    report = edgedistill.validate(model, {"budget.p99_ms": 1000}, out_dir=tmp_path / "defaults")
    target = report["targets"][0]
    assert target["name"] == target["runtime"] == field["runtime"].default and target["precision"] == field["precision"].default
    assert target["latency"]["iterations"] == field["iterations"].default and target["latency"]["rounds"] == field["rounds"].default
    assert target["facts"]["intra_op_threads"] == RUNTIMES[field["runtime"].default].options.model_fields["threads"].default
    assert [point["batch"] for point in target["batch_sweep"]] == field["batch_sizes"].default


def test_the_validate_options_show_the_schemas_defaults():
    import typer

    from edgedistill.cli import app

    def default(name: str):
        """A key every target has, or the option of the first runtime that reads it (its row's default)."""
        if name in TargetSpec.model_fields:
            return TargetSpec.model_fields[name].default
        return runtimes_reading(name)[0].options.model_fields[name].default

    command = typer.main.get_command(app).commands["validate"]
    helps = {opt: param.help for param in command.params for opt in param.opts}
    for option, name in (("--iterations", "iterations"), ("--warmup", "warmup"), ("--threads", "threads"), ("--rounds", "rounds")):
        assert f"(default {default(name)}" in helps[option], (option, helps[option])
    for option, name in (("--runtime", "runtime"), ("--on-inconclusive", "on_inconclusive"), ("--trtexec", "trtexec")):
        assert f"(default: {default(name)}" in helps[option], (option, helps[option])


def test_model_file_settings_are_a_targets_keys_and_the_file_options(model_and_images, tmp_path):
    model, labeled = model_and_images
    with pytest.raises(BadInput) as info:
        edgedistill.validate(model, {"also_time": []}, out_dir=tmp_path / "x")
    keys = [name for name in TargetSpec.model_fields if name not in ("budget", "also_time")] + option_keys()
    assert f"validate MODEL.onnx takes {', '.join(keys)}, labeled, mean, std, limit, duration_s and budget.NAME" in str(info.value)
    with pytest.raises(BadInput, match=r"budget\.min_accuracy: Input should be less than or equal to 1"):
        edgedistill.validate(model, {"budget.min_accuracy": 2}, out_dir=tmp_path / "x")  # was pydantic's ValidationError
    with pytest.raises(BadInput, match=r"^precision: Input should be 'fp32', 'fp16' or 'int8'"):
        edgedistill.validate(model, {"precision": "fp64"}, out_dir=tmp_path / "x")
    settings = {"name": "cpu", "batch_sizes": [4], "iterations": 10, "warmup": 0, "rounds": 2, "mean": 0.5, "std": [0.5]}
    report = edgedistill.validate(model, {**settings, "labeled": str(labeled), "limit": 6}, out_dir=tmp_path / "set")
    target = report["targets"][0]
    assert target["name"] == "cpu" and [point["batch"] for point in target["batch_sweep"]] == [4]
    assert target["latency"]["iterations"] == 10 and target["latency"]["rounds"] == 2
    assert report["model"]["input"]["mean"] == [0.5] and report["eval"]["samples"] == 6


def test_compress_and_a_model_file_write_the_report_on_one_path(model_and_images, compressed_run, tmp_path, monkeypatch):
    """validate_and_report measures and writes report.json and the gate files for a run and for a model file alike."""
    from edgedistill.stages import deployment, validate

    calls = []

    def spy(run, name, gated, *args, **kwargs):
        calls.append((name, [g.target.name for g in gated], kwargs.get("prefix", "")))
        return original(run, name, gated, *args, **kwargs)

    original = validate.validate_and_report
    monkeypatch.setattr(validate, "validate_and_report", spy)
    monkeypatch.setattr(deployment, "validate_and_report", spy)
    model, _ = model_and_images
    edgedistill.validate(model, {"iterations": 10, "warmup": 0}, out_dir=tmp_path / "gate")
    run = compressed_run.copy(tmp_path)
    with pytest.raises(BudgetFailed):
        edgedistill.validate(run, {"targets.0.budget.min_accuracy": 1.0})
    assert calls[0] == ("lenet", ["onnxruntime"], "") and calls[1][2] == "what-if/" and len(calls) == 2
    assert {p.name for p in (tmp_path / "gate").iterdir()} >= {"report.json", "latency_samples.json", "junit.xml", "summary.md"}


def test_the_export_parity_check_is_the_targets_logit_comparison(monkeypatch):
    """parity.json keeps its fields, taken from compare_outputs' dict: the one comparison of logits."""
    from edgedistill.stages import validate
    from edgedistill.stages.export import Parity, check_parity, parity_dict

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 3)).astype(np.float32)
    comparison = validate.compare_outputs(logits + 0.01, logits)
    assert parity_dict(Parity.of(comparison)) == {key: comparison[key] for key in ("samples", "max_abs_diff", "top1_agreement")}
    seen = []
    monkeypatch.setattr(validate, "compare_outputs", lambda got, expected: seen.append(len(got)) or comparison)
    model = create_model("lenet5", 3, 1).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = export_onnx(model, SPEC, Path(folder) / "m.onnx")
        images = rng.integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
        assert check_parity(model, path, images, SPEC) == Parity.of(comparison) and seen == [5]
