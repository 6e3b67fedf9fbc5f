"""Labeled evaluation sets: a built-in set or a folder with one subfolder per class, decoded like the pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config.schema import InputSpec, Recipe
from ..errors import BadInput
from .builtin import load_builtin
from .images import Skipped, UnreadableImage, convert_array, decode_image, iter_images


@dataclass
class EvalSet:
    """Images the student never trained on, with labels when the user has them."""

    name: str
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray | None  # int64 (N,)
    unreadable: list[str] = field(default_factory=list)  # "path: reason" of files that could not be read


def load_labeled(ref: str, recipe: Recipe) -> EvalSet:
    """`builtin:NAME` or a folder with one subfolder per class (named as the class, or its index)."""
    spec = recipe.teacher.input
    if ref.startswith("builtin:"):
        data = load_builtin(ref[8:], count=recipe.eval.limit, seed=recipe.seed)
        if data.labels is None:
            raise BadInput(f"eval.labeled: built-in {ref[8:]!r} has no labels; use a labeled set")
        return EvalSet(ref, convert_array(data.images, spec), data.labels.astype(np.int64))
    return read_class_folders(recipe.resolve(Path(ref)), spec, recipe.teacher.class_names, recipe.teacher.num_classes, recipe.eval.limit)


def class_folders(
    folder: Path, names: list[str] | None, num_classes: int | None, what: str = "eval.labeled", sorted_fallback: bool = False
) -> tuple[list[str], dict[str, int], bool]:
    """The class subfolders of `folder` and the class index of each, checked before any image is read."""
    if not folder.is_dir():
        raise BadInput(f"{what}: {folder} is not a directory of class subfolders")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise BadInput(f"{what}: {folder} has no class subfolders (expected {folder}/<class>/<image>)")
    by_sorted_order = sorted_fallback and not names and not all(c.isdigit() for c in classes)
    index: dict[str, int] = {}
    for i, c in enumerate(classes):
        if by_sorted_order:
            index[c] = i
        elif names and c in names:
            index[c] = names.index(c)
        elif c.isdigit() and (num_classes is None or int(c) < num_classes):
            index[c] = int(c)
        else:
            raise BadInput(f"{what}: subfolder {c!r} of {folder} is neither a class name nor a class index below {num_classes}")
    if num_classes is not None and max(index.values()) >= num_classes:
        raise BadInput(f"{what}: {folder} has {len(classes)} class subfolders but the model has {num_classes} classes")
    return classes, index, by_sorted_order


def read_class_folders(
    folder: Path,
    spec: InputSpec,
    names: list[str] | None,
    num_classes: int | None,
    limit: int | None = None,
    what: str = "eval.labeled",
    sorted_fallback: bool = False,
) -> EvalSet:
    """One subfolder per class, named as the class or its index. `sorted_fallback`, for models made elsewhere
    that name neither: classes are the sorted subfolder names, as torchvision's ImageFolder numbers them."""
    classes, index, by_sorted_order = class_folders(folder, names, num_classes, what, sorted_fallback)
    images, labels, unreadable = [], [], []
    for c in classes:
        for path in iter_images(folder / c):
            if isinstance(path, Skipped):
                unreadable.append(str(path))
                continue
            try:
                images.append(decode_image(path, spec))
                labels.append(index[c])
            except UnreadableImage as exc:
                unreadable.append(f"{path}: {exc}")
    if not images:
        raise BadInput(f"{what}: no readable images under {folder}/<class>/")
    if limit:
        images, labels = images[:limit], labels[:limit]
    name = str(folder) + (" (classes in sorted folder order)" if by_sorted_order else "")
    return EvalSet(name, np.stack(images), np.array(labels, dtype=np.int64), unreadable)
