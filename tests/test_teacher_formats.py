"""Bring your own teacher and student: every model format round-trips, every mistake is one BadInput line."""

import json
import logging
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

import edgedistill
from edgedistill.config.schema import ClassDropSpec, DistillSpec, InputSpec
from edgedistill.errors import BadInput
from edgedistill.models.checkpoint import load_weights
from edgedistill.models.factory import build_student_model, create_model
from edgedistill.models.features import FeatureTap
from edgedistill.pipeline import build_student, load_teacher
from edgedistill.recipe import recipe_from_dict
from edgedistill.stages.distill import Distiller
from edgedistill.stages.export import export_onnx

INPUT = {"channels": 3, "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
CLASSES = [f"class{i}" for i in range(10)]


class TinyVendorNet(nn.Module):
    """Stands in for a vendor model: it ends in Softmax, so the teacher must read the logits before it."""

    def __init__(self, softmax: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)
        self.softmax = softmax

    def forward(self, x):
        logits = self.fc(self.body(x))
        return logits.softmax(1) if self.softmax else logits


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """On shared cores one intra-op thread is several times faster than two fighting over them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A 10-class resnet18 at 32x32 RGB saved in every format, with the logits each copy must reproduce."""
    folder = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
    state = model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "plain.safetensors"))
    torch.save(state, folder / "plain.pth")
    torch.save({"epoch": 7, "optimizer": {}, "state_dict": state}, folder / "nested.pth")
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, folder / "ddp.pt")
    torch.save(model, folder / "whole.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, x[:1]), str(folder / "scripted.pt"))
    export_onnx(model, InputSpec(**INPUT), folder / "teacher.onnx", CLASSES)
    vendor = TinyVendorNet(softmax=True).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            vendor, (x[:1],), str(folder / "vendor.onnx"), input_names=["image"], output_names=["prob"], opset_version=17, dynamo=False
        )
        vendor.softmax = False
        vendor_logits = vendor(x)
    return {"dir": folder, "model": model, "x": x, "logits": logits, "vendor_logits": vendor_logits}


def recipe(base: Path, teacher: dict, student: dict | None = None, **extra):
    data = {
        "name": "formats",
        "teacher": teacher,
        "pool": [{"builtin": "natural-patches", "count": 300}],
        "student": student or {"arch": "torchvision:resnet18"},
        **extra,
    }
    return recipe_from_dict(data, base_dir=base, source="r.yaml")


def torchvision_teacher(weights: str, **overrides) -> dict:
    return {"arch": "torchvision:resnet18", "weights": weights, "input": INPUT, "num_classes": 10, **overrides}


def logits_of(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(x)


def bad_input(fn) -> str:
    with pytest.raises(BadInput) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ---- every format, same logits ---------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["plain.safetensors", "plain.pth", "nested.pth", "ddp.pt"])
def test_state_dict_files_reproduce_the_logits(zoo, weights):
    teacher = load_teacher(recipe(zoo["dir"], torchvision_teacher(weights)))
    assert torch.equal(logits_of(teacher, zoo["x"]), zoo["logits"])


def test_torchscript_teacher_reproduces_the_logits_and_taps_them(zoo):
    teacher = load_teacher(recipe(zoo["dir"], {"arch": "torchscript", "weights": "scripted.pt", "input": INPUT, "num_classes": 10}))
    tap = FeatureTap(teacher)
    logits = logits_of(teacher, zoo["x"])
    torch.testing.assert_close(logits, zoo["logits"])
    assert torch.equal(tap.features, logits)


def test_onnx_teacher_takes_input_and_classes_from_the_file(zoo):
    r = recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx"})
    assert r.teacher.input.model_dump() == INPUT and r.teacher.num_classes == 10 and r.teacher.class_names == CLASSES
    teacher = load_teacher(r)
    tap = FeatureTap(teacher)
    torch.testing.assert_close(logits_of(teacher, zoo["x"]), zoo["logits"], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        penultimate = torch.flatten(zoo["model"].avgpool(nn.Sequential(*list(zoo["model"].children())[:-2])(zoo["x"])), 1)
    torch.testing.assert_close(tap.features, penultimate, atol=1e-4, rtol=1e-4)


def test_onnx_named_tensor_is_an_extra_output(zoo):
    r = recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx", "feature_layer": "/layer4/layer4.1/relu_1/Relu"})
    teacher = load_teacher(r)
    tap = FeatureTap(teacher)
    logits_of(teacher, zoo["x"])
    assert tap.features.shape == (3, 512)
    message = bad_input(
        lambda: load_teacher(recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx", "feature_layer": "/layer4/relu"}))
    )
    assert "has no tensor '/layer4/relu'" in message and "did you mean" in message


def test_vendor_onnx_softmax_tail_and_fixed_batch(zoo):
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx"}))
    assert "teacher.input: required key is missing: mean, std" in message and "add teacher.input.mean and teacher.input.std" in message
    teacher = load_teacher(recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx", "input": INPUT}))
    tap = FeatureTap(teacher)
    torch.testing.assert_close(logits_of(teacher, zoo["x"]), zoo["vendor_logits"], atol=1e-5, rtol=1e-5)
    assert tap.features.shape == (3, 8)


def test_vendor_onnx_with_only_mean_and_std_takes_channels_and_size_from_the_file(zoo, tmp_path):
    """A vendor ONNX model carries its input shape but no normalisation: the recipe gives only what the file lacks."""
    r = recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx", "input": {"mean": INPUT["mean"], "std": INPUT["std"]}})
    assert r.teacher.input.model_dump() == INPUT and r.teacher.num_classes == 10
    torch.testing.assert_close(logits_of(load_teacher(r), zoo["x"]), zoo["vendor_logits"], atol=1e-5, rtol=1e-5)
    only_mean = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx", "input": {"mean": INPUT["mean"]}}))
    assert "teacher.input: required key is missing: std" in only_mean and "add teacher.input.std" in only_mean
    wrong_count = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx", "input": {"mean": [0.5], "std": [0.25]}}))
    assert "channels, size from vendor.onnx" in wrong_count and "mean needs 3 value(s)" in wrong_count
    wrong_size = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "vendor.onnx", "input": {**INPUT, "size": 64}}))
    assert "teacher.input.size is 64 but vendor.onnx" in wrong_size and "drop teacher.input.size" in wrong_size
    # a state dict says nothing of its input: every key is asked for, by name
    partial = bad_input(lambda: recipe(zoo["dir"], torchvision_teacher("plain.safetensors", input={"size": 32})))
    assert "required key is missing: channels, mean, std" in partial


def test_run_log_and_student_json_name_the_feature_layers(zoo, tmp_path):
    data = {
        "name": "layers",
        "teacher": {"arch": "onnx", "weights": str(zoo["dir"] / "vendor.onnx"), "input": {"mean": INPUT["mean"], "std": INPUT["std"]}},
        "pool": [{"builtin": "natural-patches", "count": 100}],
        "select": {"strategy": "random", "per_class": 5, "batch_size": 100},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 16, "augment": None},
    }
    edgedistill.compress(recipe_from_dict(data, base_dir=tmp_path), run_dir=tmp_path / "run", stages=("select", "distill"))
    layers = json.loads((tmp_path / "run" / "student.json").read_text())["feature_layers"]
    assert layers["teacher"].startswith("ONNX tensor ") and layers["student"] == "fc (its input)"
    log = (tmp_path / "run" / "run.log").read_text()
    assert f"feature loss matches teacher {layers['teacher']} with student fc (its input)" in log


def test_pickled_model_is_refused_unless_trusted(zoo, caplog):
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "pickle", "weights": "whole.pt", "input": INPUT, "num_classes": 10}))
    assert "arbitrary code" in message and "trust_checkpoint" in message and "safetensors" in message
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("whole.pt"))))
    assert "arbitrary code" in message
    with caplog.at_level(logging.WARNING, logger="edgedistill"):
        teacher = load_teacher(
            recipe(zoo["dir"], {"arch": "pickle", "weights": "whole.pt", "input": INPUT, "num_classes": 10, "trust_checkpoint": True})
        )
    assert "trust_checkpoint" in caplog.text
    assert torch.equal(logits_of(teacher, zoo["x"]), zoo["logits"])


# ---- mistakes --------------------------------------------------------------------------------------------


def test_class_count_mismatch(zoo):
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("plain.safetensors", num_classes=5))))
    assert "class-count mismatch" in message and "10 outputs" in message
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx", "num_classes": 5}))
    assert "class-count mismatch" in message
    # weights of another architecture with the same class count: said so, with the first layer and both shapes
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("plain.safetensors", arch="torchvision:resnet50"))))
    assert "another architecture" in message and "class-count" not in message and "in the file" in message


def test_input_mismatch_between_recipe_and_model(zoo):
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx", "input": {**INPUT, "size": 64}}))
    assert "teacher.input.size is 64" in message and "32" in message
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "teacher.onnx", "input": {**INPUT, "mean": [0.4] * 3}}))
    assert "teacher.input.mean" in message
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "torchvision:resnet18", "pretrained": "IMAGENET1K_V1", "input": INPUT}))
    assert "teacher.input.size is 32 but torchvision ResNet18_Weights.IMAGENET1K_V1 says 224" in message
    gray = {"channels": 1, "size": 32, "mean": [0.5], "std": [0.25]}
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("plain.pth", input=gray))))
    assert "input-channel mismatch" in message


def test_pretrained_metadata_fills_the_recipe_without_download(zoo):
    r = recipe(zoo["dir"], {"arch": "torchvision:resnet18", "pretrained": "DEFAULT"})
    assert r.teacher.input.size == 224 and r.teacher.num_classes == 1000 and r.teacher.class_names[0] == "tench"


def test_missing_and_unexpected_keys_are_listed(zoo, tmp_path):
    state = zoo["model"].state_dict()
    broken = {k: v for k, v in state.items() if not k.startswith("layer4.1.bn2")} | {"extra.weight": torch.zeros(1)}
    torch.save(broken, tmp_path / "broken.pth")
    model = create_model("torchvision:resnet18", 10, 3)
    message = bad_input(lambda: load_weights(model, tmp_path / "broken.pth"))
    assert "missing keys ['layer4.1.bn2.bias'" in message and "(+1 more)" in message and "unexpected keys ['extra.weight']" in message


def test_unsupported_files(zoo, tmp_path):
    (tmp_path / "junk.bin").write_bytes(b"\x00garbage" * 100)
    message = bad_input(lambda: load_teacher(recipe(tmp_path, torchvision_teacher("junk.bin"))))
    assert "unsupported file" in message
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("teacher.onnx"))))
    assert "use arch: onnx" in message
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("scripted.pt"))))
    assert "use arch: torchscript" in message
    message = bad_input(lambda: recipe(zoo["dir"], {"arch": "onnx", "weights": "plain.pth"}))
    assert "not an ONNX model" in message


# ---- feature layers --------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer,kind", [("layer4", "module"), ("flatten", "fx node"), ("layer3.1.add", "fx node")])
def test_named_torch_feature_layers(zoo, layer, kind):
    r = recipe(
        zoo["dir"],
        torchvision_teacher("plain.safetensors", feature_layer=layer),
        {"arch": "torchvision:mobilenet_v3_small", "feature_layer": "avgpool"},
    )
    teacher, student = load_teacher(r), build_student(r)
    distiller = Distiller(teacher, student, DistillSpec(), ClassDropSpec(), r.teacher.input)
    expected_dim = 256 if layer.startswith("layer3") else 512
    assert distiller.parts["feature"].adapter.weight.shape == (expected_dim, 576)
    x = torch.randn(4, 3, 32, 32)
    parts = distiller(x)
    parts["loss"].backward()
    assert parts["feature"] > 0 and student.features[0][0].weight.grad is not None
    torch.testing.assert_close(parts["teacher_logits"], logits_of(zoo["model"], x))
    distiller.teacher_tap.remove()
    assert "forward" not in vars(teacher)


def test_fx_node_student_layer_trains_the_real_student(zoo):
    r = recipe(zoo["dir"], torchvision_teacher("plain.safetensors"), {"arch": "torchvision:resnet18", "feature_layer": "flatten"})
    student = build_student(r)
    tap = FeatureTap(student)
    student.train()
    student(torch.randn(4, 3, 32, 32)).sum().backward()
    assert tap.features.shape == (4, 512) and student.conv1.weight.grad is not None
    tap.remove()
    assert "forward" not in vars(student)


def test_wrong_layer_name_suggests_close_ones(zoo):
    message = bad_input(lambda: load_teacher(recipe(zoo["dir"], torchvision_teacher("plain.safetensors", feature_layer="layer4.1.relu2"))))
    assert "teacher.feature_layer: ResNet has no layer 'layer4.1.relu2'; did you mean" in message and "layer4.1.relu_1" in message
    message = bad_input(
        lambda: build_student(
            recipe(
                zoo["dir"],
                torchvision_teacher("plain.safetensors"),
                {"arch": "torchvision:mobilenet_v3_small", "feature_layer": "classifer.0"},
            )
        )
    )
    assert "student.feature_layer" in message and "'classifier.0'" in message
    message = bad_input(
        lambda: load_teacher(
            recipe(
                zoo["dir"], {"arch": "torchscript", "weights": "scripted.pt", "input": INPUT, "num_classes": 10, "feature_layer": "layer4"}
            )
        )
    )
    assert "TorchScript" in message


# ---- students --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch",
    ["torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "torchvision:squeezenet1_1", "torchvision:googlenet", "lenet5_half"],
)
def test_students_adapt_to_classes_and_channels(arch):
    spec = InputSpec(channels=1, size=32, mean=[0.5], std=[0.25])
    student = build_student_model(arch, 7, spec)
    with torch.no_grad():
        assert student.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 7)


def _write_module(folder: Path, source: str) -> str:
    name = f"user_nets_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_user_callables_for_teacher_and_student(zoo, tmp_path):
    name = _write_module(
        tmp_path,
        """
        import torchvision
        from torch import nn

        def teacher(num_classes):
            return torchvision.models.resnet18(num_classes=num_classes)

        def student_fixed():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))

        def not_a_model():
            return 42
    """,
    )
    (tmp_path / "w.safetensors").write_bytes((zoo["dir"] / "plain.safetensors").read_bytes())
    try:
        r = recipe(tmp_path, torchvision_teacher("w.safetensors", arch=f"{name}:teacher"), {"arch": f"{name}:student_fixed"})
        assert torch.equal(logits_of(load_teacher(r), zoo["x"]), zoo["logits"])
        gray = InputSpec(channels=1, size=32, mean=[0.5], std=[0.25])
        student = build_student_model(f"{name}:student_fixed", 10, gray, search_path=tmp_path)
        assert student(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
        assert "not a torch.nn.Module" in bad_input(lambda: create_model(f"{name}:not_a_model", 10, 3))
        assert "did you mean 'teacher'" in bad_input(lambda: create_model(f"{name}:teacher_", 10, 3))
    finally:
        sys.modules.pop(name, None)


def test_student_that_cannot_take_the_input_size():
    spec = InputSpec(channels=3, size=30, mean=[0.5] * 3, std=[0.25] * 3)
    assert "cannot be built for 10 classes at size 30" in bad_input(lambda: build_student_model("torchvision:vit_b_32", 10, spec))


def test_timm_is_optional():
    try:
        import timm  # noqa: F401
    except ImportError:
        assert "pip install timm" in bad_input(lambda: create_model("timm:resnet18", 10, 3))
    else:
        model = create_model("timm:resnet18", 10, 1)
        assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


# ---- end to end ------------------------------------------------------------------------------------------


def test_compress_with_an_onnx_teacher_and_torchvision_student(zoo, tmp_path):
    data = {
        "name": "onnx-teacher",
        "teacher": {"arch": "onnx", "weights": str(zoo["dir"] / "teacher.onnx")},
        "pool": [{"builtin": "natural-patches", "count": 300}],
        "select": {"strategy": "random", "per_class": 25, "batch_size": 100},
        "student": {"arch": "torchvision:mobilenet_v3_small"},
        "distill": {"epochs": 1, "batch_size": 32, "lr": 0.01},
        "targets": [{"name": "cpu", "threads": 1, "warmup": 1, "iterations": 5}],
    }
    report = edgedistill.compress(recipe_from_dict(data, base_dir=tmp_path), run_dir=tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["passed"] is report["passed"] is True
    assert on_disk["teacher"]["parameters"] > on_disk["student"]["parameters"] > 0
    assert len(on_disk["history"]) == 1 and "feature" in on_disk["history"][0]


# ---- vendor ONNX read as the vendor meant it --------------------------------------------------------------

GRAY = {"mean": [0.5], "std": [0.25]}


def _export(model: nn.Module, x: torch.Tensor, path: Path, outputs: list[str], opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), str(path), input_names=["image"], output_names=outputs, opset_version=opset, dynamo=False)
    return path


class RawPixelNet(nn.Module):
    """Takes uint8 pixels (0-255) and normalizes inside, as many vendor exports do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.net = TinyVendorNet()

    def forward(self, x):
        return self.net((x.float() / 255 - 0.5) / 0.25)


class ChannelsLastNet(nn.Module):
    """Takes NHWC (N, 28, 28, 1), as TensorFlow exports do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(x.permute(0, 3, 1, 2)))


class TwoHeadNet(TinyVendorNet):
    """Features first, class scores second."""

    def forward(self, x):
        features = self.body(x)
        return features, self.fc(features)


class HandSoftmaxNet(TinyVendorNet):
    """Probabilities from Exp and Div, no Softmax node: only the numbers say what they are."""

    def forward(self, x):
        e = torch.exp(self.fc(self.body(x)))
        return e / e.sum(1, keepdim=True)


def test_integer_input_is_fed_raw_pixels_without_normalization(tmp_path, caplog):
    model = RawPixelNet().eval()
    pixels = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    _export(model, pixels[:1], tmp_path / "raw.onnx", ["scores"])
    with torch.no_grad():
        expected = model(pixels)
    # no mean/std in the recipe nor the file: the model normalizes itself, so none is asked for
    r = recipe(tmp_path, {"arch": "onnx", "weights": "raw.onnx"})
    assert r.teacher.input.channels == 3 and r.teacher.input.size == 32 and r.teacher.num_classes == 10
    with caplog.at_level(logging.INFO, logger="edgedistill"):
        teacher = load_teacher(r)
    assert caplog.text.count("raw integer pixels") == 1 and "normalization is skipped" in caplog.text
    spec = r.teacher.input
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)
    got = logits_of(teacher, (pixels.float() / 255 - mean) / std)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # mean/std in the recipe (for the student) still reach the teacher as the raw pixels
    teacher = load_teacher(recipe(tmp_path, {"arch": "onnx", "weights": "raw.onnx", "input": {"mean": INPUT["mean"], "std": INPUT["std"]}}))
    torch.testing.assert_close(logits_of(teacher, (pixels.float() / 255 - 0.5) / 0.25), expected, atol=1e-4, rtol=1e-4)


def test_softmax_through_shape_ops_gives_the_logits(tmp_path):
    """Softmax, then Reshape, Flatten and Identity: the teacher reads the scores before the Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    torch.manual_seed(3)
    weight, bias = torch.randn(10, 12), torch.randn(10)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits_raw"], transB=1),
        helper.make_node("Softmax", ["logits_raw"], ["prob"], axis=1),
        helper.make_node("Reshape", ["prob", "shape4"], ["prob4"]),
        helper.make_node("Flatten", ["prob4"], ["prob2"]),
        helper.make_node("Identity", ["prob2"], ["probabilities"]),
    ]
    inits = [
        numpy_helper.from_array(weight.numpy(), "w"),
        numpy_helper.from_array(bias.numpy(), "b"),
        numpy_helper.from_array(np.array([-1, 10, 1, 1], dtype=np.int64), "shape4"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "prob.onnx"))
    x = torch.randn(5, 3, 2, 2)
    logits = x.flatten(1) @ weight.T + bias
    teacher = load_teacher(recipe(tmp_path, {"arch": "onnx", "weights": "prob.onnx", "input": {**INPUT, "size": 2}}))
    out = logits_of(teacher, x)
    torch.testing.assert_close(out.log_softmax(1), logits.log_softmax(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((out / 4).softmax(1), (logits / 4).softmax(1), atol=1e-4, rtol=1e-4)


def test_probabilities_without_a_softmax_node_become_log_probabilities(tmp_path, zoo):
    model = HandSoftmaxNet().eval()
    path = _export(model, zoo["x"][:1], tmp_path / "hand.onnx", ["prob"])
    with torch.no_grad():
        probs = model(zoo["x"])
    teacher = load_teacher(recipe(tmp_path, {"arch": "onnx", "weights": path.name, "input": INPUT}))
    out = logits_of(teacher, zoo["x"])
    torch.testing.assert_close(out, probs.clamp_min(1e-12).log(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.softmax(1), probs, atol=1e-4, rtol=1e-4)
    assert (out <= 0).all()


def test_nhwc_input_is_read_and_transposed_once(tmp_path):
    from edgedistill.models.onnx_info import onnx_info
    from edgedistill.models.teachers import source_facts

    model = ChannelsLastNet().eval()
    x = torch.randn(3, 1, 28, 28)  # what edgedistill feeds: NCHW
    path = _export(model, x[:1].permute(0, 2, 3, 1), tmp_path / "nhwc.onnx", ["logits"])
    with torch.no_grad():
        expected = model(x.permute(0, 2, 3, 1))
    assert onnx_info(path).layout == "NHWC"
    r = recipe(tmp_path, {"arch": "onnx", "weights": "nhwc.onnx", "input": GRAY}, {"arch": "lenet5_half"})
    assert (r.teacher.input.channels, r.teacher.input.size, r.teacher.num_classes) == (1, 28, 10)
    assert source_facts(r.teacher, path).layout == "NHWC"
    torch.testing.assert_close(logits_of(load_teacher(r), x), expected, atol=1e-5, rtol=1e-5)
    assert onnx_info(zoo_free_nchw(tmp_path)).layout == "NCHW"


def zoo_free_nchw(tmp_path: Path) -> Path:
    return _export(TinyVendorNet(), torch.zeros(1, 3, 3, 3), tmp_path / "nchw3.onnx", ["logits"])


def test_teacher_output_chooses_among_several(tmp_path, zoo, caplog):
    model = TwoHeadNet().eval()
    _export(model, zoo["x"][:1], tmp_path / "two.onnx", ["features", "scores"])
    with torch.no_grad():
        _, expected = model(zoo["x"])
    chosen = recipe(tmp_path, {"arch": "onnx", "weights": "two.onnx", "input": INPUT, "output": "scores"})
    assert chosen.teacher.num_classes == 10
    torch.testing.assert_close(logits_of(load_teacher(chosen), zoo["x"]), expected, atol=1e-5, rtol=1e-5)
    # without teacher.output, the (batch, classes) output the recipe's class count matches, said in the log
    counted = recipe(tmp_path, {"arch": "onnx", "weights": "two.onnx", "input": INPUT, "num_classes": 10})
    with caplog.at_level(logging.INFO, logger="edgedistill"):
        teacher = load_teacher(counted)
    assert "output 'scores'" in caplog.text and "teacher.output" in caplog.text
    torch.testing.assert_close(logits_of(teacher, zoo["x"]), expected, atol=1e-5, rtol=1e-5)
    # no output of 7 classes: the one taken (named like scores) is named in the mismatch, with how to choose another
    message = bad_input(lambda: recipe(tmp_path, {"arch": "onnx", "weights": "two.onnx", "input": INPUT, "num_classes": 7}))
    assert "two.onnx output 'scores'" in message and "has 10; set teacher.output to one of features, scores" in message
    message = bad_input(lambda: recipe(tmp_path, {"arch": "onnx", "weights": "two.onnx", "input": INPUT, "output": "score"}))
    assert "teacher.output: two.onnx has no output 'score'; its outputs: features [1, 8], scores [1, 10]" in message
    assert "did you mean 'scores'" in message
    message = bad_input(lambda: recipe(zoo["dir"], torchvision_teacher("plain.safetensors", output="logits")))
    assert "teacher.output applies to ONNX teachers" in message


def test_external_data_missing_is_named(tmp_path, zoo):
    model = TinyVendorNet().eval()
    _export(model, zoo["x"][:1], tmp_path / "big.onnx", ["logits"])
    proto = onnx.load(str(tmp_path / "big.onnx"))
    here, moved = tmp_path / "here", tmp_path / "moved"
    here.mkdir(), moved.mkdir()
    onnx.save(proto, str(here / "big.onnx"), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    assert (here / "big.onnx.data").is_file()
    with torch.no_grad():
        expected = model(zoo["x"])
    torch.testing.assert_close(
        logits_of(load_teacher(recipe(here, {"arch": "onnx", "weights": "big.onnx", "input": INPUT})), zoo["x"]),
        expected,
        atol=1e-5,
        rtol=1e-5,
    )
    (moved / "big.onnx").write_bytes((here / "big.onnx").read_bytes())
    message = bad_input(lambda: recipe(moved, {"arch": "onnx", "weights": "big.onnx", "input": INPUT}))
    assert "big.onnx.data" in message and "missing" in message and "keep it beside big.onnx" in message
    assert "not a readable ONNX model" not in message


def _one_node_model(path: Path, op: str, opset: int) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node(op, ["flat"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 12])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.save(proto, str(path))
    return path


def test_unsupported_opset_or_operator_is_one_line(tmp_path):
    import onnxruntime

    teacher = {"arch": "onnx", "input": {**INPUT, "size": 2}}
    _one_node_model(tmp_path / "future.onnx", "Relu", 99)
    message = bad_input(lambda: load_teacher(recipe(tmp_path, {**teacher, "weights": "future.onnx"})))
    assert "future.onnx declares ONNX opset 99" in message and f"onnxruntime {onnxruntime.__version__} supports" in message
    assert "re-export" in message and "upgrade onnxruntime" in message and "ONNXRuntimeError" not in message
    _one_node_model(tmp_path / "fancy.onnx", "FancyOp", 17)
    message = bad_input(lambda: load_teacher(recipe(tmp_path, {**teacher, "weights": "fancy.onnx"})))
    assert "fancy.onnx" in message and "FancyOp" in message and "opset 17" in message and "upgrade onnxruntime" in message
    assert "ONNXRuntimeError" not in message
