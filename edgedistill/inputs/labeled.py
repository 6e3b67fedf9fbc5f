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
    limit, seed = recipe.eval.limit, recipe.seed
    if ref.startswith("builtin:"):
        data = load_builtin(ref[8:])
        if data.labels is None:
            raise BadInput(f"eval.labeled: built-in {ref[8:]!r} has no labels; use a labeled set")
        labels = data.labels.astype(np.int64)
        keep = stratified_sample(labels, limit, seed) if limit else np.arange(len(labels))
        return EvalSet(ref, convert_array(data.images[keep], spec), labels[keep])
    return read_class_folders(recipe.resolve(Path(ref)), spec, recipe.teacher.class_names, recipe.teacher.num_classes, limit, seed=seed)


def stratified_quotas(sizes: list[int], limit: int) -> list[int]:
    """How many of `limit` images each class gets: in proportion to its size (largest remainders, ties to the lower
    class), so a limit keeps the set's class mix instead of the first classes in folder order."""
    total = sum(sizes)
    if limit >= total:
        return list(sizes)
    exact = [limit * n / total for n in sizes]
    quotas = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (quotas[i] - exact[i], i))
    for i in by_remainder[: limit - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _class_orders(sizes: list[int], limit: int | None, seed: int) -> tuple[list[np.ndarray], list[int]]:
    """Per class, the order its items are taken in (a seeded shuffle under a limit, else as listed) and its quota."""
    if not limit:
        return [np.arange(n) for n in sizes], list(sizes)
    rng = np.random.default_rng(seed)
    return [rng.permutation(n) for n in sizes], stratified_quotas(sizes, limit)


def stratified_sample(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Indices of a seeded, class-stratified sample of `limit` labels (all when there are fewer), in index order."""
    classes = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in classes]
    orders, quotas = _class_orders([len(m) for m in members], limit, seed)
    return np.sort(np.concatenate([m[order[:q]] for m, order, q in zip(members, orders, quotas, strict=True)]))


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
    seed: int = 0,
) -> EvalSet:
    """One subfolder per class, named as the class or its index. `sorted_fallback`, for models made elsewhere
    that name neither: classes are the sorted subfolder names, as torchvision's ImageFolder numbers them.

    `limit` takes a seeded, class-stratified sample (`stratified_quotas`), the same for compress (the recipe's seed)
    and `validate --limit` (seed 0); only the sampled files are decoded, an unreadable one replaced by the next of its
    class, so `unreadable` then lists the files tried (and every entry that could not be listed)."""
    classes, index, by_sorted_order = class_folders(folder, names, num_classes, what, sorted_fallback)
    files: list[list[Path]] = []
    unreadable: list[str] = []
    for c in classes:
        listed = list(iter_images(folder / c))
        unreadable += [str(p) for p in listed if isinstance(p, Skipped)]
        files.append([p for p in listed if not isinstance(p, Skipped)])
    orders, quotas = _class_orders([len(f) for f in files], limit, seed)
    images, labels = [], []
    for c, paths, order, quota in zip(classes, files, orders, quotas, strict=True):
        taken: list[tuple[int, np.ndarray]] = []
        for i in order:
            if len(taken) == quota:
                break
            try:
                taken.append((int(i), decode_image(paths[i], spec)))
            except UnreadableImage as exc:
                unreadable.append(f"{paths[i]}: {exc}")
        images += [image for _, image in sorted(taken, key=lambda t: t[0])]
        labels += [index[c]] * len(taken)
    if not images:
        raise BadInput(f"{what}: no readable images under {folder}/<class>/")
    name = str(folder) + (" (classes in sorted folder order)" if by_sorted_order else "")
    return EvalSet(name, np.stack(images), np.array(labels, dtype=np.int64), unreadable)
