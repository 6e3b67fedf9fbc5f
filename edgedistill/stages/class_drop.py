"""Class-drop: the teacher's soft labels on out-of-domain images spread mass over unlikely classes; keep the likely ones.

Which classes are likely is the recipe's `class_drop.mode`, a ClassDrop registered in CLASS_DROPS (top_k, min_prob,
none; a plugin adds its own the same way); keeping them (each row's most likely class always, renormalized, only
where `class_drop.only_below` says) is the same for every mode.
"""

from __future__ import annotations

import torch

from ..config.schema import ClassDropSpec
from ..registry import Registry


class ClassDrop:
    """A `class_drop.mode`: which classes of each soft label are likely enough to keep. It reads its parameters from
    the recipe's class_drop section."""

    def kept(self, probs: torch.Tensor, spec: ClassDropSpec) -> torch.Tensor | None:
        """1 for each class kept and 0 for each dropped, shaped like `probs` (rows of probabilities); None keeps them all."""
        raise NotImplementedError


CLASS_DROPS: Registry[type[ClassDrop]] = Registry("class_drop.mode")


@CLASS_DROPS.register("top_k")
class TopK(ClassDrop):
    """Each soft label's `top_k` most likely classes."""

    def kept(self, probs: torch.Tensor, spec: ClassDropSpec) -> torch.Tensor | None:
        return top_k_mask(probs, spec.top_k)


@CLASS_DROPS.register("min_prob")
class MinProb(ClassDrop):
    """The classes of at least `min_prob` probability."""

    def kept(self, probs: torch.Tensor, spec: ClassDropSpec) -> torch.Tensor | None:
        return (probs >= spec.min_prob).to(probs.dtype)


@CLASS_DROPS.register("none")
class KeepAll(ClassDrop):
    """Every class: the teacher's soft labels as they are."""

    def kept(self, probs: torch.Tensor, spec: ClassDropSpec) -> torch.Tensor | None:
        return None


def top_k_mask(probs: torch.Tensor, k: int) -> torch.Tensor | None:
    return torch.zeros_like(probs).scatter_(-1, probs.topk(k, dim=-1).indices, 1.0) if k < probs.shape[-1] else None


def class_drop(probs: torch.Tensor, spec: ClassDropSpec) -> torch.Tensor:
    """The recipe's class-drop (`spec.mode` from CLASS_DROPS) applied to soft labels."""
    return keep_classes(probs, CLASS_DROPS.get(spec.mode, "class_drop")().kept(probs, spec), spec.only_below)


def drop_classes(
    probs: torch.Tensor, top_k: int | None = None, min_prob: float | None = None, only_below: float | None = None
) -> torch.Tensor:
    """The built-in modes by their parameter: zero each row's classes outside its `top_k`, or else below `min_prob`."""
    kept = top_k_mask(probs, top_k) if top_k is not None else (probs >= min_prob).to(probs.dtype) if min_prob is not None else None
    return keep_classes(probs, kept, only_below)


def keep_classes(probs: torch.Tensor, kept: torch.Tensor | None, only_below: float | None = None) -> torch.Tensor:
    """Zero each row's classes outside `kept` and renormalize.

    A row that would keep nothing keeps its most likely class, so no row becomes empty. With `only_below`, only rows
    whose top probability is under it are touched: a confident label is not noisy, and dropping its second choices
    only removes what the teacher knows about similar classes.
    """
    if kept is None:
        return probs
    top = torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
    dropped = probs * torch.where(kept.sum(-1, keepdim=True) > 0, kept, top)
    dropped = dropped / dropped.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    if only_below is None:
        return dropped
    return torch.where(probs.max(-1, keepdim=True).values < only_below, dropped, probs)
