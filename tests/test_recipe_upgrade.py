"""Recipes that survive upgrades (#26): a recipe in the form of an earlier release loads with one warning that prints
the current form to paste; one that cannot be mapped safely, or that is newer than this edgedistill, is one `error:`
line with exit 2. tests/data/recipes/ keeps one recipe of each earlier form beside the current one."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.config.schema import Recipe
from edgedistill.config.upgrade import CURRENT, UPGRADES
from edgedistill.errors import BadInput
from edgedistill.extensions import check_recipe, recipe_schema
from edgedistill.recipe import load_recipe, recipe_from_dict

DATA = Path(__file__).resolve().parent / "data" / "recipes"
CURRENT_FORM = DATA / "current.yaml"

# each earlier form: its file, and the loss it means in the current form (the rest of the file is current.yaml's)
EARLIER = [
    ("format1-flat-loss.yaml", {"kd": {"weight": 1.0, "temperature": 1.0}, "feature": 1.0, "relation": 1.0}),
    (
        "format1-relation-terms.yaml",
        {"kd": {"weight": 2.0, "temperature": 4.0}, "feature": 1.0, "relation": {"weight": 1.0, "angle": 1.0, "similarity": 0.5}},
    ),
    ("format1-declared.yaml", {"kd": 1.0, "feature": 0.5, "relation": 1.0}),
]


def dump(recipe: Recipe) -> dict:
    return {**recipe.model_dump(mode="json"), "base_dir": str(recipe.base_dir)}


def current_with(loss: dict) -> Recipe:
    """current.yaml's recipe with another loss."""
    data = yaml.safe_load(CURRENT_FORM.read_text())
    data["distill"]["loss"] = loss
    return recipe_from_dict(data, base_dir=DATA, source="expected")


def upgrade_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edgedistill" and r.levelno == logging.WARNING]


def pasted(message: str) -> dict:
    """The section the warning says to paste under distill, read back as YAML."""
    (snippet,) = re.findall(r"under distill, `([^`]*)`", message)
    return yaml.safe_load(snippet)


@pytest.mark.parametrize("name,loss", EARLIER, ids=[e[0] for e in EARLIER])
def test_earlier_form_loads_as_the_current_one_with_one_warning(caplog, name, loss):
    caplog.set_level(logging.WARNING, logger="edgedistill")
    recipe = load_recipe(DATA / name)
    (message,) = upgrade_warnings(caplog)
    assert message.startswith(f"{DATA / name}: distill.loss: written in the form of an earlier release (recipe format 1)")
    assert "\n" not in message and f"`version: {CURRENT}`" in message
    assert pasted(message) == {"loss": loss}  # the new form, ready to paste
    caplog.clear()
    assert dump(recipe) == dump(current_with(loss))
    assert recipe.version == CURRENT
    check_recipe(recipe, name)  # the stages' checks take it too


def test_the_flat_loss_of_the_issue_is_exactly_the_current_recipe(caplog):
    caplog.set_level(logging.WARNING, logger="edgedistill")
    assert dump(load_recipe(DATA / "format1-flat-loss.yaml")) == dump(load_recipe(CURRENT_FORM))
    assert len(upgrade_warnings(caplog)) == 1  # the current form loads without one


@pytest.mark.parametrize("name", [e[0] for e in EARLIER])
def test_pasting_the_printed_form_loads_without_a_warning(caplog, name):
    caplog.set_level(logging.WARNING, logger="edgedistill")
    upgraded = load_recipe(DATA / name)
    (message,) = upgrade_warnings(caplog)
    data = yaml.safe_load((DATA / name).read_text())
    data["distill"].update(pasted(message))
    data["version"] = CURRENT
    caplog.clear()
    assert dump(recipe_from_dict(data, base_dir=DATA, source="pasted")) == dump(upgraded)
    assert upgrade_warnings(caplog) == []


def test_file_upgraded_first_then_overrides(caplog):
    """--set is applied to the upgraded file, in the current form: kd's temperature from the option, one warning."""
    caplog.set_level(logging.WARNING, logger="edgedistill")
    recipe = load_recipe(DATA / "format1-flat-loss.yaml", ["distill.loss.kd.temperature=4"])
    assert recipe.distill.loss == {"kd": {"weight": 1.0, "temperature": 4}, "feature": 1.0, "relation": 1.0}
    assert len(upgrade_warnings(caplog)) == 1


def test_a_recorded_recipe_dict_is_upgraded_too(caplog):
    """run.json of a run from before the loss registry recorded LossSpec's whole dump: re-gating reads it."""
    caplog.set_level(logging.WARNING, logger="edgedistill")
    data = yaml.safe_load(CURRENT_FORM.read_text())
    del data["version"]
    loss = {
        "kd": 1.0,
        "temperature": 1.0,
        "feature": 1.0,
        "relation": 1.0,
        "relation_terms": {"distance": 1.0, "angle": 2.0, "similarity": 0.0},
    }
    data["distill"]["loss"] = loss
    recipe = recipe_from_dict(data, base_dir=DATA, source="run.json")
    assert recipe.distill.loss == {
        "kd": {"weight": 1.0, "temperature": 1.0},
        "feature": 1.0,
        "relation": {"weight": 1.0, "distance": 1.0, "angle": 2.0, "similarity": 0.0},
    }
    assert data["distill"]["loss"] is loss and "temperature" in loss  # the caller's dict is left as it was
    assert len(upgrade_warnings(caplog)) == 1


BAD_VERSIONS = [
    (99, "version: 99: the recipe is written for a newer edgedistill (recipe format 99; edgedistill"),
    (0, "version: 0 is not a recipe format; this edgedistill reads formats 1 to 2"),
    ("two", "version: 'two' is not a recipe format"),
    (True, "version: True is not a recipe format"),
]


@pytest.mark.parametrize("version,expected", BAD_VERSIONS, ids=[str(v[0]) for v in BAD_VERSIONS])
def test_bad_or_newer_version_is_refused(version, expected):
    data = {**yaml.safe_load(CURRENT_FORM.read_text()), "version": version}
    with pytest.raises(BadInput) as info:
        recipe_from_dict(data, base_dir=DATA, source="r.yaml")
    assert str(info.value).startswith("r.yaml: " + expected), str(info.value)


def test_old_keys_in_a_recipe_that_says_version_2_are_refused_with_the_replacement():
    data = yaml.safe_load(CURRENT_FORM.read_text())
    data["distill"]["loss"] = {"kd": 1.0, "temperature": 3.0, "feature": 1.0}
    with pytest.raises(BadInput) as info:
        recipe_from_dict(data, base_dir=DATA, source="r.yaml")
    message = str(info.value)
    assert "the recipe says version: 2" in message and "\n" not in message
    assert "under distill, `loss: {kd: {weight: 1.0, temperature: 3.0}, feature: 1.0}`" in message  # relation stays off


def test_relation_terms_that_are_not_a_mapping_are_refused_with_the_current_key():
    data = yaml.safe_load(CURRENT_FORM.read_text())
    del data["version"]
    data["distill"]["loss"] = {"kd": 1.0, "relation_terms": 2.0}
    with pytest.raises(BadInput, match=r"^r.yaml: distill.loss.relation_terms: 2.0 is not a mapping .* `loss: \{relation: \{weight: 1.0"):
        recipe_from_dict(data, base_dir=DATA, source="r.yaml")


def cli_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_too_new_recipe_exit_2_one_line(tmp_path):
    line = cli_error_line(CliRunner().invoke(app, ["compress", str(DATA / "too-new.yaml"), "--run-dir", str(tmp_path / "run")]))
    assert "too-new.yaml: version: 99: the recipe is written for a newer edgedistill" in line
    assert "upgrade edgedistill: pip install --upgrade edgedistill" in line
    assert not (tmp_path / "run").exists()


def test_cli_mixed_form_is_refused_with_the_replacement(tmp_path):
    line = cli_error_line(CliRunner().invoke(app, ["compress", str(DATA / "refused-mixed.yaml"), "--run-dir", str(tmp_path / "run")]))
    assert "refused-mixed.yaml: distill.loss mixes recipe format 1" in line and "kd is already a mapping" in line
    assert "under distill, `loss: {kd: {weight: 1.0, temperature: 2.0}, feature: 1.0, relation: 0.5}`" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "option,expected",
    [
        (
            "distill.loss.temperature=4",
            "distill.loss.temperature is distill.loss.kd.temperature since recipe format 2; write --set distill.loss.kd.temperature=4",
        ),
        ("distill.loss.relation_terms.angle=1", "write --set distill.loss.relation.angle=1"),
        (
            "distill.loss.relation_terms={angle: 1, distance: 0.5}",
            "write --set distill.loss.relation.angle=1 --set distill.loss.relation.distance=0.5",
        ),
    ],
)
def test_cli_old_key_in_set_is_refused_with_the_current_spelling(option, expected):
    line = cli_error_line(CliRunner().invoke(app, ["compress", str(CURRENT_FORM), "--set", option]))
    assert line.startswith(f"error: --set {option}: ") and expected in line, line


def test_cli_prints_the_warning_once_on_stderr(monkeypatch):
    """The command line configures no logging, so the warning reaches stderr once (logging's last resort); here the
    test's own log capture is kept out of its way."""
    monkeypatch.setattr(logging.getLogger("edgedistill"), "propagate", False)
    result = CliRunner().invoke(app, ["select", str(DATA / "format1-flat-loss.yaml"), "--preflight"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "distill.loss: written in the form of an earlier release" in lines[0]
    assert "under distill, `loss: {kd: {weight: 1.0, temperature: 1.0}, feature: 1.0, relation: 1.0}`" in lines[0]


def test_schema_shows_the_version_and_only_the_current_loss_form():
    schema = recipe_schema()
    version = schema["properties"]["version"]
    assert version["default"] == CURRENT and version["maximum"] == CURRENT and "earlier" in version["description"].lower()
    loss = schema["$defs"]["DistillSpec"]["properties"]["loss"]
    assert "temperature" not in loss["properties"] and "relation_terms" not in loss["properties"]


def test_upgrade_steps_are_ordered_and_say_their_release():
    targets = [to for to, _ in UPGRADES]
    assert targets == sorted(targets) and targets[-1] == CURRENT
    for _, step in UPGRADES:
        assert step.__doc__ and "accepted it" in step.__doc__ and re.search(r"\b[0-9a-f]{7}\b", step.__doc__)
