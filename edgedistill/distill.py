"""Distill: the student learns the teacher's logits, features and batch relations on the selected samples."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .class_drop import drop_classes
from .losses import FeatureLoss, KDLoss, RelationLoss
from .models import feature_layer_of, tap_features
from .pool import standardize
from .recipe import AugmentSpec, ClassDropSpec, DistillSpec, InputSpec


class FeatureTap:
    """Captures the features the explicit losses compare: `layer`, else the layer recorded on the model
    (recipe feature_layer), else the penultimate features (the input of the model's classifier).

    Conv maps (N, C, H, W) are global-average-pooled and token maps (N, L, C) averaged over tokens, so the
    adapter stays C_student x C_teacher and teacher and student maps need not share a resolution.
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.features: torch.Tensor | None = None
        self._remove = tap_features(model, layer if layer is not None else feature_layer_of(model), self._capture)

    def _capture(self, output: torch.Tensor) -> None:
        if output.ndim == 4:
            output = output.mean((2, 3))
        elif output.ndim == 3:
            output = output.mean(1)
        self.features = output

    def remove(self) -> None:
        self._remove()


class Distiller(nn.Module):
    """Teacher pinned to eval and frozen; `forward` returns the loss parts and the student's logits."""

    def __init__(self, teacher: nn.Module, student: nn.Module, spec: DistillSpec, class_drop: ClassDropSpec,
                 input_spec: InputSpec, teacher_layer: str | None = None, student_layer: str | None = None):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.loss_spec = spec.loss
        self.class_drop = class_drop
        self.teacher_tap, self.student_tap = FeatureTap(teacher, teacher_layer), FeatureTap(student, student_layer)
        with torch.no_grad():
            probe = torch.zeros(2, input_spec.channels, input_spec.size, input_spec.size)
            was_training = student.training
            student.eval()
            self.teacher(probe), self.student(probe)
            student.train(was_training)
        self.kd = KDLoss(spec.loss.temperature)
        self.feature = FeatureLoss(self.student_tap.features.flatten(1).shape[1], self.teacher_tap.features.flatten(1).shape[1])
        terms = spec.loss.relation_terms
        self.relation = RelationLoss(terms.distance, terms.angle, terms.similarity)

    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
            teacher_features = self.teacher_tap.features
        student_logits = self.student(x)
        student_features = self.student_tap.features
        w = self.loss_spec
        cd = self.class_drop
        soft = drop_classes(F.softmax(teacher_logits / w.temperature, dim=1),
                            top_k=cd.top_k if cd.mode == "top_k" else None,
                            min_prob=cd.min_prob if cd.mode == "min_prob" else None)
        parts = {"kd": w.kd * self.kd(student_logits, soft)}
        if w.feature:
            parts["feature"] = w.feature * self.feature(student_features, teacher_features)
        if w.relation:
            parts["relation"] = w.relation * self.relation(student_features, teacher_features)
        parts["loss"] = sum(parts.values())
        parts["student_logits"] = student_logits
        parts["teacher_logits"] = teacher_logits
        return parts


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random affine (rotation, scale, translation) and optional flip, in one grid_sample call.

    Works on [0, 1] images so that the area uncovered by the transform is black, not the mean colour.
    With `mixup`, images are blended with others of the batch: the teacher labels the blend, so the
    selected set is widened without any label noise.
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
    return x


GRAD_CLIP = 5.0  # out-of-domain batches can carry extreme teacher features; clipping keeps one from derailing training


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict] = field(default_factory=list)


def distill(
    teacher: nn.Module,
    student: nn.Module,
    images: np.ndarray,
    spec: DistillSpec,
    class_drop: ClassDropSpec,
    input_spec: InputSpec,
    seed: int,
    checkpoint: Path | None = None,
    evaluate: Callable[[nn.Module], dict] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> DistillResult:
    """Trains `student` in place; with `checkpoint`, resumes from the last finished epoch."""
    torch.manual_seed(seed)
    distiller = Distiller(teacher, student, spec, class_drop, input_spec)
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    data = torch.from_numpy(images)
    steps_per_epoch = max(1, len(data) // spec.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch,
                                                    pct_start=0.15, anneal_strategy="cos")
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        student.load_state_dict(state["student"])
        distiller.feature.load_state_dict(state["feature"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]
    for epoch in range(start_epoch, spec.epochs):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(data), generator=generator)
        distiller.train()
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = data[order[step * spec.batch_size:(step + 1) * spec.batch_size]].float() / 255.0
            if spec.augment is not None:
                batch = augment_batch(batch, spec.augment, generator)
            parts = distiller(standardize(batch, input_spec))
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            optimizer.step()
            scheduler.step()
            for k, v in parts.items():
                if k not in ("student_logits", "teacher_logits"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            if on_step:
                on_step()
        record = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}, "lr": scheduler.get_last_lr()[0]}
        if evaluate is not None:
            student.eval()
            record.update(evaluate(student))
        history.append(record)
        if checkpoint is not None:
            from .rundir import atomic_torch_save

            atomic_torch_save({"student": student.state_dict(), "feature": distiller.feature.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "history": history, "epoch": epoch + 1}, checkpoint)
        if on_epoch:
            on_epoch(record)
    distiller.teacher_tap.remove()
    distiller.student_tap.remove()
    student.eval()
    return DistillResult(student, history)
