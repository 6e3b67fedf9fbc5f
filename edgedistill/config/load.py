"""A recipe file becomes a checked Recipe: safe YAML, --set overrides, the schema, the pool's source kinds, every
file the recipe names, and the teacher's input and classes completed from the model itself.

What needs the stages' or runtimes' registries (strategy, losses, runtimes) is checked by edgedistill.extensions,
which the pipeline runs before any stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import BadInput, did_you_mean
from ..inputs.builtin import BUILTINS, check_available
from ..inputs.images import IMAGE_SUFFIXES, Skipped, UnreadableImage, decode_image, iter_images
from ..inputs.labeled import class_folders
from ..inputs.pool import SOURCES
from ..models.factory import build_student_model, student_candidates
from ..models.teachers import complete_teacher_spec
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


def _format_error(source: str, err: dict[str, Any], model: type[BaseModel] = Recipe, where: tuple = ()) -> str:
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


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
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
    if overrides:
        for item in overrides:
            check_override(item)
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, base_dir=path.resolve().parent, source=str(path), overrides=overrides)


def recipe_with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A loaded recipe with --set style overrides applied, checked again as a whole."""
    for item in overrides:
        check_override(item)
    data = apply_overrides(recipe.model_dump(mode="json"), overrides)
    return recipe_from_dict(data, base_dir=recipe.base_dir, source=f"recipe {recipe.name}", overrides=overrides)


def recipe_from_dict(
    data: dict[str, Any], base_dir: Path = Path("."), source: str = "<recipe>", overrides: list[str] | None = None
) -> Recipe:
    """A checked Recipe from YAML data; `overrides` are the --set items already applied to it, named by errors they cause.
    Data in an earlier recipe format (a recorded run.json, a dict in Python) is upgraded first, with one warning."""
    try:
        return _checked_recipe(upgrade_recipe(data, source), base_dir, source)
    except BadInput as exc:
        raise BadInput(blame_overrides(str(exc), source, overrides or [])) from None


def _checked_recipe(data: dict[str, Any], base_dir: Path, source: str) -> Recipe:
    try:
        recipe = Recipe.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        others = sorted({".".join(str(p) for p in e["loc"][:2]) for e in errors[1:]} - {".".join(str(p) for p in errors[0]["loc"][:2])})
        raise BadInput(_format_error(source, errors[0]) + (f" (also check {', '.join(others)})" if others else "")) from None
    _check_files(recipe, source)
    t = recipe.teacher
    complete_teacher_spec(t, recipe.resolve(t.weights) if t.weights is not None else None, source)
    _check_after_teacher(recipe, source)
    return recipe


def _check_after_teacher(recipe: Recipe, source: str) -> None:
    """What needs the teacher's classes and input: the student is built once (a wrong arch or feature layer costs
    seconds here, not a distillation), and a labeled folder's subfolders are matched to the classes."""
    t, s = recipe.teacher, recipe.student
    if s.planned:  # every candidate once: an unknown name or one that cannot take the input is one line, before any timing
        for arch, layer in student_candidates(s, t.input.channels, t.input.size):
            try:
                build_student_model(arch, t.num_classes, t.input, layer, recipe.base_dir)
            except BadInput as exc:
                raise BadInput(f"{source}: student.candidates: {arch}: {exc}") from None
    else:
        try:
            build_student_model(s.arch, t.num_classes, t.input, s.feature_layer, recipe.base_dir)
        except BadInput as exc:
            raise BadInput(f"{source}: student.arch: {exc}") from None
    labeled = recipe.eval.labeled
    if labeled and not labeled.startswith("builtin:"):
        folder = recipe.resolve(Path(labeled))
        classes, _, _ = class_folders(folder, t.class_names, t.num_classes, f"{source}: eval.labeled")
        _check_decodable(folder, classes, t.input, f"{source}: eval.labeled")


PROBES_PER_CLASS = 5  # images tried per class of a labeled folder at recipe load, until one decodes


def _check_decodable(folder: Path, classes: list[str], spec: Any, what: str) -> None:
    """At least one image of the labeled folder decodes: an all-unreadable folder is found now, not after the pool is
    scored. Cheap: stops at the first image that decodes, and tries at most PROBES_PER_CLASS files per class."""
    tried, first_error, unlisted = 0, None, None
    for c in classes:
        probes = 0
        for path in iter_images(folder / c):
            if isinstance(path, Skipped):
                unlisted = unlisted or str(path)
                continue
            try:
                decode_image(path, spec)
                return
            except UnreadableImage as exc:
                tried += 1
                first_error = first_error or f"{path}: {exc}"
            probes += 1
            if probes == PROBES_PER_CLASS:
                break
    if tried == 0:
        why = f"; {unlisted}" if unlisted else ""
        raise BadInput(
            f"{what}: no image files under {folder}/<class>/ (looked for {', '.join(sorted(IMAGE_SUFFIXES))}){why}; "
            "put the labeled images in the class subfolders"
        )
    raise BadInput(
        f"{what}: none of the {tried} images tried under {folder}/<class>/ (up to {PROBES_PER_CLASS} per class) could be "
        f"decoded, e.g. {first_error}; replace them with readable images (png, jpg, ...) or point eval.labeled elsewhere"
    )


def _pool_sources(recipe: Recipe, source: str) -> None:
    """Each pool entry becomes the source kind its key names (edgedistill.inputs.pool.SOURCES), checked."""
    kinds = SOURCES.names()
    for i, entry in enumerate(recipe.pool):
        raw = entry.model_dump()
        named = [k for k in kinds if k in raw]
        if len(named) != 1:
            found = ", ".join(raw) or "nothing"
            raise BadInput(
                f"{source}: pool.{i}: a pool entry needs exactly one of " + ", ".join(f"`{k}:`" for k in kinds) + f" (it has {found})"
            )
        try:
            recipe.pool[i] = SOURCES.get(named[0]).model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise BadInput(_format_error(source, err, SOURCES.get(named[0]), ("pool", i))) from None
        recipe.pool[i].check(recipe, f"{source}: pool.{i}")


def _check_files(recipe: Recipe, source: str) -> None:
    """Missing files are recipe errors, reported before any work starts."""
    if recipe.teacher.weights is not None and not recipe.resolve(recipe.teacher.weights).is_file():
        raise BadInput(f"{source}: teacher.weights: file {recipe.resolve(recipe.teacher.weights)} does not exist")
    _pool_sources(recipe, source)
    for i, target in enumerate(recipe.targets):
        if target.ssh and target.known_hosts is not None and not recipe.resolve(target.known_hosts).is_file():
            raise BadInput(
                f"{source}: targets.{i}.known_hosts: {recipe.resolve(target.known_hosts)} does not exist (target {target.name}); "
                "give the known_hosts file that holds the device's host key, or leave known_hosts out to use ssh's own"
            )
    labeled = recipe.eval.labeled
    if labeled:
        if labeled.startswith("builtin:"):
            if labeled[8:] not in BUILTINS:
                raise BadInput(f"{source}: eval.labeled: unknown built-in source {labeled[8:]!r}; available: {', '.join(sorted(BUILTINS))}")
            try:
                check_available(labeled[8:])
            except BadInput as exc:
                raise BadInput(f"{source}: eval.labeled: {exc}") from None
        elif not recipe.resolve(Path(labeled)).is_dir():
            raise BadInput(
                f"{source}: eval.labeled: directory {recipe.resolve(Path(labeled))} does not exist "
                "(use builtin:NAME or a folder of class subfolders)"
            )


def recipe_for_regate(run_dir: Path | None, recipe_path: Path | None, overrides: list[str], only_targets: list[str]):
    """The recipe to validate with: RECIPE, or the one the run recorded in run.json; then --set, then --target.

    Targets and budgets are inputs of the validate stage only, so re-gating never redoes select, distill or export.
    """
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
    elif run_dir is None:
        raise BadInput("validate needs a RECIPE, or --run-dir DIR of an earlier run to re-gate with the recipe it recorded")
    else:
        run_json = Path(run_dir) / "run.json"
        try:
            recorded = json.loads(run_json.read_text())
        except FileNotFoundError:
            raise BadInput(f"{run_dir}: no run.json, so not a run directory; give the RECIPE or run compress first") from None
        except json.JSONDecodeError as exc:
            raise BadInput(f"{run_json}: not valid JSON ({exc})") from None
        source = f"the recipe recorded in {run_json}"
        for item in overrides:
            check_override(item)
        data = apply_overrides(upgrade_recipe(recorded["recipe"], source), overrides)  # a run of an earlier release first
        recipe = recipe_from_dict(data, base_dir=Path(recorded.get("recipe_dir") or run_dir), source=source, overrides=overrides)
    if only_targets:
        names = [t.name for t in recipe.targets]
        unknown = [n for n in only_targets if n not in names]
        if unknown:
            raise BadInput(f"--target {unknown[0]}: no such target; the recipe has {', '.join(names) or 'none'}")
        recipe = recipe.model_copy(update={"targets": [t for t in recipe.targets if t.name in only_targets]})
    return recipe
