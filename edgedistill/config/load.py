"""A recipe file or mapping parsed into a Recipe: safe YAML, earlier forms upgraded, --set overrides and the schema,
each error one line naming the file (or the --set option that caused it), the key and a hint.

This is parsing only: nothing here looks past the recipe's own text. The checked recipe that users, the CLI and the
pipeline load (the pool's source kinds, the files the recipe names, the teacher completed from its model, the
student built once, the extension names) is edgedistill.recipe's, which calls these functions first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import BadInput, did_you_mean
from .schema import Recipe
from .upgrade import check_override, upgrade_recipe


def _section_model(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    """The recipe model a key path leads to (Recipe, ("distill", "augment") -> AugmentSpec); None past a plain value."""
    for part in path:
        if isinstance(part, int):
            continue  # a list item: the list's own annotation already led to its model
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((found for arg in get_args(annotation) if (found := _model_in(arg)) is not None), None)


def format_error(source: str, err: dict[str, Any], model: type[BaseModel] = Recipe, where: tuple = ()) -> str:
    """`source: section.key: problem`, with the nearest valid key and the section's keys for a misspelt one.
    `where` is the key path in front of what `model` validated (("pool", 1) for a pool entry's own model)."""
    loc = ".".join(str(p) for p in (*where, *err["loc"]))
    kind, msg = err["type"], err["msg"]
    hint = ""
    if kind == "extra_forbidden":
        msg = "unknown key"
        section = _section_model(model, tuple(err["loc"][:-1]))
        keys = [k for k, f in section.model_fields.items() if not f.exclude] if section is not None else []
        if keys:
            hint = f"{did_you_mean(str(err['loc'][-1]), keys)} valid keys here: {', '.join(keys)}"
        else:
            hint = "; check the spelling (edgedistill recipe-schema lists every key)"
    elif kind == "missing":
        msg = "required key is missing"
    return f"{source}: {loc or 'the recipe'}: {msg}{hint}"


def blame_overrides(message: str, source: str, overrides: list[str]) -> str:
    """A `source: key: problem` message whose key an --set override wrote names that option instead of the file."""
    prefix = f"{source}: "
    if not overrides or not message.startswith(prefix):
        return message
    rest = message[len(prefix) :]
    key = rest.split(":", 1)[0].split(" ", 1)[0]
    for item in reversed(overrides):  # the last --set of a key is the one that counts
        set_key = item.partition("=")[0]
        if key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + "."):
            return f"--set {item}: {rest}"
    return message


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`section.key=value` pairs from --set; list items by index (pool.1.count=5000); values are YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--set {item}: expected section.key=value, e.g. --set distill.epochs=5")
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise BadInput(f"--set {item}: {_list_entries('.'.join(parts[:depth]), node)}")
                part = int(part)
            elif not isinstance(node, dict):
                raise BadInput(f"--set {item}: {'.'.join(parts[:depth])} is a value, not a section")
            if last:
                node[part] = _yaml_value(item, raw)
            else:
                if parts[:2] == ["distill", "loss"] and depth == 2 and _is_weight(node.get(part)):
                    node[part] = {"weight": node[part]}  # kd: 2.0 -> {weight: 2.0}: a parameter set below keeps the weight
                elif isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = _default_section(parts[: depth + 1]) if part not in node else {}
                node = node[part]
    return data


def _default_section(path: list[str]) -> dict:
    """What a section the recipe leaves out holds by default, so a --set below it changes one key of the defaults
    instead of replacing them all (`--set distill.loss.kd.temperature=4` keeps the feature and relation losses)."""
    parent = _section_model(Recipe, tuple(int(p) if p.isdigit() else p for p in path[:-1]))
    try:
        value = parent().model_dump(mode="json").get(path[-1]) if parent is not None else None
    except ValidationError:  # a section with required keys has no default to start from
        return {}
    return value if isinstance(value, dict) else {}


def _is_weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _yaml_value(item: str, raw: str) -> Any:
    """The value of `--set key=value`, read as YAML (numbers, lists, mappings); a syntax error is the option's fault."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BadInput(
            f"--set {item}: the value is not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__}); "
            "fix it, or quote the whole option to pass it as text, e.g. --set 'key=\"[1,\"'"
        ) from None


def _list_entries(name: str, items: list) -> str:
    """What an index into a recipe list can be: `targets has 2 entries, indexed 0 (cpu), 1 (board)`."""
    if not items:
        return f"{name} is empty"
    shown = ", ".join(f"{i} ({entry['name']})" if isinstance(entry, dict) and "name" in entry else str(i) for i, entry in enumerate(items))
    return f"{name} has {'one entry' if len(items) == 1 else f'{len(items)} entries'}, indexed {shown}"


def read_recipe_file(path: Path | str, overrides: list[str] | None = None) -> dict[str, Any]:
    """A recipe file's mapping in the current form: safe YAML, an earlier form upgraded (one warning), then --set."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BadInput(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: a recipe is a YAML mapping with keys name, teacher, pool, student, ...")
    data = upgrade_recipe(data, str(path))  # the file's form first (one warning if earlier); then --set, in the current form
    return with_overrides(data, overrides or [])


def recorded_recipe_data(run_dir: Path, overrides: list[str]) -> tuple[dict[str, Any], Path, str]:
    """The recipe a run recorded in its run.json, upgraded (a run of an earlier release) and with --set applied:
    its mapping, the directory its relative paths resolve against, and the source its errors name."""
    run_json = Path(run_dir) / "run.json"
    try:
        recorded = json.loads(run_json.read_text())
    except FileNotFoundError:
        raise BadInput(f"{run_dir}: no run.json, so not a run directory; give the RECIPE or run compress first") from None
    except json.JSONDecodeError as exc:
        raise BadInput(f"{run_json}: not valid JSON ({exc})") from None
    source = f"the recipe recorded in {run_json}"
    data = with_overrides(upgrade_recipe(recorded["recipe"], source), overrides)
    return data, Path(recorded.get("recipe_dir") or run_dir), source


def with_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`data` (in the current form) with --set items applied; a key an earlier format had is refused with its new name."""
    for item in overrides:
        check_override(item)
    return apply_overrides(data, overrides) if overrides else data


def parse_recipe(data: dict[str, Any], base_dir: Path = Path("."), source: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """A Recipe from YAML data by the schema alone, not checked against the files, models and registries it names
    (edgedistill.recipe.recipe_from_dict is). Data in an earlier recipe format (a recorded run.json, a dict in Python)
    is upgraded first, with one warning; `overrides` are the --set items already applied, named by errors they cause."""
    try:
        data = upgrade_recipe(data, source)
        try:
            return Recipe.model_validate({**data, "base_dir": base_dir})
        except ValidationError as exc:
            errors = exc.errors()
            first = ".".join(str(p) for p in errors[0]["loc"][:2])
            others = sorted({".".join(str(p) for p in e["loc"][:2]) for e in errors[1:]} - {first})
            raise BadInput(format_error(source, errors[0]) + (f" (also check {', '.join(others)})" if others else "")) from None
    except BadInput as exc:
        raise BadInput(blame_overrides(str(exc), source, overrides or [])) from None
