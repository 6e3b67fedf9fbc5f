"""The checked recipe: what users, the CLI and the pipeline load, with everything that can be wrong in it found in
seconds, before any stage runs, as one line naming the file (or the --set option), the key and the problem.

One pass, each step once per load:

1. parse (edgedistill.config.load): safe YAML, earlier forms upgraded, --set overrides, the schema;
2. each pool entry becomes the source kind its key names (edgedistill.inputs.pool.SOURCES), and checks itself;
3. the files the recipe names: the teacher's weights, known_hosts, the labeled evaluation set;
4. the teacher's input and classes completed from its model file (models.teachers.complete_teacher_spec);
5. the student (or every candidate) built once for the teacher's input and classes, and a labeled folder matched to
   the classes with one image of it decoded;
6. the extension names and what the runtimes' rows say of the targets (edgedistill.extensions.check_recipe).

Nothing is changed in place: the pool's kinds and the completed teacher come out in a new Recipe, marked as checked,
so pipeline.compress checks only a Recipe that did not come from here (`checked_recipe`). This module sits above
config, inputs, models and the registries' homes (extensions), below pipeline and cli.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .config.load import blame_overrides, format_error, parse_recipe, read_recipe_file, recorded_recipe_data, with_overrides
from .config.schema import InputSpec, Recipe
from .errors import BadInput
from .extensions import check_recipe
from .inputs.builtin import BUILTINS, check_available
from .inputs.images import IMAGE_SUFFIXES, Skipped, UnreadableImage, decode_image, iter_images
from .inputs.labeled import class_folders
from .inputs.pool import SOURCES, PoolSource
from .models.factory import build_student_model, student_candidates
from .models.teachers import complete_teacher_spec


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """The checked recipe of a YAML file, with --set items (`section.key=value`) applied."""
    path = Path(path)
    data = read_recipe_file(path, overrides)
    return recipe_from_dict(data, base_dir=path.resolve().parent, source=str(path), overrides=overrides)


def recipe_with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A loaded recipe with --set style overrides applied, checked again as a whole; `recipe` is left as it was."""
    data = with_overrides(recipe.model_dump(mode="json"), overrides)
    return recipe_from_dict(data, base_dir=recipe.base_dir, source=f"recipe {recipe.name}", overrides=overrides)


def recipe_from_dict(
    data: dict[str, Any], base_dir: Path = Path("."), source: str = "<recipe>", overrides: list[str] | None = None
) -> Recipe:
    """A checked Recipe from YAML data; `overrides` are the --set items already applied to it, named by errors they cause.
    Data in an earlier recipe format (a recorded run.json, a dict in Python) is upgraded first, with one warning;
    `data` itself is left as it was."""
    return _check(parse_recipe(data, base_dir, source, overrides), source, overrides)


def checked_recipe(recipe: Recipe, source: str = "recipe") -> Recipe:
    """`recipe` itself when the checked loader made it (or a model_copy of such a recipe); else a checked copy of it:
    a Recipe built in Python gets every check of a loaded one, and is left as it was."""
    return recipe if recipe._checked else _check(recipe, source)


def recipe_for_regate(run_dir: Path | None, recipe_path: Path | None, overrides: list[str], only_targets: list[str]) -> Recipe:
    """The recipe to validate with: RECIPE, or the one the run recorded in run.json; then --set, then --target.

    Targets and budgets are inputs of the validate stage only, so re-gating never redoes select, distill or export.
    Only the targets --target names are checked.
    """
    if recipe_path is not None:
        data, base_dir, source = read_recipe_file(recipe_path, overrides), Path(recipe_path).resolve().parent, str(recipe_path)
    elif run_dir is None:
        raise BadInput("validate needs a RECIPE, or --run-dir DIR of an earlier run to re-gate with the recipe it recorded")
    else:
        data, base_dir, source = recorded_recipe_data(Path(run_dir), overrides)
    recipe = parse_recipe(data, base_dir, source, overrides)
    if only_targets:
        names = [t.name for t in recipe.targets]
        unknown = [n for n in only_targets if n not in names]
        if unknown:
            raise BadInput(f"--target {unknown[0]}: no such target; the recipe has {', '.join(names) or 'none'}")
        recipe = recipe.model_copy(update={"targets": [t for t in recipe.targets if t.name in only_targets]})
    return _check(recipe, source, overrides)


def _check(recipe: Recipe, source: str, overrides: list[str] | None = None) -> Recipe:
    """Steps 2 to 6 of the module's docstring on a parsed recipe, each once; a new Recipe, marked as checked."""
    try:
        t = recipe.teacher
        weights = recipe.resolve(t.weights) if t.weights is not None else None
        if weights is not None and not weights.is_file():
            raise BadInput(f"{source}: teacher.weights: file {weights} does not exist")
        pool = _pool_sources(recipe, source)
        _check_files(recipe, source)
        teacher = complete_teacher_spec(t, weights, source)
        checked = recipe.model_copy(update={"pool": pool, "teacher": teacher}, deep=True)
        _check_after_teacher(checked, source)
        check_recipe(checked, source)
    except BadInput as exc:
        raise BadInput(blame_overrides(str(exc), source, overrides or [])) from None
    checked._checked = True
    return checked


def _pool_sources(recipe: Recipe, source: str) -> list[PoolSource]:
    """Each pool entry as the source kind its key names (SOURCES), checked; the recipe's own entries are left as they were."""
    kinds = SOURCES.names()
    pool = []
    for i, entry in enumerate(recipe.pool):
        raw = entry.model_dump()
        named = [k for k in kinds if k in raw]
        if len(named) != 1:
            found = ", ".join(raw) or "nothing"
            raise BadInput(
                f"{source}: pool.{i}: a pool entry needs exactly one of " + ", ".join(f"`{k}:`" for k in kinds) + f" (it has {found})"
            )
        kind = SOURCES.get(named[0])
        try:
            part = kind.model_validate(raw)
        except ValidationError as exc:
            raise BadInput(format_error(source, exc.errors()[0], kind, ("pool", i))) from None
        part.check(recipe, f"{source}: pool.{i}")
        pool.append(part)
    return pool


def _check_files(recipe: Recipe, source: str) -> None:
    """Missing files are recipe errors, reported before any work starts (the teacher's weights are checked first)."""
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


def _check_decodable(folder: Path, classes: list[str], spec: InputSpec, what: str) -> None:
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
