"""Batch transforms for distillation: random affine and flips, and mixing images of a batch (mixup, CutMix,
mosaics). The teacher labels every transformed batch live, so mixing widens the selected set without label noise:
a CutMix or a mosaic of two pool images is a new image the teacher scores like any other."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config.schema import AugmentSpec


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random affine (rotation, scale, translation) and optional flip, in one grid_sample call.

    Works on [0, 1] images so that the area uncovered by the transform is black, not the mean colour.
    Then, as the spec asks: mixup (a whole batch blended with a shuffled copy), CutMix and mosaics (per image).
    A transform that is off draws no random numbers, so it changes nothing else.
    """
    n = len(x)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(spec.max_rotate_deg)
    scale = spec.scale[0] + torch.rand(n, generator=generator) * (spec.scale[1] - spec.scale[0])
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * spec.max_translate * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(n)
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if spec.mixup and torch.rand((), generator=generator) < spec.mixup:
        lam = torch.rand(n, 1, 1, 1, generator=generator)
        x = lam * x + (1 - lam) * x[torch.randperm(n, generator=generator)]
    if spec.cutmix:
        x = cutmix(x, spec.cutmix, generator)
    if spec.mosaic:
        x = mosaic(x, spec.mosaic, generator)
    return x


def cutmix(x: torch.Tensor, prob: float, generator: torch.Generator, sides: tuple[float, float] = (0.3, 0.7)) -> torch.Tensor:
    """With probability `prob` per image, paste a random box (its side a uniform fraction of the image's in `sides`)
    from another image of the batch."""
    n, _, h, w = x.shape
    other = torch.randperm(n, generator=generator)
    side = sides[0] + torch.rand(n, generator=generator) * (sides[1] - sides[0])
    box_h, box_w = (side * h).long().clamp(1, h), (side * w).long().clamp(1, w)
    top = (torch.rand(n, generator=generator) * (h - box_h + 1).float()).long()
    left = (torch.rand(n, generator=generator) * (w - box_w + 1).float()).long()
    rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    in_rows = (rows >= top.view(n, 1, 1)) & (rows < (top + box_h).view(n, 1, 1))
    in_cols = (cols >= left.view(n, 1, 1)) & (cols < (left + box_w).view(n, 1, 1))
    inside = in_rows & in_cols & (torch.rand(n, generator=generator) < prob).view(n, 1, 1)
    return torch.where(inside.unsqueeze(1).to(x.device), x[other.to(x.device)], x)


def mosaic(x: torch.Tensor, prob: float, generator: torch.Generator) -> torch.Tensor:
    """With probability `prob` per image, a two-tile mosaic of it and another image of the batch, each squeezed to half
    the width side by side (or, half the time, half the height, one above the other): shapes the pool lacks, such as
    two strokes side by side, from shapes it has."""
    n, _, h, w = x.shape
    other = x[torch.randperm(n, generator=generator).to(x.device)]

    def squeeze(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)

    side_by_side = torch.cat([squeeze(x, (h, w // 2)), squeeze(other, (h, w - w // 2))], 3)
    stacked = torch.cat([squeeze(x, (h // 2, w)), squeeze(other, (h - h // 2, w))], 2)
    horizontal = (torch.rand(n, generator=generator) < 0.5).view(n, 1, 1, 1).to(x.device)
    use = (torch.rand(n, generator=generator) < prob).view(n, 1, 1, 1).to(x.device)
    return torch.where(use, torch.where(horizontal, side_by_side, stacked), x)
