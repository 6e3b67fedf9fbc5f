"""The package's shape: imports point down the layers with no circle, extensions come from their registries, and
every reader decodes an image file the same way."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgedistill.backends import RUNTIMES
from edgedistill.errors import BadInput
from edgedistill.extensions import check_recipe, recipe_schema
from edgedistill.inputs.images import decode_image, sample_folder
from edgedistill.inputs.labeled import read_class_folders
from edgedistill.inputs.pool import SOURCES, FolderPart
from edgedistill.models.factory import ARCH_SOURCES
from edgedistill.models.teachers import FORMATS
from edgedistill.recipe import recipe_from_dict
from edgedistill.registry import Registry
from edgedistill.stages.class_drop import CLASS_DROPS
from edgedistill.stages.losses import LOSSES, LossPart
from edgedistill.stages.refine import REFINE_TARGETS
from edgedistill.stages.select import STRATEGIES, Strategy

PACKAGE = Path(__file__).resolve().parents[1] / "edgedistill"

# Bottom to top: a module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("foundation", ("errors", "atomic", "registry", "version")),
    # the recipe's models and its parsing (YAML, upgrade, --set, the schema): nothing that looks past the recipe's text
    ("config", ("config",)),
    ("inputs", ("inputs",)),
    ("models", ("models",)),
    ("scale", ("scale",)),
    # the export functions a runtime row names as the makers of the files it runs (backends/runtime.py) sit with the
    # backends: they import nothing above them
    ("backends", ("backends", "stages.quantize", "stages.fp16")),
    ("results", ("results",)),
    ("stages", ("stages",)),
    ("extensions", ("extensions",)),  # every registry, read: the recipe's extension names checked, its JSON Schema
    # the checked recipe: parse, pool sources, files, teacher completion, student, registries; what pipeline and cli load
    ("recipe", ("recipe",)),
    ("composition", ("pipeline", "doctor")),
    ("cli", ("cli", "__main__", "")),
]


def layer_of(module: str) -> int:
    name = module.removeprefix("edgedistill").lstrip(".")
    best = max(
        ((i, len(p)) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes if name == p or (p and name.startswith(p + "."))),
        key=lambda x: x[1],
        default=None,
    )
    assert best is not None, f"{module} belongs to no layer; add it to LAYERS"
    return best[0]


def import_graph() -> dict[str, set[str]]:
    """Every edgedistill module and the edgedistill modules it imports, lazily inside functions too."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.startswith("edgedistill"):
                    found.add(base)
                    found |= {
                        f"{base}.{a.name}"
                        for a in node.names
                        if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).exists()
                        or (PACKAGE.parent / (f"{base}.{a.name}".replace(".", "/") + ".py")).exists()
                    }
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("edgedistill")}
        graph[module] = found - {module}
    return graph


def test_imports_point_down_the_layers():
    graph = import_graph()
    assert {"edgedistill.stages.distill", "edgedistill.results.report"} <= graph["edgedistill.pipeline"]  # the graph is read
    assert {"edgedistill.config.load", "edgedistill.inputs.pool", "edgedistill.models.teachers", "edgedistill.extensions"} <= graph[
        "edgedistill.recipe"
    ]
    wrong = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {i} ({LAYERS[layer_of(i)][0]})"
        for m, imports in graph.items()
        for i in imports
        if layer_of(i) > layer_of(m)
    ]
    assert not wrong, "\n".join(wrong)


def test_config_is_parsing_only():
    """config/ (schema, load, upgrade) reads the recipe's text alone: the pool's kinds, the files, the teacher, the
    student and the registries are edgedistill.recipe's, above inputs, models, stages and backends."""
    graph = import_graph()
    config = {m: imports for m, imports in graph.items() if m == "edgedistill.config" or m.startswith("edgedistill.config.")}
    assert {"edgedistill.config.load", "edgedistill.config.schema", "edgedistill.config.upgrade"} <= set(config)
    above = ("inputs", "models", "stages", "backends", "scale", "results", "extensions", "recipe", "pipeline", "cli", "doctor")
    wrong = [f"{m} imports {i}" for m, imports in config.items() for i in imports if i.removeprefix("edgedistill.").split(".")[0] in above]
    assert not wrong, "\n".join(wrong)
    order = [name for name, _ in LAYERS]
    assert order.index("config") < order.index("inputs") < order.index("models") < order.index("stages")
    assert order.index("stages") < order.index("extensions") < order.index("recipe") < order.index("composition")


def test_no_import_circle():
    graph = import_graph()
    modules = {m: {i for i in imports if i in graph} for m, imports in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for i in sorted(modules[m]):
            if i.startswith(m + "."):  # a package's __init__ importing its own modules is not a circle
                continue
            assert state.get(i) != 1, "import circle: " + " -> ".join(trail[trail.index(i) :] + [i]) if i in trail else i
            if i not in state:
                visit(i, trail + [i])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


def demo_recipe(**changes) -> dict:
    data = {
        "name": "t",
        "teacher": {"arch": "lenet5", "num_classes": 10, "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]}},
        "pool": [{"builtin": "sklearn-digits", "count": 200}],
        "student": {"arch": "lenet5_half"},
    }
    return {**data, **changes}


def test_a_registered_strategy_and_loss_reach_the_recipe_and_its_schema():
    @STRATEGIES.register("least_confident")
    class LeastConfident(Strategy):
        """Test-only: the least confident images."""

        def score(self, probs, index, seed):
            return -probs.max(1)

    @LOSSES.register("logit_l1")
    class LogitL1(LossPart):
        """Test-only: L1 between logits."""

        class Params(LossPart.Params):
            scale: float = 1.0

        def __init__(self, scale: float = 1.0):
            super().__init__()
            self.scale = scale

        def compute(self, x):
            return self.scale * (x.student_logits - x.teacher_logits).abs().mean()

    try:
        schema = recipe_schema()
        assert "least_confident" in schema["$defs"]["SelectSpec"]["properties"]["strategy"]["enum"]
        loss = schema["$defs"]["DistillSpec"]["properties"]["loss"]["properties"]["logit_l1"]
        assert "scale" in loss["anyOf"][1]["properties"]
        recipe = recipe_from_dict(  # the checked loading ends with the registries' check
            demo_recipe(select={"strategy": "least_confident"}, distill={"loss": {"kd": 1.0, "logit_l1": {"weight": 0.5, "scale": 2}}})
        )
        check_recipe(recipe)  # and it stands on its own too
        with pytest.raises(BadInput, match=r"distill.loss.logit_l1.scal: unknown parameter \(parameters: weight, scale\)"):
            recipe_from_dict(demo_recipe(distill={"loss": {"logit_l1": {"scal": 2}}}))
    finally:
        STRATEGIES._entries.pop("least_confident")
        LOSSES._entries.pop("logit_l1")


def test_every_extension_point_is_a_registry_and_each_runtime_row_owns_its_runtime():
    """Runtimes, strategies, losses, teacher formats and pool sources are Registries (so a plugin adds to each the
    same way); a runtime row says, itself, the file it runs at each precision and how it is made, and what to install."""
    registries = (RUNTIMES, STRATEGIES, LOSSES, FORMATS, SOURCES, ARCH_SOURCES, CLASS_DROPS, REFINE_TARGETS)
    assert all(isinstance(r, Registry) for r in registries)
    for name, row in RUNTIMES.items():
        assert row.name == name and row.install and row.precisions and "fp32" in row.precisions
        for precision in row.precisions:
            artifact = row.artifact_for(precision)
            assert artifact.file.startswith("student.")  # not always ONNX: litert runs .tflite files
            assert (artifact.make is None) == (artifact.file == "student.onnx")  # every other file has its maker
    files = {r.name: {p: r.artifact_for(p).file for p in r.precisions} for r in RUNTIMES.values()}
    assert files["openvino"] == {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "int8": "student.int8.onnx"}
    assert files["trtexec"] == files["tensorrt"] == {"fp32": "student.onnx", "fp16": "student.onnx", "int8": "student.int8.trt.onnx"}
    assert files["onnxruntime"] == {"fp32": "student.onnx", "int8": "student.int8.onnx"}
    assert files["litert"] == {"fp32": "student.tflite", "int8": "student.int8.tflite"}


def test_unknown_names_are_one_line_with_the_nearest():
    cases = [
        ({"select": {"strategy": "balance"}}, "select.strategy: unknown 'balance'; did you mean 'balanced'"),
        ({"distill": {"loss": {"kd": 1, "logit_l2": 1}}}, "distill.loss: unknown 'logit_l2'"),  # `temperature` here is format 1's
        ({"distill": {"loss": {"kd": 0}}}, "every weight is 0"),
        ({"targets": [{"name": "x", "runtime": "openvin"}]}, "did you mean 'openvino'"),
        ({"targets": [{"name": "x", "runtime": "onnxruntime", "precision": "fp16"}]}, "needs runtime: openvino or tensorrt or trtexec"),
        ({"targets": [{"name": "x", "runtime": "openvino", "ssh": "board"}]}, "runs on this machine"),
        (
            {"targets": [{"name": "x", "runtime": "openvino", "trtexec": "/usr/bin/trtexec"}]},
            "targets.0: trtexec .the trtexec binary.: they need runtime: trtexec; runtime openvino does not read trtexec",
        ),
        ({"targets": [{"name": "x", "runtime": "tensorrt", "threads": 2}]}, "runtime tensorrt does not read threads"),
        ({"export": {"int8": {"enabled": False}}, "targets": [{"name": "x", "precision": "int8"}]}, "needs the INT8 model"),
    ]
    for changes, needle in cases:
        with pytest.raises(BadInput, match=needle.replace("(", r"\(")) as info:
            recipe_from_dict(demo_recipe(**changes), source="r.yaml")
        assert str(info.value).startswith("r.yaml: ") and "\n" not in str(info.value)
    with pytest.raises(BadInput, match=r"pool.0: a pool entry needs exactly one of `builtin:`, `folder:`, `shards:`, `manifest:`"):
        recipe_from_dict(demo_recipe(pool=[{"bultin": "sklearn-digits"}]))
    with pytest.raises(BadInput, match=r"pool.0.cout: unknown key"):
        recipe_from_dict(demo_recipe(pool=[{"builtin": "sklearn-digits", "cout": 3}]))


def test_pool_calibration_and_evaluation_decode_a_file_alike(tmp_path):
    """One decoder: a non-square photo is centre-cropped (not squashed) the same way by every reader."""
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    photo[:, :10] = 255  # a white band on the left that a centre crop cuts away and a squash would keep
    folder = tmp_path / "eval" / "3"
    folder.mkdir(parents=True)
    Image.fromarray(photo).save(folder / "photo.png")
    spec = SimpleNamespace(channels=3, size=24, mean=[0.5] * 3, std=[0.25] * 3)

    direct = decode_image(folder / "photo.png", spec)
    _, pool_images, bad = next(FolderPart("eval", tmp_path / "eval").read([(0, folder / "photo.png")], 0, spec, 8))
    calibration, _ = sample_folder(tmp_path / "eval", spec, 10)
    evaluation = read_class_folders(tmp_path / "eval", spec, None, 10)
    assert not bad and evaluation.labels.tolist() == [3]
    for images in (pool_images.numpy(), calibration, evaluation.images):
        np.testing.assert_array_equal(images[0], direct)
    centre = np.asarray(Image.fromarray(photo[:, 10:40]).resize((24, 24), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    squashed = np.asarray(Image.fromarray(photo).resize((24, 24), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(direct.astype(int) - centre).mean() < 2 < np.abs(direct.astype(int) - squashed).mean()
    assert direct[:, :, 0].mean() < 250  # the white band was cropped away
