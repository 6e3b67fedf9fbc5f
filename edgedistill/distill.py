"""Distill: the student learns the teacher's logits, features and batch relations on the selected samples."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torch.nn.parallel import DistributedDataParallel

from .class_drop import drop_classes
from .compute import Compute
from .distributed import all_reduce_grads, barrier, broadcast_object, world
from .errors import BadInput
from .losses import FeatureLoss, KDLoss, RelationLoss
from .models import feature_layer_of, tap_features
from .pool import normalize, standardize
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
            probe = torch.zeros(2, input_spec.channels, input_spec.size, input_spec.size, device=next(student.parameters()).device)
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

    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in float32."""
        with torch.no_grad():
            logits = self.teacher(x)
            return logits.float(), self.teacher_tap.features.flatten(1).float()

    def forward(self, x: torch.Tensor, teacher_out: tuple[torch.Tensor, torch.Tensor] | None = None,
                student: nn.Module | None = None, autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict[str, torch.Tensor]:
        """`teacher_out`: the teacher's stored outputs for `x` (no augmentation); `student`: the student's
        DDP or compiled wrapper; the losses are computed in float32 outside `autocast`."""
        with autocast():
            teacher_logits, teacher_features = teacher_out if teacher_out is not None else self.teacher_outputs(x)
            student_logits = (student if student is not None else self.student)(x)
        student_logits, student_features = student_logits.float(), self.student_tap.features.float()
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
    start_epoch: int = 0  # > 0 when resumed from a checkpoint
    images_per_s: float | None = None  # training loop only (data, augmentation, step), all ranks together


class SelectedBatches(torch.utils.data.Dataset):
    """Indexed by a whole batch of positions (a BatchSampler's list): one fancy-index read per batch, from RAM or a memory map."""

    def __init__(self, images: np.ndarray, teacher_outputs: np.ndarray | None):
        self.images, self.teacher_outputs = images, teacher_outputs

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        order = np.sort(np.asarray(positions))  # sorted reads are sequential on a memory map; a batch has no order
        images = torch.from_numpy(np.ascontiguousarray(self.images[order]))
        stored = None if self.teacher_outputs is None else torch.from_numpy(np.ascontiguousarray(self.teacher_outputs[order]))
        return images, stored


def store_teacher_outputs(distiller: Distiller, images: np.ndarray, input_spec: InputSpec, path: Path,
                          compute: Compute, batch: int = 512) -> None:
    """The teacher's logits and features for every selected image, as one float32 (N, classes + features) array
    memory-mapped from `path`: without augmentation they never change, so training skips the teacher."""
    from .rundir import atomic_path

    if not path.exists():
        logits, features = distiller.teacher_outputs(compute.input(normalize(torch.from_numpy(images[:2]).to(compute.device), input_spec)))
        width = logits.shape[1] + features.shape[1]
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(images), width))
            for start in range(0, len(images), batch):
                x = compute.input(normalize(torch.from_numpy(images[start:start + batch]).to(compute.device), input_spec))
                with compute.autocast():
                    logits, features = distiller.teacher_outputs(x)
                out[start:start + len(x)] = torch.cat([logits, features], 1).cpu().numpy()
            out.flush()
            del out


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
    compute: Compute | None = None,
    teacher_cache: Path | None = None,
) -> DistillResult:
    """Trains `student` in place; with `checkpoint`, resumes from the last finished epoch.

    Under torchrun, each rank trains on its DistributedSampler share of every global batch of `spec.batch_size`
    (the same optimization as one process; relation losses see each rank's part of the batch), only the student
    is wrapped in DDP, and rank 0 evaluates and writes the checkpoint. Without augmentation and with
    `teacher_cache`, the teacher's outputs are computed once and memory-mapped.
    """
    w = world()
    compute = compute or Compute(w.device, None, False, False)
    if spec.batch_size % w.size:
        raise BadInput(f"distill.batch_size {spec.batch_size} does not split evenly over {w.size} ranks; use a multiple of {w.size}")
    local_batch = spec.batch_size // w.size
    torch.manual_seed(seed)
    compute.prepare(teacher)
    compute.prepare(student)
    distiller = Distiller(teacher, student, spec, class_drop, input_spec).to(compute.device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    adapter_params = list(distiller.feature.parameters())
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = max(1, len(images) // spec.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch,
                                                    pct_start=0.15, anneal_strategy="cos")
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.dtype is torch.float16)
    history: list[dict] = []
    start_epoch = 0
    state = None
    if checkpoint is not None and w.main and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = broadcast_object(state)
    if state is not None:
        student.load_state_dict(state["student"])
        distiller.feature.load_state_dict(state["feature"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start_epoch = state["history"], state["epoch"]
    stored = None
    if spec.augment is None and teacher_cache is not None:
        if w.main:
            store_teacher_outputs(distiller, images, input_spec, teacher_cache, compute)
        barrier()
        stored = np.load(teacher_cache, mmap_mode="c")  # copy-on-write: writable for torch.from_numpy, never written
    classes = None if stored is None else stored.shape[1] - distiller.feature.adapter.out_features
    step_student: nn.Module = student
    if w.distributed:
        step_student = DistributedDataParallel(student, device_ids=[compute.device] if compute.device.type == "cuda" else None)
    if compute.compile:
        step_student = torch.compile(step_student)
    sampler = torch.utils.data.DistributedSampler(range(len(images)), num_replicas=w.size, rank=w.rank, shuffle=True, seed=seed)
    loader = torch.utils.data.DataLoader(
        SelectedBatches(images, stored), batch_size=None, pin_memory=compute.pin_memory,
        sampler=torch.utils.data.BatchSampler(sampler, local_batch, drop_last=True))
    train_seconds, trained = 0.0, 0
    for epoch in range(start_epoch, spec.epochs):
        tick = time.perf_counter()
        sampler.set_epoch(epoch)
        generator = torch.Generator().manual_seed(seed * 1000 + epoch + 7919 * w.rank)
        distiller.train()
        sums: dict[str, float] = {}
        for step, (batch, teacher_out) in enumerate(loader):
            if step == steps_per_epoch:
                break
            batch = batch.to(compute.device, non_blocking=True).float() / 255.0
            if spec.augment is not None:
                batch = augment_batch(batch, spec.augment, generator)
            if teacher_out is not None:
                teacher_out = teacher_out.to(compute.device, non_blocking=True)
                teacher_out = (teacher_out[:, :classes], teacher_out[:, classes:])
            parts = distiller(compute.input(standardize(batch, input_spec)), teacher_out, step_student, compute.autocast)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(parts["loss"]).backward()
            all_reduce_grads(adapter_params)
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            for k, v in parts.items():
                if k not in ("student_logits", "teacher_logits"):
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
            if on_step and w.main:
                on_step()
        if compute.device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - tick
        trained += steps_per_epoch * spec.batch_size
        record = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}, "lr": scheduler.get_last_lr()[0]}
        if evaluate is not None and w.main:
            student.eval()
            record.update(evaluate(student))
        history.append(record)
        if checkpoint is not None and w.main:
            from .rundir import atomic_torch_save

            atomic_torch_save({"student": student.state_dict(), "feature": distiller.feature.state_dict(), "optimizer": optimizer.state_dict(),
                               "scheduler": scheduler.state_dict(), "history": history, "epoch": epoch + 1}, checkpoint)
        barrier()
        if on_epoch and w.main:
            on_epoch(record)
    distiller.teacher_tap.remove()
    distiller.student_tap.remove()
    student.eval()
    return DistillResult(student, history, start_epoch, trained / train_seconds if train_seconds else None)
