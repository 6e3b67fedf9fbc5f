"""Teachers from every source a recipe can name (docs/models.md), and what each source says about its own input
and classes.

`teacher.arch` is either a registered whole-model format (FORMATS: onnx, torchscript, pickle; `weights` is the
model file), or an architecture (lenet5, torchvision:NAME, timm:NAME, module.path:callable) with a state dict or
published weights. Adding a format is one module here with one `@FORMATS.register("name")` class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError
from torch import nn

from ...config.schema import InputSpec, TeacherSpec
from ...errors import BadInput
from ..factory import check_model_runs
from ..features import resolve_feature_layer, set_feature_layer
from . import onnx, pickle, torchscript  # noqa: F401  (each registers its format)
from .architecture import ArchitectureFormat
from .base import FORMATS, SourceFacts, TeacherFormat


def teacher_format(arch: str) -> TeacherFormat:
    return FORMATS.get(arch)() if arch in FORMATS else ArchitectureFormat()


def source_facts(spec: TeacherSpec, weights: Path | None) -> SourceFacts:
    fmt = teacher_format(spec.arch)
    fmt.check(spec, weights)
    return fmt.facts(spec, weights)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(abs(x - y) <= 1e-4 for x, y in zip(a, b))
    return a == b


def complete_teacher_spec(spec: TeacherSpec, weights: Path | None, where: str) -> TeacherSpec:
    """The teacher section with teacher.input, num_classes and class_names filled from the model where the recipe
    leaves them out, as a new TeacherSpec (`spec` is left as it was); where both speak and disagree, the recipe is
    wrong (a BadInput), never silently overridden. Reads the model file's facts (for ONNX its graph), so the checked
    loader (edgedistill.recipe) runs it once per load and load_teacher_model skips a spec it completed."""
    try:
        facts = source_facts(spec, weights)
    except BadInput as exc:
        raise BadInput(f"{where}: teacher: {exc}") from None
    said = {key: getattr(facts, key) for key in ("channels", "size", "mean", "std")}
    given = spec.input.model_dump(exclude_none=True) if spec.input is not None else {}
    for key, value in said.items():
        if key in given and value is not None and not _same(given[key], value):
            raise BadInput(
                f"{where}: teacher.input.{key} is {given[key]} but {facts.origin} says {value}; "
                f"fix the recipe or drop teacher.input.{key} to use the model's"
            )
    merged = {key: given.get(key, value if value is not None else facts.defaults.get(key)) for key, value in said.items()}
    missing = [key for key, value in merged.items() if value is None]
    if missing:
        raise BadInput(
            f"{where}: teacher.input: required key is missing: {', '.join(missing)}; {facts.origin} does not say "
            f"{'it' if len(missing) == 1 else 'them'}, so add {' and '.join(f'teacher.input.{k}' for k in missing)} to the recipe"
        )
    try:
        completed_input = InputSpec(**merged)
    except ValidationError as exc:
        from_file = [key for key in said if key not in given and said[key] is not None]
        origin = f" (with {', '.join(from_file)} from {facts.origin})" if from_file else ""
        raise BadInput(f"{where}: teacher.input{origin}: {exc.errors()[0]['msg']}") from None
    num_classes, class_names = spec.num_classes, spec.class_names
    said_classes = len(facts.class_names) if facts.num_classes is None and facts.class_names else facts.num_classes
    if said_classes is not None:
        if num_classes is None:
            num_classes = said_classes
        elif num_classes != said_classes:
            raise BadInput(
                f"{where}: teacher.num_classes: class-count mismatch: the recipe says {num_classes} "
                f"but {facts.origin} has {said_classes}{facts.output_hint}"
            )
    if num_classes is None:
        raise BadInput(
            f"{where}: teacher.num_classes: required key is missing; {facts.origin} does not say how many classes "
            "(give num_classes or class_names)"
        )
    if facts.class_names:
        if len(facts.class_names) != num_classes:
            raise BadInput(f"{where}: {facts.origin} names {len(facts.class_names)} classes but the model has {num_classes}")
        if class_names is None:
            class_names = [str(c) for c in facts.class_names]
        elif class_names != [str(c) for c in facts.class_names]:
            i = next(i for i, (a, b) in enumerate(zip(class_names, facts.class_names)) if a != str(b))
            raise BadInput(
                f"{where}: teacher.class_names differ from {facts.origin}: class {i} is {class_names[i]!r} "
                f"in the recipe but {facts.class_names[i]!r} in the model"
            )
    return spec.model_copy(update={"input": completed_input, "num_classes": num_classes, "class_names": class_names})


def load_teacher_model(spec: TeacherSpec, weights: Path | None, search_path: Path | None = None) -> nn.Module:
    """The frozen teacher in eval mode, checked to map the recipe's input to num_classes logits."""
    if spec.input is None or spec.input.missing() or spec.num_classes is None:  # a spec the checked loader completed skips this
        spec = complete_teacher_spec(spec, weights, "teacher")
    model = teacher_format(spec.arch).load(spec, weights, search_path)
    model.eval()
    if spec.feature_layer is not None:
        resolve_feature_layer(model, spec.feature_layer, "teacher.feature_layer")
    set_feature_layer(model, spec.feature_layer)
    return check_model_runs(model, spec.input, spec.num_classes, "teacher")
