"""Bad recipes get one line naming the file, the field, the problem and a hint; exit code 2."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.errors import BadInput
from edgedistill.extensions import check_recipe
from edgedistill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())


def write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / "w.safetensors").write_bytes((ROOT / "teachers" / "mnist_lenet5.safetensors").read_bytes())
    data["teacher"]["weights"] = "w.safetensors"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def edit(fn):
    data = base()
    fn(data)
    return data


BAD = [
    ("unknown key", edit(lambda d: d["distill"].update(epochz=3)), "distill.epochz: unknown key; did you mean 'epochs'? valid keys here:"),
    ("wrong type", edit(lambda d: d["distill"].update(epochs="many")), "distill.epochs: Input should be a valid integer"),
    ("negative count", edit(lambda d: d["pool"][1].update(count=-5)), "pool.1.count: Input should be greater than 0"),
    (
        "unknown builtin",
        edit(lambda d: d["pool"].append({"builtin": "imagenet-22k"})),
        "pool.3.builtin: unknown built-in source 'imagenet-22k'; available:",
    ),
    (
        "missing folder",
        edit(lambda d: d["pool"].append({"folder": "/nonexistent/images"})),
        "pool.3.folder: directory /nonexistent/images does not exist",
    ),
    ("missing section", edit(lambda d: d.pop("student")), "student: required key is missing"),
    (
        "mean per channel",
        edit(lambda d: d["teacher"]["input"].update(mean=[0.1, 0.2])),
        "teacher.input: Value error, mean needs 1 value(s), one per channel",
    ),
    (
        "bad strategy",
        edit(lambda d: d["select"].update(strategy="best")),
        "select.strategy: unknown 'best'; available: balanced, dfnd, entropy, random",
    ),
    ("pool entry kind", edit(lambda d: d["pool"].append({"url": "http://x"})), "pool.3"),
    ("bad eval builtin", edit(lambda d: d["eval"].update(labeled="builtin:nope")), "eval.labeled: unknown built-in source 'nope'"),
    (
        "missing shards",
        edit(lambda d: d["pool"].append({"shards": "/nonexistent/pool-{000..009}.tar"})),
        "pool.3.shards: 10 shard file(s) missing, e.g. /nonexistent/pool-000.tar",
    ),
    (
        "missing manifest",
        edit(lambda d: d["pool"].append({"manifest": "/nonexistent/list.csv"})),
        "pool.3.manifest: file /nonexistent/list.csv does not exist",
    ),
    (
        "bad precision",
        edit(lambda d: d.update(compute={"precision": "int4"})),
        "compute.precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16'",
    ),
]


@pytest.mark.parametrize("name,data,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_recipe_line(tmp_path, name, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(BadInput) as info:
        check_recipe(load_recipe(path), str(path))  # what compress does before any stage runs
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message
    assert "\n" not in message


def test_missing_weights_file(tmp_path):
    data = base()
    data["teacher"]["weights"] = "missing.safetensors"
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BadInput, match=r"teacher.weights: file .*missing.safetensors does not exist"):
        load_recipe(path)


def test_not_yaml_and_not_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(BadInput, match=r"not valid YAML \(line"):
        load_recipe(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(BadInput, match="a recipe is a YAML mapping"):
        load_recipe(bad)


def test_yaml_is_safe_loaded(tmp_path):
    bad = tmp_path / "evil.yaml"
    bad.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(BadInput, match="not valid YAML"):
        load_recipe(bad)


def test_overrides_apply_and_validate():
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml", ["distill.epochs=3", "select.per_class=10"])
    assert recipe.distill.epochs == 3 and recipe.select.per_class == 10
    with pytest.raises(BadInput, match="expected section.key=value"):
        load_recipe(ROOT / "recipes" / "demo.yaml", ["distill.epochs"])
    with pytest.raises(BadInput, match="distill.epochs: Input should be greater than 0"):
        load_recipe(ROOT / "recipes" / "demo.yaml", ["distill.epochs=0"])


def test_cli_bad_recipe_exit_2_one_line(tmp_path):
    path = write(tmp_path, edit(lambda d: d["distill"].update(epochz=3)))
    result = CliRunner().invoke(app, ["compress", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "distill.epochz: unknown key" in lines[0]
    assert "Traceback" not in result.output


def test_schema_and_version():
    runner = CliRunner()
    schema = runner.invoke(app, ["recipe-schema"])
    assert schema.exit_code == 0 and '"teacher"' in schema.output and "base_dir" not in schema.output
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and "edgedistill" in version.output


@pytest.mark.parametrize("weight", [2.0, 0])
def test_set_below_a_scalar_loss_keeps_its_weight(tmp_path, weight):
    """`kd: 2.0` with --set distill.loss.kd.temperature=4 is {weight: 2.0, temperature: 4}, not a silent weight of 1
    (and `kd: 0` stays off)."""
    data = base()
    data["distill"]["loss"] = {"kd": weight, "feature": 1.0}
    recipe = load_recipe(write(tmp_path, data), ["distill.loss.kd.temperature=4"])
    assert recipe.distill.loss["kd"] == {"weight": weight, "temperature": 4} and recipe.distill.loss["feature"] == 1.0


def test_set_below_a_section_the_recipe_leaves_out_keeps_its_defaults(tmp_path):
    """A recipe without `distill.loss` gets the default kd, feature and relation losses; a --set of kd's temperature
    changes that one key, it does not leave kd as the only loss."""
    data = base()
    data["distill"].pop("loss", None)
    recipe = load_recipe(write(tmp_path, data), ["distill.loss.kd.temperature=4"])
    assert recipe.distill.loss == {"kd": {"weight": 1.0, "temperature": 4}, "feature": 1.0, "relation": 1.0}
