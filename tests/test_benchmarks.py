"""The benchmark scripts' own logic, so that a schema change cannot silently break them."""

from pathlib import Path

import yaml

from benchmarks.throughput import distill_specs
from edgedistill.config.schema import DistillSpec
from edgedistill.recipe import recipe_from_dict
from edgedistill.stages.losses import LOSSES

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def _weights(spec: DistillSpec) -> dict[str, float]:
    """What the Distiller makes of each loss entry: name -> weight."""
    return {name: LOSSES.get(name).params(entry, name).weight for name, entry in spec.loss.items()}


def test_throughput_distill_specs_on_the_demo_recipe():
    data = yaml.safe_load((RECIPES / "demo.yaml").read_text())
    data.update(targets=[])
    recipe = recipe_from_dict(data, base_dir=RECIPES)
    before = recipe.distill.model_dump()
    dspec, plain = distill_specs(recipe.distill, 2)
    assert recipe.distill.model_dump() == before  # the recipe's spec is not touched
    assert dspec.model_dump() == {**before, "epochs": 2}
    # the bare step's work: KD on logits with the recipe's own KD entry, every other part off, no augmentation
    assert plain.augment is None and plain.epochs == 2
    assert plain.loss["kd"] == recipe.distill.loss["kd"] == {"weight": 1.0, "temperature": 1.0}
    assert _weights(plain) == {"kd": 1.0, "feature": 0.0, "relation": 0.0}
    assert plain.model_dump(exclude={"loss", "augment"}) == dspec.model_dump(exclude={"loss", "augment"})


def test_throughput_distill_specs_default_and_without_kd():
    dspec, plain = distill_specs(DistillSpec(), None)
    assert dspec.epochs == DistillSpec().epochs
    assert _weights(plain) == {"kd": 1.0, "feature": 0.0, "relation": 0.0}
    _, plain = distill_specs(DistillSpec(loss={"feature": 1.0, "relation": {"weight": 2.0, "angle": 0.0}}), 1)
    assert _weights(plain) == {"feature": 0.0, "relation": 0.0, "kd": 1.0}
