"""Plugins: a package that is not edgedistill adds a runtime (with a target key of its own), a selection strategy, a
loss, a pool source kind and a teacher format through `edgedistill.plugins` entry points, and a recipe uses all five,
with no edit to edgedistill.

The package is installed the way an installer leaves it: a directory on the path with the package and a
NAME.dist-info (METADATA, entry_points.txt), which importlib.metadata reads as an installed distribution. It is put
on a fresh interpreter's path (PYTHONPATH), so the registries of this test process are never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from edgedistill import registry
from edgedistill.stages.select import STRATEGIES
from tests.remote_run import make_teacher

PLUGIN = '''
"""A toy edgedistill plugin: a strategy, a loss, a pool source kind and a teacher format (this module's register()),
and a runtime (edtoy_plugin.runtime, which registers on import)."""

import numpy as np
from pydantic import Field
from safetensors.torch import load_file

from edgedistill.inputs.pool import SOURCES, ArrayPart, PoolSource
from edgedistill.models.factory import create_model
from edgedistill.models.teachers.base import FORMATS, SourceFacts, TeacherFormat
from edgedistill.stages.losses import LOSSES, LossPart
from edgedistill.stages.select import STRATEGIES, Strategy

USED = []


class Margin(Strategy):
    """Toy: the largest margin between the teacher's first and second class, per class."""

    per_class = True

    def score(self, probs, index, seed):
        USED.append("strategy")
        top = np.sort(probs, 1)
        return top[:, -1] - top[:, -2]


class LogitL1(LossPart):
    """Toy: L1 between the student's and the teacher's logits."""

    class Params(LossPart.Params):
        scale: float = 1.0

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def compute(self, x):
        return self.scale * (x.student_logits - x.teacher_logits).abs().mean()


class NoiseSource(PoolSource):
    toy_noise: int = Field(gt=0, description="how many seeded uniform-noise images")

    def part(self, recipe, index):
        spec = recipe.teacher.input
        rng = np.random.default_rng(recipe.seed + index)
        return ArrayPart("toy_noise", rng.integers(0, 256, (self.toy_noise, spec.channels, spec.size, spec.size), dtype=np.uint8))


class LeNetStateDict(TeacherFormat):
    description = "a LeNet-5 state dict for MNIST-sized digits (toy plugin format)"

    def facts(self, spec, weights):
        return SourceFacts(self.description, channels=1, size=28, mean=[0.1307], std=[0.3081], num_classes=10)

    def load(self, spec, weights, search_path):
        model = create_model("lenet5", 10, 1)
        model.load_state_dict(load_file(str(weights)))
        return model


def register():
    STRATEGIES.register("toy_margin")(Margin)
    LOSSES.register("toy_l1")(LogitL1)
    SOURCES.register("toy_noise")(NoiseSource)
    FORMATS.register("toy_lenet")(LeNetStateDict)
'''

RUNTIME = '''
"""A toy runtime: ONNX Runtime's CPU runner on a copy of student.onnx that this plugin makes (student.toy.onnx), with
a target key of its own (toy_label) beside the threads every CPU runtime takes."""

import onnx
from pydantic import Field

from edgedistill.backends import Artifact, Runtime, RuntimeOptions, register_runtime, runtime_options, threads_option
from edgedistill.backends.onnxruntime import OnnxRuntimeRunner
from edgedistill.backends.runtime import INT8_CPU


def marked_copy(x):
    model = onnx.load(str(x.fp32))
    mark = model.metadata_props.add()
    mark.key, mark.value = "toy", "made by edtoy_plugin"
    onnx.save(model, str(x.out))
    return {"bytes": x.out.stat().st_size}


OPENED = []  # (file name, its toy mark, the target's toy_label) of each model this runtime opened


class ToyOptions(RuntimeOptions):
    toy_label: str = Field("unlabelled", title="the toy's label", description="what the toy runtime records of each model it opens")
    threads: int = threads_option("the toy runtime")


class ToyRunner(OnnxRuntimeRunner):
    name = "toy_ort"


def open_runner(target, model):
    options = runtime_options(target)
    OPENED.append((model.name, {p.key: p.value for p in onnx.load(str(model)).metadata_props}.get("toy"), options.toy_label))
    return ToyRunner(model, options.threads)


def probe():
    return {"usable": True, "detail": "toy: onnxruntime underneath"}


RUNTIME = register_runtime(
    Runtime(
        "toy_ort",
        "Toy: ONNX Runtime's CPU on a marked copy of the student",
        open_runner,
        probe,
        install="pip install edtoy-plugin",
        artifacts={"fp32": Artifact("student.toy.onnx", marked_copy), "int8": INT8_CPU},
        options=ToyOptions,
    )
)
'''

ENTRY_POINTS = """
[edgedistill.plugins]
toy = edtoy_plugin:register
toy_runtime = edtoy_plugin.runtime
"""


def install_plugin(site: Path, entry_points: str = ENTRY_POINTS) -> Path:
    """edtoy_plugin as an installer leaves it in site-packages: the package and its .dist-info."""
    package = site / "edtoy_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (package / "runtime.py").write_text(textwrap.dedent(RUNTIME))
    info = site / "edtoy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edtoy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points.lstrip())
    return site


CHECK = """
import json, sys
from pathlib import Path

import edgedistill
from edgedistill.backends import RUNTIMES
from edgedistill.doctor import collect_facts
from edgedistill.extensions import recipe_schema

recipe, run = sys.argv[1], Path(sys.argv[2])
schema = recipe_schema()["$defs"]
facts = collect_facts()
report = edgedistill.compress(recipe, run)
import edtoy_plugin, edtoy_plugin.runtime
print(json.dumps({
    "runtimes": list(RUNTIMES),
    "schema_runtimes": list(recipe_schema()["properties"]["targets"]["items"]["discriminator"]["mapping"]),
    "schema_toy_keys": sorted(set(schema["Target_toy_ort"]["properties"]) - set(schema["Target_tensorrt"]["properties"])),
    "schema_strategies": schema["SelectSpec"]["properties"]["strategy"]["enum"],
    "schema_losses": list(schema["DistillSpec"]["properties"]["loss"]["properties"]),
    "schema_formats": schema["TeacherSpec"]["properties"]["arch"]["examples"],
    "doctor_toy": facts["runtimes"]["toy_ort"],
    "doctor_plugins": facts["plugins"],
    "used": sorted(set(edtoy_plugin.USED)),
    "opened": sorted(set(map(tuple, edtoy_plugin.runtime.OPENED))),
}))
"""


def run_python(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])]), "OMP_NUM_THREADS": "1"}
    env.pop("EDGEDISTILL_NO_PLUGINS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)


def test_a_plugin_package_adds_every_kind_and_a_recipe_uses_them(tmp_path):
    site = install_plugin(tmp_path / "site")
    recipe = {
        "name": "plugins",
        "teacher": {"arch": "toy_lenet", "weights": str(make_teacher(tmp_path / "teacher.safetensors"))},
        "pool": [{"toy_noise": 64}, {"builtin": "sklearn-digits", "count": 300}],
        "select": {"strategy": "toy_margin", "per_class": 15, "batch_size": 64},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 32, "augment": None, "loss": {"kd": 1.0, "toy_l1": {"weight": 0.1, "scale": 2}}},
        "export": {"teacher": False},
        "targets": [
            {
                "name": "toy",
                "runtime": "toy_ort",
                "toy_label": "from the recipe",  # the plugin runtime's own key
                "threads": 1,
                "warmup": 2,
                "iterations": 20,
                "rounds": 1,
                "batch_sizes": [1],
                "also_time": ["int8"],
            }
        ],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = run_python(site, "-c", CHECK, str(path), str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # every registry reader sees the plugin's entries: the runtime table, the recipe schema, doctor
    assert out["runtimes"][-1] == "toy_ort" and out["schema_runtimes"] == out["runtimes"]
    assert out["schema_toy_keys"] == ["threads", "toy_label"]  # its branch of the targets' union offers its own keys
    assert "toy_margin" in out["schema_strategies"] and "toy_l1" in out["schema_losses"] and "toy_lenet" in out["schema_formats"]
    assert out["doctor_toy"]["usable"] and out["doctor_plugins"] == {
        "loaded": {"toy": "edtoy_plugin:register", "toy_runtime": "edtoy_plugin.runtime"},
        "failed": {},
    }
    # and the run used each of them: the strategy scored, the pool source fed it, the runtime ran the file it makes
    assert out["used"] == ["strategy"]
    run = tmp_path / "run"
    selection = json.loads((run / "selection.json").read_text())
    assert "toy_noise" in json.dumps(selection)
    assert (run / "student.toy.onnx").is_file() and (run / "student.int8.onnx").is_file()
    assert out["opened"] == [
        ["student.int8.onnx", None, "from the recipe"],
        ["student.toy.onnx", "made by edtoy_plugin", "from the recipe"],
    ]
    assert "toy" in json.loads((run / "report.json").read_text())["targets"][0].values()

    # the CLI's help lists the plugin's runtime from the table
    help_text = run_python(site, "-m", "edgedistill", "validate", "--help")
    assert help_text.returncode == 0 and "toy_ort" in help_text.stdout, help_text.stdout + help_text.stderr


def test_a_broken_plugin_is_a_warning_and_a_doctor_line_not_a_failure(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "edtoy_broken-0.1.dist-info").mkdir(parents=True)
    (site / "edtoy_broken-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: edtoy-broken\nVersion: 0.1\n")
    (site / "edtoy_broken-0.1.dist-info" / "entry_points.txt").write_text(
        "[edgedistill.plugins]\nbroken = edtoy_missing_module\nfine = edtoy_fine:register\n"
    )
    (site / "edtoy_fine.py").write_text(
        "from edgedistill.stages.select import STRATEGIES, Balanced\n\n"
        "def register():\n    STRATEGIES.register('toy_fine')(type('Fine', (Balanced,), {'__doc__': 'Toy.'}))\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_plugins_state", {"loaded": False})
    monkeypatch.setattr(registry, "PLUGINS", {})
    monkeypatch.setattr(registry, "PLUGIN_ERRORS", {})
    try:
        with pytest.warns(UserWarning, match=r"plugin broken = edtoy_missing_module \(from edtoy-broken\) did not load"):
            assert "toy_fine" in STRATEGIES  # the first read loads the plugins; the broken one does not stop the rest
        assert registry.PLUGINS == {"fine": "edtoy_fine:register"}
        assert "ModuleNotFoundError" in registry.PLUGIN_ERRORS["broken"]
        assert registry.load_plugins() == []  # once per process
    finally:
        STRATEGIES._entries.pop("toy_fine", None)
