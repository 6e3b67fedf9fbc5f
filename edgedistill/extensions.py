"""Every extension point in one place: the registries a recipe names (pool sources, teacher formats, selection
strategies, losses, runtimes), checked before any stage runs, and the recipe's JSON Schema with their names and
parameters filled in. A newly registered extension needs nothing here: it is read from its registry.
"""

from __future__ import annotations

from typing import Any

from .backends import RUNTIMES, check_target
from .config.schema import Recipe
from .errors import BadInput
from .inputs.pool import SOURCES
from .models.teachers import FORMATS
from .stages.losses import LOSSES
from .stages.select import STRATEGIES


def check_recipe(recipe: Recipe, source: str = "recipe") -> None:
    """The names config.load cannot check (it sits below the stages and backends that define them)."""
    STRATEGIES.get(recipe.select.strategy, source)
    weights = [
        LOSSES.get(name, source).params(entry, f"{source}: distill.loss.{name}").weight for name, entry in recipe.distill.loss.items()
    ]
    if not any(weights):
        raise BadInput(f"{source}: distill.loss: every weight is 0; give a loss (kd, for one) a weight above 0")
    for i, target in enumerate(recipe.targets):
        check_target(target.resolved(recipe), f"{source}: targets.{i}")
        needs_int8 = target.precision == "int8" or target.budget.max_int8_drop is not None
        if needs_int8 and not recipe.export.int8.enabled:
            raise BadInput(f"{source}: targets.{i}: target {target.name} needs the INT8 model, but export.int8.enabled is false")


def recipe_schema() -> dict[str, Any]:
    """The recipe's JSON Schema (`edgedistill recipe-schema`), for editor completion and validation."""
    schema = Recipe.model_json_schema()
    schema["properties"].pop("base_dir", None)
    defs = schema.setdefault("$defs", {})
    defs.pop("PoolEntry", None)
    kinds = []
    for name, kind in SOURCES.items():
        sub = kind.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[kind.__name__] = {**sub, "required": sorted({name, *sub.get("required", [])})}
        kinds.append({"$ref": f"#/$defs/{kind.__name__}"})
    schema["properties"]["pool"]["items"] = {"anyOf": kinds}
    defs["SelectSpec"]["properties"]["strategy"]["enum"] = STRATEGIES.names()
    losses = {}
    for name, part in LOSSES.items():
        params = part.Params.model_json_schema(ref_template="#/$defs/{model}")
        losses[name] = {
            "description": (part.__doc__ or "").strip().splitlines()[0],
            "anyOf": [{"type": "number", "minimum": 0, "description": "weight"}, params],
        }
    defs["DistillSpec"]["properties"]["loss"] = {
        **defs["DistillSpec"]["properties"]["loss"],
        "type": "object",
        "properties": losses,
        "additionalProperties": False,
    }
    target = defs["TargetSpec"]["properties"]
    target["runtime"]["enum"] = list(RUNTIMES)
    target["runtime"]["description"] = "; ".join(f"{r.name}: {r.description}" for r in RUNTIMES.values())
    defs["TeacherSpec"]["properties"]["arch"]["examples"] = [
        *FORMATS.names(),
        "lenet5",
        "torchvision:resnet18",
        "timm:resnet18",
        "mypkg.nets:build",
    ]
    for section in defs.values():  # editors show a section's title: its Python class name (TeacherSpec) means nothing to a user
        section.pop("title", None)
    schema.pop("title", None)
    return schema
