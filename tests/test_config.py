"""Parsing (config.load) and the checked recipe (edgedistill.recipe): loading changes nothing it was given, runs each
check once, and the pipeline does not check a loaded recipe again (#26)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import edgedistill.recipe as checked_loading
from edgedistill.cli import app
from edgedistill.config.load import parse_recipe
from edgedistill.config.schema import InputSpec, PoolEntry
from edgedistill.errors import BadInput
from edgedistill.inputs.pool import BuiltinSource
from edgedistill.models.factory import create_model
from edgedistill.recipe import checked_recipe, load_recipe, recipe_for_regate, recipe_from_dict, recipe_with_overrides
from edgedistill.stages.export import export_onnx

ROOT = Path(__file__).resolve().parents[1]
SPEC = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory) -> Path:
    """An untrained LeNet-5 as ONNX: its file says the input and three class names, the recipe need not."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "teacher.onnx"
    return export_onnx(create_model("lenet5", 3, 1).eval(), SPEC, path, ["a", "b", "c"])


def onnx_recipe(teacher: Path, **changes) -> dict:
    data = {
        "name": "t",
        "teacher": {"arch": "onnx", "weights": str(teacher)},
        "pool": [{"builtin": "sklearn-digits", "count": 200}],
        "student": {"arch": "lenet5_half"},
    }
    return {**data, **changes}


def test_loading_changes_nothing_it_was_given(onnx_teacher):
    """The pool's kinds and the completed teacher come out in a new Recipe; the caller's dict and Recipe stay as they were."""
    data = onnx_recipe(onnx_teacher)
    before = copy.deepcopy(data)
    raw = parse_recipe(data, source="r.yaml")  # parsing alone: pool entries as written, the teacher as the recipe says it
    assert type(raw.pool[0]) is PoolEntry and raw.teacher.input is None and raw.teacher.num_classes is None
    checked = checked_recipe(raw, "r.yaml")
    assert checked is not raw and isinstance(checked.pool[0], BuiltinSource)
    assert checked.teacher.input == SPEC and checked.teacher.class_names == ["a", "b", "c"] and checked.teacher.num_classes == 3
    assert type(raw.pool[0]) is PoolEntry and raw.teacher.input is None and raw.teacher.num_classes is None  # untouched
    assert checked_recipe(checked) is checked  # loaded once: not checked again
    assert checked_recipe(checked.model_copy(update={"seed": 3}))._checked  # model_copy keeps the mark (updates go unvalidated)
    loaded = recipe_from_dict(data, source="r.yaml")
    assert data == before and loaded._checked and loaded.model_dump() == checked.model_dump()
    again = recipe_with_overrides(loaded, ["seed=5"])
    assert again.seed == 5 and loaded.seed == 0 and isinstance(loaded.pool[0], BuiltinSource)


def test_a_completed_teacher_is_not_completed_again_at_teacher_load(onnx_teacher, monkeypatch):
    """complete_teacher_spec is pure and runs once per load; load_teacher_model skips a spec it completed."""
    import edgedistill.models.teachers as teachers

    recipe = recipe_from_dict(onnx_recipe(onnx_teacher))

    def again(*_a, **_k):
        raise AssertionError("the teacher was completed a second time")

    monkeypatch.setattr(teachers, "complete_teacher_spec", again)
    model = teachers.load_teacher_model(recipe.teacher, recipe.resolve(recipe.teacher.weights), recipe.base_dir)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    bare = parse_recipe(onnx_recipe(onnx_teacher)).teacher
    monkeypatch.undo()
    teachers.load_teacher_model(bare, Path(bare.weights), None)  # an incomplete spec is completed, and left as it was
    assert bare.input is None and bare.num_classes is None


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often each step of the checked loading ran."""
    calls = {"pool": 0, "teacher": 0, "student": 0, "registries": 0}
    for key, name in (
        ("pool", "_pool_sources"),
        ("teacher", "complete_teacher_spec"),
        ("student", "build_student_model"),
        ("registries", "check_recipe"),
    ):
        original = getattr(checked_loading, name)

        def count(*args, _key=key, _original=original, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(checked_loading, name, count)
    return calls


def test_each_check_runs_once_per_load_and_compress_does_not_check_a_loaded_recipe_again(tmp_path, counted, monkeypatch):
    import edgedistill.pipeline as pipeline

    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    loaded = load_recipe(path, ["distill.epochs=3"])
    assert counted == {"pool": 1, "teacher": 1, "student": 1, "registries": 1}

    class Stop(Exception):
        pass

    def stop(*_a, **_k):
        raise Stop

    monkeypatch.setattr(pipeline, "run_preflight", stop)  # the first thing compress does after its check
    if hasattr(pipeline, "check_recipe"):  # the registries' check, imported into the pipeline: counted there too
        monkeypatch.setattr(pipeline, "check_recipe", checked_loading.check_recipe)
    with pytest.raises(Stop):
        pipeline.compress(loaded, tmp_path / "run")
    assert counted == {"pool": 1, "teacher": 1, "student": 1, "registries": 1}
    with pytest.raises(Stop):  # a Recipe built in Python: compress checks it, once
        pipeline.compress(parse_recipe(data, base_dir=tmp_path), tmp_path / "run")
    assert counted == {"pool": 2, "teacher": 2, "student": 2, "registries": 2}


def test_a_bad_set_value_is_blamed_on_the_option_once(tmp_path, counted):
    """The registries' check is part of the loading, so the CLI does not check again: a misspelt --set value is one
    line naming the option, exit 2, before any work."""
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["compress", str(path), "--run-dir", str(tmp_path / "run"), "--set", "select.strategy=balance"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--set select.strategy=balance: select.strategy: unknown 'balance'; did you mean 'balanced'" in lines[0]
    assert counted["registries"] == 1 and not (tmp_path / "run").exists()


def test_regate_checks_the_recorded_recipe_with_its_overrides_and_only_the_chosen_targets(tmp_path):
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    data["targets"].append({"name": "gone", "runtime": "not_installed"})  # e.g. a plugin runtime no longer installed
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"recipe": data, "recipe_dir": str(tmp_path)}))
    recipe = recipe_for_regate(run, None, ["targets.0.budget.p99_ms=3"], ["cpu"])
    assert [t.name for t in recipe.targets] == ["cpu"] and recipe.targets[0].budget.p99_ms == 3 and recipe._checked
    with pytest.raises(BadInput, match=r"^--set select.strategy=balance: select.strategy: unknown 'balance'"):
        recipe_for_regate(run, None, ["select.strategy=balance"], ["cpu"])
    with pytest.raises(BadInput, match=r"^the recipe recorded in .*run.json: targets.2: runtime: unknown 'not_installed'"):
        recipe_for_regate(run, None, [], [])
    with pytest.raises(BadInput, match=r"^--target board: no such target; the recipe has cpu, cpu-openvino, gone"):
        recipe_for_regate(run, None, [], ["board"])
