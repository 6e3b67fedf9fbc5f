"""Static INT8 (QDQ) quantization of a LeNet-5 that learned something, so agreement numbers mean something.

The fp32 model is exported with the legacy TorchScript exporter (`dynamo=False`), like
`edgedistill.export`: it still works in torch 2.14.1 (with a deprecation warning) and takes a
fraction of a second where the dynamo exporter takes several.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import platform
import subprocess
import warnings
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from edgedistill.backends.base import cpu_flags
from edgedistill.cli import app
from edgedistill.errors import BadInput
from edgedistill.inputs.images import sample_folder
from edgedistill.models.factory import create_model
from edgedistill.models.onnx_info import onnx_info
from edgedistill.stages.quantize import needs_reduced_range, quantize_int8

MEAN, STD = [0.5], [0.5]
METHODS = ["minmax", "entropy", "percentile"]


def bars(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 28x28 images of one bar: 5 positions x 2 orientations = 10 classes, learnable in seconds."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.normal(60, 50, (n, 1, 28, 28))
    pos = 4 + 5 * (labels % 5) + rng.integers(-1, 2, n)
    gain = rng.uniform(30, 90, n)
    for i, k in enumerate(labels):
        if k < 5:
            x[i, 0, pos[i] : pos[i] + 2, 2:26] += gain[i]
        else:
            x[i, 0, 2:26, pos[i] : pos[i] + 2] += gain[i]
    return np.clip(x, 0, 255).astype(np.uint8), labels


def normalize(x: np.ndarray) -> np.ndarray:
    return ((x.astype(np.float32) / 255 - MEAN[0]) / STD[0]).astype(np.float32)


def predict(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def export_28px(model: torch.nn.Module, path) -> None:
    """A 1x28x28 classifier to ONNX (opset 17, dynamic batch) with torch's own exporter, not ours."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, 28, 28),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convs: extra threads only contend
    try:
        torch.manual_seed(0)
        x, y = bars(4096, seed=0)
        inputs, targets = torch.from_numpy(normalize(x)), torch.from_numpy(y)
        model = create_model("lenet5", 10, 1)
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        for _ in range(200):
            idx = torch.randint(0, len(inputs), (32,))
            loss = torch.nn.functional.cross_entropy(model(inputs[idx]), targets[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        path = tmp_path_factory.mktemp("fp32") / "lenet5.onnx"
        export_28px(model, path)
    finally:
        torch.set_num_threads(threads)
    held_x, held_y = bars(1000, seed=1)
    held = normalize(held_x)
    reference = predict(path, held).argmax(1)
    assert (reference == held_y).mean() > 0.9, "the fp32 model did not learn the task"
    return {"fp32": path, "held": held, "reference": reference, "calibration": bars(256, seed=2)[0]}


@pytest.fixture(scope="module")
def quantized(trained, tmp_path_factory) -> dict:
    results = {}
    for method in METHODS:
        out = tmp_path_factory.mktemp(method) / "lenet5.int8.onnx"
        results[method] = quantize_int8(trained["fp32"], out, trained["calibration"], MEAN, STD, method=method)
    return results


def agreement(path: Path, trained: dict) -> float:
    return float((predict(path, trained["held"]).argmax(1) == trained["reference"]).mean())


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_exported_model_has_dynamic_batch(trained):
    info = onnx_info(trained["fp32"])
    assert (info.input_name, *info.image_input("quantization")) == ("input", 1, 28, 28)
    dim0 = onnx.load(str(trained["fp32"])).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value


@pytest.mark.parametrize("method", METHODS)
def test_quantized_model_is_qdq_int8_and_agrees_with_fp32(method, quantized, trained):
    result = quantized[method]
    model = onnx.load(str(result.path))
    ops = Counter(node.op_type for node in model.graph.node)
    weights = initializers(model)
    dequantized = [weights[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    zero_points = [weights[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]

    assert result.method == method and result.calibration_samples == 256
    assert ops["QuantizeLinear"] >= 5 and ops["DequantizeLinear"] >= 10
    assert sum(w.dtype == np.int8 for w in dequantized) == 5, "2 conv + 3 gemm weights stored as int8"
    assert max(w.size for w in weights.values() if w.dtype == np.float32) <= 120, "no fp32 weight matrix left"
    assert any(weights[n.input[1]].size > 1 for n in model.graph.node if n.op_type == "DequantizeLinear"), "per-channel"
    assert all(z.dtype == np.uint8 for z in zero_points), "CPU default: asymmetric uint8 activations"
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "standard ops only"
    assert sorted(p.name for p in result.path.parent.iterdir()) == [result.path.name], "temp files left behind"

    agree = agreement(result.path, trained)
    print(f"\n{method}: top-1 agreement {agree:.4f}, {result.size_bytes} bytes vs fp32 {result.fp32_size_bytes}")
    assert agree >= 0.95
    assert result.size_bytes == result.path.stat().st_size
    assert result.size_bytes < 0.4 * result.fp32_size_bytes


def test_entropy_and_percentile_calibrate_differently_from_minmax(quantized):
    def scales(method: str) -> np.ndarray:
        model = onnx.load(str(quantized[method].path))
        weights = initializers(model)
        return np.array([float(weights[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"])

    minmax = scales("minmax")
    assert not np.allclose(scales("entropy"), minmax), "entropy degenerated to min/max (ORT's 128-bin default)"
    assert not np.allclose(scales("percentile"), minmax)


def test_dynamic_batch_survives_quantization(quantized, trained):
    session = ort.InferenceSession(str(quantized["minmax"].path), providers=["CPUExecutionProvider"])
    x = trained["held"][:7]
    single = session.run(None, {"input": x[:1]})[0]
    batch = session.run(None, {"input": x})[0]
    assert single.shape == (1, 10) and batch.shape == (7, 10)
    np.testing.assert_allclose(batch[:1], single, atol=1e-5)
    assert (batch.argmax(1) == trained["reference"][:7]).mean() >= 6 / 7


def test_for_tensorrt_is_symmetric_int8_that_its_parser_accepts(trained, tmp_path):
    result = quantize_int8(trained["fp32"], tmp_path / "trt.onnx", trained["calibration"], MEAN, STD, for_tensorrt=True)
    model = onnx.load(str(result.path))
    weights = initializers(model)
    nodes = model.graph.node
    zero_points = [weights[n.input[2]] for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    quantized_outputs = {n.output[0] for n in nodes if n.op_type == "QuantizeLinear"}
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert all(n.input[0] in quantized_outputs for n in nodes if n.op_type == "DequantizeLinear"), "Q/DQ pairs only"
    for node in nodes:
        if node.op_type in ("Conv", "Gemm"):
            assert all(name not in weights or weights[name].dtype == np.float32 for name in node.input)
    assert agreement(result.path, trained) >= 0.95


def test_subsampling_is_capped_and_reproducible(trained, tmp_path):
    pool = np.concatenate([trained["calibration"], bars(100, seed=3)[0]])
    digests = []
    for name in ("a.onnx", "b.onnx"):
        result = quantize_int8(trained["fp32"], tmp_path / name, pool, MEAN, STD, max_samples=40, seed=7)
        assert result.calibration_samples == 40
        digests.append(hashlib.sha256(result.path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_external_data_model_counts_its_weights_file(trained, tmp_path):
    path = tmp_path / "split.onnx"
    onnx.save_model(onnx.load(str(trained["fp32"])), str(path), save_as_external_data=True, location="split.onnx.data", size_threshold=0)
    result = quantize_int8(path, tmp_path / "out" / "split.int8.onnx", trained["calibration"][:40], MEAN, STD)
    assert result.fp32_size_bytes == path.stat().st_size + (tmp_path / "split.onnx.data").stat().st_size
    assert result.calibration_samples == 40
    assert agreement(result.path, trained) >= 0.95


def test_older_onnxruntime_without_calibration_cache_still_quantizes(trained, tmp_path, monkeypatch):
    import onnxruntime.quantization as oq

    real = oq.quantize_static

    def legacy(model_input, model_output, calibration_data_reader=None, **kwargs):
        assert calibration_data_reader is not None
        return real(model_input, model_output, calibration_data_reader, **kwargs)

    monkeypatch.setattr(oq, "quantize_static", legacy)
    result = quantize_int8(trained["fp32"], tmp_path / "old.onnx", trained["calibration"], MEAN, STD, method="percentile")
    assert agreement(result.path, trained) >= 0.95


def test_vectorised_entropy_threshold_matches_onnxruntime():
    from onnxruntime.quantization.calibrate import HistogramCollector

    from edgedistill.stages.quantize import _entropy_threshold

    rng = np.random.default_rng(0)
    data = {
        "relu": np.maximum(rng.standard_t(3, 20000), 0).astype(np.float32),
        "signed": (rng.standard_t(2, 20000) + 0.5).astype(np.float32),
    }
    for bins, levels in [(256, 128), (300, 37), (128, 128)]:
        collector = HistogramCollector("entropy", False, bins, levels, 99.999, "same")
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints progress
            collector.collect(data)
            collector.collect({k: v * 1.7 for k, v in data.items()})  # grows the histogram like later batches do
        for histogram in collector.histogram_dict.values():
            assert _entropy_threshold(histogram, levels) == collector.get_entropy_threshold(histogram, levels)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda c: c.astype(np.float32), "uint8"),
        (lambda c: c[:, 0], "x[:, None]"),
        (lambda c: np.repeat(c, 3, axis=1), "3 channel(s)"),
        (lambda c: c.transpose(0, 2, 3, 1), "NHWC"),
        (lambda c: np.zeros((4, 1, 32, 32), np.uint8), "32x32"),
        (lambda c: c[:0], "N=0"),
        (lambda c: c.tolist(), "numpy"),
    ],
    ids=["float", "3d", "channels", "nhwc", "size", "empty", "list"],
)
def test_bad_calibration_is_bad_input(make, needle, trained, tmp_path):
    out = tmp_path / "q.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(BadInput) as err:
        quantize_int8(trained["fp32"], out, make(trained["calibration"][:8]), MEAN, STD)
    assert err.value.exit_code == 2
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert out.read_bytes() == b"previous"


def test_bad_model_and_arguments_are_bad_input(trained, tmp_path):
    calib = trained["calibration"][:8]
    (tmp_path / "notes.onnx").write_text("not a model\n")
    cases = [
        (dict(fp32_onnx=tmp_path / "missing.onnx"), "does not exist"),
        (dict(fp32_onnx=tmp_path / "notes.onnx"), "not a readable ONNX model"),
        (dict(method="kl"), "unknown calibration method"),
        (dict(mean=[0.5, 0.5, 0.5]), "mean has 3 values"),
        (dict(std=[0.0]), "std must be positive"),
        (dict(max_samples=0), "max_samples"),
        (dict(out=trained["fp32"]), "overwrite"),
    ]
    for override, needle in cases:
        kwargs = dict(fp32_onnx=trained["fp32"], out=tmp_path / "q.onnx", calibration=calib, mean=MEAN, std=STD)
        with pytest.raises(BadInput, match=needle):
            quantize_int8(**{**kwargs, **override})
    assert not (tmp_path / "q.onnx").exists()


def test_onnx_info_reports_dynamic_dims(tmp_path):
    def model(shape: list) -> Path:
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        path = tmp_path / f"rank{len(shape)}.onnx"
        onnx.save(helper.make_model(graph), str(path))
        return path

    assert onnx_info(model(["N", 3, "H", "W"])).image_input("quantization") == (3, None, None)
    with pytest.raises(BadInput, match="rank 2"):
        onnx_info(model(["N", 10])).image_input("quantization")


def test_sample_folder_reads_formats_and_skips_corrupt(tmp_path, trained):
    root = tmp_path / "calib"
    (root / "cats" / "deep").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "cats" / "red.png")
    Image.fromarray(np.tile(np.arange(0, 250, 5, dtype=np.uint8), (50, 1))).save(root / "cats" / "deep" / "ramp.JPG")
    Image.new("RGB", (20, 20), (0, 0, 255)).save(root / "dogs" / "blue.bmp")
    Image.new("RGB", (64, 48), (0, 200, 0)).save(root / "dogs" / "green.webp")
    Image.new("RGBA", (16, 16), (10, 20, 30, 128)).save(root / "alpha.png")
    (root / "dogs" / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (root / "truncated.png").write_bytes((root / "cats" / "red.png").read_bytes()[:40])
    (root / "notes.txt").write_text("not an image")

    rgb, skipped = sample_folder(root, SimpleNamespace(channels=3, size=16), 100)
    assert rgb.shape == (5, 3, 16, 16) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    assert sorted(Path(s.split(": ")[0]).name for s in skipped) == ["broken.jpg", "truncated.png"]
    assert any((img[0] > 250).all() and (img[1:] < 5).all() for img in rgb), "red PNG read as RGB, NCHW"

    gray, _ = sample_folder(root, SimpleNamespace(channels=1, size=28), 100)
    assert gray.shape == (5, 1, 28, 28)
    limited, _ = sample_folder(root, SimpleNamespace(channels=1, size=28), 2)
    assert limited.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(limited, sample_folder(root, SimpleNamespace(channels=1, size=28), 2)[0])

    result = quantize_int8(trained["fp32"], tmp_path / "folder.int8.onnx", gray, MEAN, STD)
    assert result.calibration_samples == 5

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"\x89PNG garbage")
    runner = CliRunner()
    for calib, needle in ((only_bad, "no readable images"), (tmp_path / "missing", "not a directory")):
        out = runner.invoke(app, ["quantize", str(trained["fp32"]), "--calib", str(calib), "--mean", "0.1307", "--std", "0.3081"])
        assert out.exit_code == 2 and needle in out.output and "Traceback" not in out.output


def int8_weights(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    weights = initializers(model)
    return [weights[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and weights.get(n.input[0]) is not None]


def test_cpu_int8_weights_use_all_8_bits_unless_reduce_range(quantized, trained, tmp_path):
    """7-bit weights (reduce_range) made ResNet-18 INT8 2.3x slower under OpenVINO on a VNNI CPU; by default they are
    used only where this x86 CPU lacks VNNI/AMX, whose ONNX Runtime kernels saturate with 8-bit weights."""
    assert quantized["minmax"].reduce_range == needs_reduced_range()
    full = quantize_int8(trained["fp32"], tmp_path / "full.onnx", trained["calibration"], MEAN, STD, reduce_range=False)
    full_weights = [w for w in int8_weights(full.path) if w.dtype == np.int8]
    assert full_weights and all(np.abs(w.astype(int)).max() == 127 for w in full_weights), "each layer's largest weight is ±127"
    reduced = quantize_int8(trained["fp32"], tmp_path / "rr.onnx", trained["calibration"], MEAN, STD, reduce_range=True)
    assert max(np.abs(w.astype(int)).max() for w in int8_weights(reduced.path) if w.dtype == np.int8) <= 64
    assert agreement(reduced.path, trained) >= 0.95
    trt = quantize_int8(trained["fp32"], tmp_path / "trt.onnx", trained["calibration"], MEAN, STD, for_tensorrt=True)
    assert not trt.reduce_range, "TensorRT's int8 kernels need no 7-bit guard"


def test_reduced_range_only_on_x86_without_an_int8_dot_product():
    assert needs_reduced_range("x86_64", {"avx2", "fma"}) and needs_reduced_range("AMD64", set())
    assert not needs_reduced_range("x86_64", {"avx2", "avx512_vnni"}) and not needs_reduced_range("x86_64", {"avx_vnni"})
    assert not needs_reduced_range("x86_64", {"amx_int8"}) and not needs_reduced_range("aarch64", {"asimd"})
    flags = cpu_flags()
    assert flags is None or "fpu" in flags or platform.machine() != "x86_64", "read this machine's /proc/cpuinfo flags"


@pytest.fixture(scope="module")
def hardswish_net(tmp_path_factory) -> Path:
    """A MobileNetV3-like block stack (conv, depthwise conv, HardSwish, squeeze-excite gate), random weights."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, stride=2, padding=1),
        torch.nn.Hardswish(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.Hardswish(),
        torch.nn.Conv2d(16, 24, 1),
        torch.nn.Hardsigmoid(),  # an SE-style gate on its own: not a HardSwish, must stay as it is
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(24, 10),
    ).eval()
    path = tmp_path_factory.mktemp("hswish") / "hswish.onnx"
    export_28px(net, path)
    return path


def test_hardswish_survives_cpu_quantization_and_runs_in_openvino(hardswish_net, trained, tmp_path):
    """ORT's pre-processing splits HardSwish into HardSigmoid * x; the CPU INT8 file gets it back whole."""
    from edgedistill.backends.openvino import OpenVinoRunner

    assert Counter(n.op_type for n in onnx.load(str(hardswish_net)).graph.node)["HardSwish"] == 2
    result = quantize_int8(hardswish_net, tmp_path / "hswish.int8.onnx", trained["calibration"], MEAN, STD)
    ops = Counter(n.op_type for n in onnx.load(str(result.path)).graph.node)
    assert ops["HardSwish"] == 2 and ops["HardSigmoid"] == 1 and ops["Mul"] == 0
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 8

    x = trained["held"][:64]
    reference = predict(hardswish_net, x)
    logits = predict(result.path, x)
    assert np.linalg.norm(logits - reference) <= 0.1 * np.linalg.norm(reference)
    with OpenVinoRunner(result.path, threads=1, precision="int8") as runner:
        np.testing.assert_allclose(runner.infer(x), logits, atol=0.05 * np.abs(reference).max())

    trt = quantize_int8(hardswish_net, tmp_path / "hswish.trt.onnx", trained["calibration"], MEAN, STD, for_tensorrt=True)
    assert "HardSwish" not in {n.op_type for n in onnx.load(str(trt.path)).graph.node}, "the TensorRT flavour is left as ORT made it"


def test_fp16_copy_is_half_precision_inside_float32_outside(trained, tmp_path):
    from edgedistill.backends.openvino import OpenVinoRunner
    from edgedistill.stages.fp16 import convert_fp16

    out = convert_fp16(trained["fp32"], tmp_path / "lenet5.fp16.onnx")
    model = onnx.load(str(out))
    float_types = {t.data_type for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert float_types == {onnx.TensorProto.FLOAT16}, "every float weight is fp16"
    assert [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)] == [onnx.TensorProto.FLOAT] * 2
    assert onnx_info(out).size_bytes < 0.6 * onnx_info(trained["fp32"]).size_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5.fp16.onnx"], "temp files left behind"

    x = trained["held"][:200]
    reference = predict(trained["fp32"], x)
    for logits in (predict(out, x), OpenVinoRunner(out, threads=1, precision="fp32").infer(x)):
        assert logits.dtype == np.float32 and logits.shape == reference.shape
        assert np.abs(logits - reference).max() < 0.02 * np.abs(reference).max()
        assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.99

    for source, target, needle in (
        (trained["fp32"], trained["fp32"], "overwrite"),
        (tmp_path / "missing.onnx", tmp_path / "x.onnx", "does not exist"),
    ):
        with pytest.raises(BadInput, match=needle):
            convert_fp16(source, target)


def calibration_folder(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(bars(n, seed=3)[0]):
        Image.fromarray(img[0]).save(root / f"{i}.png")
    return root


def test_quantize_never_replaces_an_existing_file_without_force(trained, tmp_path):
    """`quantize m.onnx` used to overwrite m.int8.onnx silently: now exit 2 naming it and the two ways out."""
    import edgedistill

    model = tmp_path / "m.onnx"
    model.write_bytes(trained["fp32"].read_bytes())
    calib = calibration_folder(tmp_path / "calib")
    existing = tmp_path / "m.int8.onnx"
    existing.write_bytes(b"the user's earlier int8 model")
    args = ["quantize", str(model), "--calib", str(calib), "--mean", "0.5", "--std", "0.5"]
    refused = CliRunner().invoke(app, args, terminal_width=2000)
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "Traceback" not in refused.output, refused.output
    assert str(existing) in lines[0] and "already exists" in lines[0] and "--out PATH" in lines[0] and "--force" in lines[0]
    assert existing.read_bytes() == b"the user's earlier int8 model"
    with pytest.raises(BadInput, match="force=True"):
        edgedistill.quantize(model, calib, overrides={"mean": [0.5], "std": [0.5]})
    assert existing.read_bytes() == b"the user's earlier int8 model"

    forced = CliRunner().invoke(app, [*args, "--force"], terminal_width=2000)
    assert forced.exit_code == 0, forced.output
    assert onnx_info(existing).quantized
    again = edgedistill.quantize(model, calib, overrides={"mean": [0.5], "std": [0.5]}, force=True)
    assert again["path"] == existing and sorted(p.name for p in tmp_path.iterdir()) == ["calib", "m.int8.onnx", "m.onnx"]


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: writing a model there runs out of space (ENOSPC) for real. Needs root's mount."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tiny tmpfs needs root (and permission to mount)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_is_one_line_naming_the_file(trained, tmp_path, tiny_disk):
    """ENOSPC while writing is exit 2, `error: PATH: No space left on device; ...`, and no temporary file is left."""
    calib = calibration_folder(tmp_path / "calib")
    out = tiny_disk / "m.int8.onnx"
    args = ["quantize", str(trained["fp32"]), "--calib", str(calib), "--mean", "0.5", "--std", "0.5", "--out", str(out)]
    result = CliRunner().invoke(app, args, terminal_width=2000)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert lines[0].startswith(f"error: {tiny_disk}") and "No space left on device" in lines[0] and "free space" in lines[0], lines[0]
    assert list(tiny_disk.iterdir()) == []
