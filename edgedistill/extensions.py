"""Every extension point in one place: the registries a recipe names (pool sources, teacher formats, architecture
sources, selection strategies, class-drop modes, losses, refine targets, runtimes), checked before any stage runs,
and the recipe's JSON Schema with their names and parameters filled in. A newly registered extension needs nothing
here: it is read from its registry.
"""

from __future__ import annotations

from typing import Any

from .backends import RUNTIMES, check_target
from .config.schema import Recipe, TargetSpec
from .errors import BadInput
from .inputs.pool import SOURCES
from .models.factory import ARCH_SOURCES
from .models.teachers import FORMATS
from .stages.class_drop import CLASS_DROPS
from .stages.losses import LOSSES
from .stages.refine import REFINE_TARGETS
from .stages.select import STRATEGIES


def check_recipe(recipe: Recipe, source: str = "recipe") -> None:
    """The recipe's extension names and what the runtimes' rows say of its targets: the last step of the checked
    loading (edgedistill.recipe), which has converted the pool and completed the teacher before it."""
    STRATEGIES.get(recipe.select.strategy, source)
    CLASS_DROPS.get(recipe.class_drop.mode, source)
    if recipe.distill.refine is not None:
        REFINE_TARGETS.get(recipe.distill.refine.target, source)
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
    defs["ClassDropSpec"]["properties"]["mode"]["enum"] = CLASS_DROPS.names()
    defs["RefineSpec"]["properties"]["target"]["enum"] = REFINE_TARGETS.names()
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
    # targets: one branch per runtime, discriminated by `runtime`: the keys every target has and that runtime's options
    common, default, branches = defs.pop("TargetSpec"), TargetSpec.model_fields["runtime"].default, {}
    for name, row in RUNTIMES.items():
        options = row.options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(options.pop("$defs", {}))
        runtime = {"const": name, "description": row.description, **({"default": name} if name == default else {})}
        precision = {**common["properties"]["precision"], "enum": list(row.precisions)}
        defs[f"Target_{name}"] = {
            "type": "object",
            "description": f"a target on runtime {name}: {row.description}",
            "properties": {**common["properties"], "runtime": runtime, "precision": precision, **options.get("properties", {})},
            "required": [*common.get("required", []), *options.get("required", []), *([] if name == default else ["runtime"])],
            "additionalProperties": False,
        }
        branches[name] = f"#/$defs/Target_{name}"
    schema["properties"]["targets"]["items"] = {
        "oneOf": [{"$ref": ref} for ref in branches.values()],
        "discriminator": {"propertyName": "runtime", "mapping": branches},
    }
    defs["TeacherSpec"]["properties"]["arch"]["examples"] = [*FORMATS.names(), *(s.example or f"{p}:NAME" for p, s in ARCH_SOURCES.items())]
    for section in defs.values():  # editors show a section's title: its Python class name (TeacherSpec) means nothing to a user
        section.pop("title", None)
    schema.pop("title", None)
    return schema
