"""Class-drop: the teacher's soft labels on out-of-domain images spread mass over unlikely classes; keep the likely ones."""

from __future__ import annotations

import torch


def drop_classes(
    probs: torch.Tensor, top_k: int | None = None, min_prob: float | None = None, only_below: float | None = None
) -> torch.Tensor:
    """Zero each row's unlikely classes (outside its `top_k`, or below `min_prob`) and renormalize.

    The most likely class is always kept, so a row never becomes empty. With `only_below`, only rows whose top
    probability is under it are touched: a confident label is not noisy, and dropping its second choices only
    removes what the teacher knows about similar classes.
    """
    if top_k is not None and top_k < probs.shape[-1]:
        kept = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    elif min_prob is not None:
        kept = (probs >= min_prob).to(probs.dtype).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
    else:
        return probs
    dropped = probs * kept
    dropped = dropped / dropped.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)
    if only_below is None:
        return dropped
    return torch.where(probs.max(-1, keepdim=True).values < only_below, dropped, probs)
