"""Class-drop modes, refine targets and architecture sources are Registries like every other extension point: an
entry registered here (or by a plugin's entry point) is named by a recipe, offered by the recipe schema and used by
the run; a mistyped name is one line with the nearest one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from edgedistill.errors import BadInput
from edgedistill.extensions import recipe_schema
from edgedistill.inputs.builtin import load_builtin
from edgedistill.inputs.images import convert_array
from edgedistill.models.checkpoint import load_weights
from edgedistill.models.factory import ARCH_SOURCES, ArchSource, build_student_model, create_model
from edgedistill.models.zoo import LeNet5
from edgedistill.recipe import recipe_from_dict
from edgedistill.stages.class_drop import CLASS_DROPS, ClassDrop, class_drop
from edgedistill.stages.distill import distill
from edgedistill.stages.refine import REFINE_TARGETS, RefineTarget
from tests.remote_run import make_teacher

INPUT = {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]}


def demo_recipe(**changes) -> dict:
    data = {
        "name": "t",
        "teacher": {"arch": "lenet5", "num_classes": 10, "input": INPUT},
        "pool": [{"builtin": "sklearn-digits", "count": 200}],
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 32, "augment": None},
    }
    return {**data, **changes}


def train_one_epoch(recipe, tmp_path: Path) -> None:
    """distill() on 64 digits with the recipe's distill and class_drop sections, as the pipeline calls it."""
    teacher = load_weights(create_model("lenet5", 10, 1), make_teacher(tmp_path / "teacher.safetensors")).eval()
    images = convert_array(load_builtin("sklearn-digits", count=64, seed=0).images, recipe.teacher.input)
    student = build_student_model(recipe.student.arch, 10, recipe.teacher.input)
    distill(teacher, student, images, recipe.distill, recipe.class_drop, recipe.teacher.input, recipe.seed)


def test_a_registered_class_drop_mode_is_used_from_a_recipe(tmp_path):
    used = []

    @CLASS_DROPS.register("toy_top1")
    class TopOne(ClassDrop):
        """Test-only: each soft label's most likely class alone (hard labels)."""

        def kept(self, probs, spec):
            used.append(probs.shape)
            return torch.zeros_like(probs)  # nothing: each row keeps its most likely class

    try:
        assert "toy_top1" in recipe_schema()["$defs"]["ClassDropSpec"]["properties"]["mode"]["enum"]
        recipe = recipe_from_dict(demo_recipe(class_drop={"mode": "toy_top1"}))
        probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
        assert torch.equal(class_drop(probs, recipe.class_drop), torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
        used.clear()
        train_one_epoch(recipe, tmp_path)
        assert used and all(shape[1] == 10 for shape in used)  # every training step's soft labels went through it
    finally:
        CLASS_DROPS.unregister("toy_top1")


def test_a_registered_refine_target_is_used_from_a_recipe(tmp_path):
    chosen = []

    @REFINE_TARGETS.register("toy_third")
    class ThirdChoice(RefineTarget):
        """Test-only: the teacher's third choice."""

        def choose(self, teacher_logits, generator, class_weights):
            chosen.append(teacher_logits.topk(3, 1).indices[:, 2])
            return chosen[-1]

    try:
        assert "toy_third" in recipe_schema()["$defs"]["RefineSpec"]["properties"]["target"]["enum"]
        recipe = recipe_from_dict(demo_recipe(distill={**demo_recipe()["distill"], "refine": {"steps": 1, "target": "toy_third"}}))
        train_one_epoch(recipe, tmp_path)
        assert len(chosen) == 2 and all(len(c) == 32 for c in chosen)  # each batch of the epoch moved toward it
    finally:
        REFINE_TARGETS.unregister("toy_third")


def test_a_registered_architecture_source_is_used_from_a_recipe():
    built = []

    @ARCH_SOURCES.register("toyzoo")
    class ToyZoo(ArchSource):
        """Test-only: LeNet-5 at the width its name says (toyzoo:w0.25)."""

        def build(self, name, num_classes, in_channels, image_size, search_path):
            built.append(name)
            return LeNet5(num_classes, in_channels, float(name.removeprefix("w")))

    try:
        assert "toyzoo:NAME" in recipe_schema()["$defs"]["TeacherSpec"]["properties"]["arch"]["examples"]
        recipe = recipe_from_dict(demo_recipe(student={"arch": "toyzoo:w0.25"}))
        model = build_student_model(recipe.student.arch, 10, recipe.teacher.input)
        assert isinstance(model, LeNet5) and model.fc.in_features == 21 and "w0.25" in built
        # the unknown-name message lists it beside the built-in prefixes
        with pytest.raises(BadInput, match=r"or torchvision:NAME, timm:NAME, toyzoo:NAME, module.path:callable"):
            create_model("lenet6", 10, 1)
    finally:
        ARCH_SOURCES.unregister("toyzoo")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"class_drop": {"mode": "top_kk"}}, "class_drop.mode: unknown 'top_kk'; did you mean 'top_k'"),
        ({"distill": {"refine": {"target": "argmx"}}}, "distill.refine.target: unknown 'argmx'; did you mean 'argmax'"),
        ({"student": {"arch": "lenet6_half"}}, "unknown architecture 'lenet6_half'; did you mean 'lenet5_half'"),
        ({"student": {"arch": "torchvison:resnet18"}}, "cannot import torchvison .*; did you mean 'torchvision'"),
    ],
)
def test_a_mistyped_name_is_one_line_with_the_nearest(changes, message):
    with pytest.raises(BadInput, match=message) as caught:
        recipe_from_dict(demo_recipe(**changes), source="r.yaml")
    assert str(caught.value).startswith("r.yaml: ") and "\n" not in str(caught.value)


PLUGIN = '''
"""A plugin that adds a class-drop mode, a refine target and an architecture source."""

import torch

from edgedistill.models.factory import ARCH_SOURCES, ArchSource
from edgedistill.models.zoo import LeNet5
from edgedistill.stages.class_drop import CLASS_DROPS, ClassDrop
from edgedistill.stages.refine import REFINE_TARGETS, RefineTarget


class TopOne(ClassDrop):
    def kept(self, probs, spec):
        return torch.zeros_like(probs)


class ThirdChoice(RefineTarget):
    def choose(self, teacher_logits, generator, class_weights):
        return teacher_logits.topk(3, 1).indices[:, 2]


class MyZoo(ArchSource):
    def build(self, name, num_classes, in_channels, image_size, search_path):
        return LeNet5(num_classes, in_channels, float(name.removeprefix("w")))


def register():
    CLASS_DROPS.register("my_top1")(TopOne)
    REFINE_TARGETS.register("my_third")(ThirdChoice)
    ARCH_SOURCES.register("myzoo")(MyZoo)
'''

CHECK = """
import json
from edgedistill.extensions import recipe_schema
from edgedistill.models.factory import build_student_model
from edgedistill.recipe import recipe_from_dict

recipe = recipe_from_dict(json.loads(input()))
defs = recipe_schema()["$defs"]
student = build_student_model(recipe.student.arch, 10, recipe.teacher.input)
print(json.dumps({
    "modes": defs["ClassDropSpec"]["properties"]["mode"]["enum"],
    "targets": defs["RefineSpec"]["properties"]["target"]["enum"],
    "archs": defs["TeacherSpec"]["properties"]["arch"]["examples"],
    "student_fc": student.fc.in_features,
}))
"""


def test_a_plugin_package_adds_each_by_its_entry_point(tmp_path):
    """As tests/test_plugins.py installs its toy plugin: a package and its .dist-info on a fresh interpreter's path."""
    site = tmp_path / "site"
    (site / "edmy_plugin").mkdir(parents=True)
    (site / "edmy_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "edmy_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: edmy-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgedistill.plugins]\nmine = edmy_plugin:register\n")
    recipe = demo_recipe(
        student={"arch": "myzoo:w0.5"},
        class_drop={"mode": "my_top1"},
        distill={"refine": {"target": "my_third"}},
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).resolve().parents[1])]), "OMP_NUM_THREADS": "1"}
    env.pop("EDGEDISTILL_NO_PLUGINS", None)
    done = subprocess.run([sys.executable, "-c", CHECK], input=json.dumps(recipe), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["modes"] == ["top_k", "min_prob", "none", "my_top1"]
    assert out["targets"] == ["random", "argmax", "second", "rare", "disagreement", "my_third"]
    assert out["archs"][-5:] == ["lenet5", "torchvision:resnet18", "timm:resnet18", "mypkg.nets:build", "myzoo:NAME"]
    assert out["student_fc"] == 42  # LeNet-5 at half width: 84 / 2
