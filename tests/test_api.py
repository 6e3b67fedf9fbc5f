"""The Python API (edgedistill.compress, validate, quantize): the command line's work, with --set style overrides
given as strings or a dict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import edgedistill
from edgedistill.config.load import load_recipe
from edgedistill.config.schema import InputSpec
from edgedistill.errors import BadInput, BudgetFailed
from edgedistill.models.factory import create_model
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
