"""Deployment artifacts: the fp32 export (TorchScript, or dynamo where TorchScript cannot), the INT8 copy
calibrated on selected samples with its accuracy drop measured, and the `quantize` command for any ONNX model."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.config.schema import Budget, InputSpec
from edgedistill.errors import BadInput
from edgedistill.extensions import check_recipe
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.labeled import EvalSet
from edgedistill.models.checkpoint import load_weights
from edgedistill.models.factory import create_model
from edgedistill.models.onnx_info import onnx_info
from edgedistill.recipe import recipe_from_dict
from edgedistill.stages.export import check_parity, export_onnx
from edgedistill.stages.quantize import quantize_int8
from edgedistill.stages.validate import budget_verdicts, measure_int8

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "teachers" / "mnist_lenet5.safetensors"
MNIST = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
CLASSES = [str(i) for i in range(10)]


@functools.lru_cache(maxsize=1)
def trained_lenet5_state() -> dict:
    """The demo teacher when it is there; otherwise LeNet-5 fitted for two epochs on mnist-train (~97%)."""
    model = create_model("lenet5", 10, 1)
    if TEACHER.is_file():
        return load_weights(model, TEACHER).state_dict()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        train = load_builtin("mnist-train")
        x = (torch.from_numpy(train.images).float().unsqueeze(1) / 255 - MNIST.mean[0]) / MNIST.std[0]
        y = torch.from_numpy(train.labels.astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(2):
            for idx in torch.randperm(len(x)).split(64):
                loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval().state_dict()


def trained_lenet5() -> torch.nn.Module:
    model = create_model("lenet5", 10, 1)
    model.load_state_dict(trained_lenet5_state())
    return model.eval()


def heldout(n: int) -> EvalSet:
    data = load_builtin("mnist-heldout")
    order = np.random.default_rng(0).permutation(len(data.images))[:n]
    return EvalSet("mnist-heldout", data.images[order][:, None], data.labels[order].astype(np.int64))


def write_class_folders(folder: Path, eval_set: EvalSet) -> Path:
    for i, (image, label) in enumerate(zip(eval_set.images, eval_set.labels)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / str(label) / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    return export_onnx(trained_lenet5(), MNIST, tmp_path_factory.mktemp("fp32") / "lenet5.onnx", CLASSES)


def test_export_is_self_describing_opset17_with_dynamic_batch(fp32_model):
    proto = onnx.load(str(fp32_model))
    onnx.checker.check_model(proto, full_check=True)
    assert onnx_info(fp32_model).opset >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = onnx_info(fp32_model).metadata
    assert meta["mean"] == MNIST.mean and meta["std"] == MNIST.std and meta["class_names"] == CLASSES
    assert meta["input_layout"] == "NCHW" and meta["exporter"] == "torchscript" and meta["edgedistill_version"]
    parity = check_parity(trained_lenet5(), fp32_model, heldout(100).images, MNIST)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff < 1e-4


def test_lenet5_at_32x32_falls_back_to_dynamo_and_stays_one_file(tmp_path):
    """AdaptiveAvgPool2d(5) on a 6x6 map: the TorchScript exporter refuses, dynamo exports it (at opset 18)."""
    spec = InputSpec(channels=1, size=32, mean=[0.5], std=[0.25])
    model = create_model("lenet5", 10, 1).eval()
    out = export_onnx(model, spec, tmp_path / "lenet5_32.onnx", CLASSES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5_32.onnx"]
    proto = onnx.load(str(out), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert onnx_info(out).opset >= 17
    meta = onnx_info(out).metadata
    assert meta["exporter"] == "dynamo" and meta["mean"] == [0.5] and meta["class_names"] == CLASSES
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 1, 32, 32), np.float32)})[0].shape == (3, 10)
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 32, 32), dtype=np.uint8)
    parity = check_parity(model, out, images, spec)
    assert parity.top1_agreement == 1.0 and parity.max_abs_diff < 1e-4
    with pytest.raises(BadInput, match="TorchScript"):
        export_onnx(model, spec, tmp_path / "strict.onnx", exporter="torchscript")


def test_int8_on_ort_cpu_costs_little_accuracy_and_is_budgeted(fp32_model, tmp_path):
    calibration = load_builtin("mnist-train").images[:256, None]
    result = quantize_int8(fp32_model, tmp_path / "lenet5.int8.onnx", calibration, MNIST.mean, MNIST.std)
    assert result.size_bytes < result.fp32_size_bytes / 2
    summary, reference = measure_int8(fp32_model, result.path, heldout(1000), MNIST, teacher_pred=None)
    assert summary["basis"] == "accuracy" and summary["samples"] == 1000
    assert summary["fp32"] > 0.9 and summary["drop"] == pytest.approx(reference.cpu_drop)
    assert summary["drop"] <= 0.02 and summary["int8_agrees_with_fp32"] >= 0.97
    loose, strict = (
        budget_verdicts(Budget(max_int8_drop=limit), 1.0, summary["int8"], None, None, (reference.cpu_drop, "cpu")) for limit in (0.02, 0.0)
    )
    assert loose[0]["passed"] and loose[0]["measured"] == reference.cpu_drop
    assert strict[0]["passed"] is (reference.cpu_drop <= 0)
    missing = budget_verdicts(Budget(max_int8_drop=0.5), 1.0, 0.9, None, None)
    assert missing[0]["passed"] is False and missing[0]["measured"] is None


def test_recipe_export_section_and_int8_budget(tmp_path):
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = None
    recipe = recipe_from_dict(data)
    assert recipe.export.int8.enabled and recipe.export.int8.method == "minmax" and recipe.export.int8.samples == 512
    data["export"] = {"int8": {"enabled": False}}
    data["targets"][0]["budget"]["max_int8_drop"] = 0.01
    with pytest.raises(BadInput, match="export.int8.enabled is false"):
        check_recipe(recipe_from_dict(data))
    data["export"] = {"int8": {"method": "kl"}}
    with pytest.raises(BadInput, match="export.int8.method"):
        recipe_from_dict(data)
    data["export"] = {}
    data["targets"][0].update(precision="fp16")
    with pytest.raises(BadInput, match="fp16 needs runtime"):
        check_recipe(recipe_from_dict(data))
    data["targets"][0].update(precision="int8")
    assert recipe_from_dict(data).targets[0].precision == "int8"


def test_pipeline_export_writes_int8_and_validate_reports_its_drop(tmp_path):
    """export + validate stages on a finished distill: INT8 calibrated on selected.npz, drop in report.json."""
    from edgedistill.atomic import atomic_write_json
    from edgedistill.pipeline import Pipeline
    from edgedistill.results.selection import Selection, save_selection
    from edgedistill.stages.distill import save_student

    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    weights = tmp_path / "lenet5.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained_lenet5_state().items()}, str(weights))
    data["teacher"]["weights"] = str(weights)
    data["student"] = {"arch": "lenet5"}
    data["eval"] = {"labeled": "builtin:mnist-heldout", "limit": 400}
    data["export"] = {"int8": {"samples": 128}}
    data["targets"] = [
        {"name": "cpu", "threads": 1, "iterations": 20, "warmup": 2, "budget": {"max_int8_drop": 0.05}},
        {
            "name": "cpu-int8",
            "precision": "int8",
            "threads": 1,
            "iterations": 20,
            "warmup": 2,
            "budget": {"max_int8_drop": 0.05, "min_accuracy": 0.5},
        },
    ]
    recipe = recipe_from_dict(data)
    pipeline = Pipeline(recipe, tmp_path / "run", Console(quiet=True))
    run = pipeline.run
    run.open()  # claimed as a run directory, as run_stages does, so what is written here is the run's own
    pool = load_builtin("mnist-train").images[:300, None]
    save_selection(
        Selection(pool, np.arange(300), np.full((300, 10), 0.1, np.float32)), run.artifact("selected.npz", "selected_images.npy")
    )
    atomic_write_json(run.artifact("selection.json"), {"selected": 300})
    pipeline.run.mark_done("select", pipeline.inputs("select"), ["selected.npz", "selection.json"])
    save_student(trained_lenet5(), recipe, run)
    atomic_write_json(run.artifact("history.json"), [])
    pipeline.run.mark_done("distill", pipeline.inputs("distill"), ["student.safetensors", "student.json", "history.json"])
    run.close()

    report = pipeline.run_stages(("export", "validate"))
    int8 = json.loads((run / "int8.json").read_text())
    assert int8["calibration_samples"] == 128 and "selected.npz" in int8["calibration_source"]
    assert not (run / "student.int8.trt.onnx").exists()
    assert report["int8"]["basis"] == "accuracy" and report["int8"]["drop"] <= 0.05
    assert report["student"]["int8_onnx_bytes"] < report["student"]["onnx_bytes"]
    cpu, cpu_int8 = report["targets"]
    assert cpu["precision"] == "fp32" and cpu["int8_drop"] == pytest.approx(report["int8"]["drop"])
    assert cpu_int8["precision"] == "int8" and cpu_int8["accuracy"] == pytest.approx(report["int8"]["int8"])
    assert {v["budget"] for v in cpu_int8["verdicts"]} == {"max_int8_drop", "min_accuracy"}
    assert report["passed"], report["targets"]
    assert "noisy" in cpu["latency"] and cpu["facts"]["intra_op_threads"] == 1


def _strip_metadata(src: Path, dst: Path) -> Path:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    onnx.save(proto, str(dst))
    return dst


def test_quantize_command_end_to_end(fp32_model, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, image in enumerate(load_builtin("mnist-train").images[:64]):
        Image.fromarray(image).save(calib / f"{i}.png")
    (calib / "broken.png").write_bytes(b"not a png")
    runner = CliRunner()

    result = runner.invoke(app, ["quantize", str(fp32_model), "--calib", str(calib), "--samples", "48"])
    assert result.exit_code == 0, result.output
    made = fp32_model.with_name("lenet5.int8.onnx")
    assert "48 calibration images" in result.output and "1 unreadable" in result.output
    proto = onnx.load(str(made))
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    assert onnx_info(made).metadata["mean"] == MNIST.mean

    result = runner.invoke(app, ["quantize", str(fp32_model), "--calib", str(calib), "--for-tensorrt", "--method", "entropy"])
    assert result.exit_code == 0, result.output
    assert fp32_model.with_name("lenet5.int8.trt.onnx").is_file()

    foreign = _strip_metadata(fp32_model, tmp_path / "foreign.onnx")
    result = runner.invoke(app, ["quantize", str(foreign), "--calib", str(calib)])
    assert result.exit_code == 2 and "--mean" in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(
        app,
        ["quantize", str(foreign), "--calib", str(calib), "--mean", "0.1307", "--std", "0.3081", "--out", str(tmp_path / "out" / "q.onnx")],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "q.onnx").is_file()

    for argv, needle in (
        (["quantize", str(tmp_path / "missing.onnx"), "--calib", str(calib)], "does not exist"),
        (["quantize", str(fp32_model), "--calib", str(tmp_path / "nowhere")], "not a directory of calibration images"),
        (["quantize", str(fp32_model), "--calib", str(calib), "--method", "kl"], "unknown calibration method"),
        (["quantize", str(made), "--calib", str(calib), "--out", str(tmp_path / "x.onnx")], "already quantized"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2 and needle in result.output, result.output
