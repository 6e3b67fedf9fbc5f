"""Bad input, table-driven: each case ends with exit 2, one `error:` line that names the problem, no traceback, and
nothing written: found before any stage runs."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml
from onnx import helper
from typer.testing import CliRunner

from edgedistill.cli import app
from tests.test_pipeline import ROOT, TEACHER, tiny_recipe


def recipe_with(tmp_path: Path, edit) -> Path:
    path = tiny_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))
    return path


def set_key(*keys_and_value):
    *keys, value = keys_and_value

    def edit(data: dict) -> None:
        node = data
        for key in keys[:-1]:
            node = node[key] if not isinstance(node, list) else node[int(key)]
        node[keys[-1]] = value

    return edit


def class_folders(tmp_path: Path, names: list[str]) -> Path:
    for name in names:
        (tmp_path / "labeled" / name).mkdir(parents=True, exist_ok=True)
    return tmp_path / "labeled"


def undecodable_folders(tmp_path: Path) -> Path:
    """A labeled folder whose every file has an image suffix but no image in it."""
    folder = tmp_path / "undecodable"
    for name in ("0", "1"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            (folder / name / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    return folder


def not_a_classifier(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])), str(path))
    return path


RECIPE_CASES = [
    ("unknown key", set_key("distill", "epochz", 3), "distill.epochz: unknown key"),
    ("wrong type", set_key("distill", "epochs", "many"), "distill.epochs: Input should be a valid integer"),
    ("unknown strategy", set_key("select", "strategy", "balance"), "did you mean 'balanced'"),
    ("unknown loss", set_key("distill", "loss", {"kd": 1, "kl": 1}), "distill.loss: unknown 'kl'"),
    ("loss parameter", set_key("distill", "loss", {"kd": {"temp": 2}}), "distill.loss.kd.temp: unknown parameter"),
    ("unknown runtime", set_key("targets", "0", "runtime", "tensorrtt"), "did you mean 'tensorrt'"),
    ("precision the runtime lacks", set_key("targets", "0", "precision", "fp16"), "precision fp16 needs runtime"),
    ("student arch", set_key("student", "arch", "lenet6_half"), "student.arch: unknown architecture 'lenet6_half'"),
    ("student feature layer", set_key("student", "feature_layer", "fc9"), "student.arch: student.feature_layer"),
    ("teacher weights missing", set_key("teacher", "weights", "/nonexistent/t.safetensors"), "teacher.weights: file"),
    ("unknown built-in", lambda d: d["pool"].append({"builtin": "imagenet"}), "unknown built-in source 'imagenet'"),
    ("pool entry kind", lambda d: d["pool"].append({"url": "http://x"}), "a pool entry needs exactly one of"),
    ("missing pool folder", lambda d: d["pool"].append({"folder": "/nonexistent/images"}), "does not exist"),
    ("ssh destination", lambda d: d["targets"].append({"name": "b", "ssh": "-oProxyCommand=x"}), "not a valid ssh destination"),
    (
        "ssh config missing",
        lambda d: d["targets"].append({"name": "b", "ssh": "jetson", "ssh_config": "/nonexistent/cfg"}),
        "ssh_config: /nonexistent/cfg does not exist",
    ),
    (
        "ssh with a local-only runtime",
        lambda d: d["targets"].append({"name": "b", "ssh": "jetson", "runtime": "openvino"}),
        "runtime openvino runs on this machine",
    ),
    (
        "int8 without export",
        lambda d: (d.update(export={"int8": {"enabled": False}}), d["targets"][0].update(precision="int8")),
        "needs the INT8 model",
    ),
    ("resampling without a reservoir", set_key("distill", "resample", {"every": 2}), "set select.reservoir above 1"),
    (
        "known_hosts missing",
        lambda d: d["targets"].append({"name": "board", "ssh": "jetson", "known_hosts": "/nonexistent/known_hosts"}),
        "targets.1.known_hosts: /nonexistent/known_hosts does not exist (target board)",
    ),
    ("name is an absolute path", set_key("name", "/tmp/elsewhere"), "name: Value error, the name must be a plain name"),
    ("name climbs out of runs/", set_key("name", "../outside"), "use --run-dir DIR to choose where the run goes"),
    ("name with a separator", set_key("name", "a/b"), "name: Value error, the name must be a plain name"),
]


@pytest.mark.parametrize("name,edit,needle", RECIPE_CASES, ids=[c[0] for c in RECIPE_CASES])
def test_bad_recipe_field(tmp_path, name, edit, needle):
    recipe = recipe_with(tmp_path, edit)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(run)], terminal_width=2000)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert "Traceback" not in result.output and not run.exists()


SET_CASES = [
    ("misspelt key", "select.per_clas=5", "--set select.per_clas=5: select.per_clas: unknown key; did you mean 'per_class'? valid keys"),
    ("misspelt budget", "targets.0.budget.p99ms=1", "targets.0.budget.p99ms: unknown key; did you mean 'p99_ms'"),
    ("misspelt section", "distil.epochs=3", "--set distil.epochs=3: distil: unknown key; did you mean 'distill'?"),
    ("index past the list", "targets.3.budget.p99_ms=1", "--set targets.3.budget.p99_ms=1: targets has one entry, indexed 0 (cpu)"),
    ("wrong type", "distill.epochs=many", "--set distill.epochs=many: distill.epochs: Input should be a valid integer"),
    ("unknown strategy", "select.strategy=balance", "--set select.strategy=balance: select.strategy: unknown 'balance'; did you mean"),
    ("not key=value", "distill.epochs", "--set distill.epochs: expected section.key=value"),
    ("YAML syntax in the value", "distill.epochs=[1,", "--set distill.epochs=[1,: the value is not valid YAML"),
]


@pytest.mark.parametrize("name,item,needle", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_names_the_option_not_a_file(tmp_path, name, item, needle):
    """--set mistakes blame the option the user typed, suggest the nearest key and list the valid ones in plain words."""
    recipe = tiny_recipe(tmp_path)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(run), "--set", item], terminal_width=2000)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert "tiny.yaml" not in lines[0] and "(and " not in lines[0] and "1 entries" not in lines[0] and not run.exists()


def test_bad_set_on_a_regate_names_the_option_not_run_json(tmp_path):
    """A re-gate reads the recipe a run recorded in run.json, a file the user never edited: --set errors name --set."""
    run = tmp_path / "run"
    run.mkdir()
    recorded = yaml.safe_load(tiny_recipe(tmp_path).read_text())
    (run / "run.json").write_text(json.dumps({"recipe": recorded, "recipe_dir": str(tmp_path)}))
    for item, needle in (
        ("targets.0.budget.p99ms=1", "--set targets.0.budget.p99ms=1: targets.0.budget.p99ms: unknown key; did you mean 'p99_ms'"),
        ("targets.0.runtime=openvin", "--set targets.0.runtime=openvin: targets.0: runtime: unknown 'openvin'; did you mean 'openvino'"),
    ):
        result = CliRunner().invoke(app, ["validate", "--run-dir", str(run), "--set", item], terminal_width=2000)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0] and "run.json" not in lines[0], result.output
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]


def test_bad_files_folders_models_and_manifests(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("file\na.png\n")
    teacher_pickle = tmp_path / "whole.pt"
    teacher_pickle.write_bytes(TEACHER.read_bytes())
    cases = [
        (lambda d: d["pool"].append({"manifest": str(manifest)}), "pool.2.column: ", "no column 'path' in the CSV header"),
        (set_key("eval", {"labeled": str(class_folders(tmp_path, ["0", "cat"]))}), "eval.labeled: subfolder 'cat'", None),
        (
            set_key(
                "teacher",
                {
                    "arch": "pickle",
                    "weights": str(teacher_pickle),
                    "input": {"channels": 1, "size": 28, "mean": [0.1], "std": [0.3]},
                    "num_classes": 10,
                },
            ),
            "unpickling runs arbitrary code",
            None,
        ),
        (set_key("teacher", "arch", "torchvision:resnet50"), "holds another architecture", None),
        (set_key("eval", {"labeled": str(undecodable_folders(tmp_path))}), "eval.labeled: none of the 6 images tried", "broken"),
    ]
    for i, (edit, needle, more) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        recipe = recipe_with(folder, edit)
        result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(folder / "run")], terminal_width=2000)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0] and (more is None or more in lines[0]), result.output
        assert not (folder / "run").exists()
    yaml_error = tmp_path / "broken.yaml"
    yaml_error.write_text("name: [unclosed\n")
    result = CliRunner().invoke(app, ["compress", str(yaml_error)], terminal_width=2000)
    assert result.exit_code == 2 and "not valid YAML (line" in result.output and "Traceback" not in result.output


def test_validate_model_that_is_not_a_classifier_or_not_a_model(tmp_path):
    labeled = class_folders(tmp_path, ["0", "1"])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    for model, needle in (
        (not_a_classifier(tmp_path), "not an image classifier"),
        (garbage, "not a readable ONNX model"),
        (tmp_path / "missing.onnx", "file not found"),
    ):
        result = CliRunner().invoke(
            app,
            ["validate", str(model), "--labeled", str(labeled), "--mean", "0.5", "--std", "0.5", "--out", str(tmp_path / "out")],
            terminal_width=2000,
        )
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
        assert not (tmp_path / "out").exists()
    assert (ROOT / "recipes" / "demo.yaml").is_file()


def vendor_onnx(folder: Path, opset: int = 17, external: bool = False) -> Path:
    """A 28x28 grayscale 10-class ONNX classifier (Flatten, Gemm), optionally with its weights in model.onnx.data."""
    import numpy as np
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32), "w")]
    weights.append(numpy_helper.from_array(np.zeros(10, np.float32), "b"))
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"]), helper.make_node("Gemm", ["flat", "w", "b"], ["logits"])],
        "vendor",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 10])],
        weights,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    path = folder / "model.onnx"
    onnx.save(proto, str(path), save_as_external_data=external, location="model.onnx.data", size_threshold=0)
    return path


def test_vendor_onnx_teacher_mistakes_are_one_line(tmp_path):
    """A vendor ONNX teacher moved without its external data, given an unknown output or a newer opset than this
    onnxruntime runs: exit 2, one line, found when the recipe loads, before any stage."""
    gray = {"mean": [0.1307], "std": [0.3081]}
    external = tmp_path / "external"
    external.mkdir()
    moved = vendor_onnx(external, external=True)
    (external / "model.onnx.data").unlink()
    future = tmp_path / "future"
    future.mkdir()
    cases = [
        ({"arch": "onnx", "weights": str(moved), "input": gray}, "model.onnx.data, which is missing", "keep it beside model.onnx"),
        ({"arch": "onnx", "weights": str(vendor_onnx(tmp_path)), "input": gray, "output": "logit"}, "has no output 'logit'", "'logits'"),
        ({"arch": "onnx", "weights": str(vendor_onnx(future, opset=99)), "input": gray}, "declares ONNX opset 99", "upgrade onnxruntime"),
    ]
    for i, (teacher, needle, more) in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        recipe = recipe_with(folder, set_key("teacher", teacher))
        result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(folder / "run")], terminal_width=2000)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0] and more in lines[0], result.output
        assert lines[0].startswith("error: ") and "Traceback" not in result.output and not (folder / "run").exists()
