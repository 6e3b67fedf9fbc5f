"""Refine: move pool images a few signed-gradient steps toward the teacher's classes, staying within an L-inf radius
of the real image they started from (model inversion initialised from pool images, not from noise).

The open-world pool holds few images the teacher reads confidently as some classes; a small step toward a class
turns a pool image into one that sits near the teacher's decision boundary for it, which is where the student
learns most. Targets: a random class (spreads images over all boundaries), the teacher's own class or second
choice, the class the selection holds fewest of, or the student's disagreement with the teacher (the adversarial
samples of data-free KD, searched within the radius). Optional priors keep the images natural: total variation,
and, for teachers with BatchNorm, matching the batch statistics each BN layer saw in training (DeepInversion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import InputSpec, RefineSpec
from ..inputs.images import standardize


class BatchNormStatistics:
    """DeepInversion's prior: how far a batch's per-channel mean and variance at each BN layer's input are from the
    running statistics the teacher learned from its training data."""

    def __init__(self, teacher: nn.Module):
        self.layers = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
        self.losses: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.ndim)]
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.losses.append((mean - module.running_mean).norm() + (var - module.running_var).norm())

    def take(self) -> torch.Tensor:
        loss, self.losses = sum(self.losses), []
        return loss

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def choose_targets(
    spec: RefineSpec,
    teacher_logits: torch.Tensor,
    generator: torch.Generator,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The class each image moves toward (for `disagreement`, the teacher's own class, which the search keeps)."""
    n, k = teacher_logits.shape
    if spec.target == "random":
        return torch.randint(0, k, (n,), generator=generator)
    if spec.target == "rare" and class_weights is not None:
        return torch.multinomial(class_weights.float(), n, replacement=True, generator=generator)
    if spec.target == "second":
        return teacher_logits.topk(2, 1).indices[:, 1]
    return teacher_logits.argmax(1)


def refine(
    teacher: nn.Module,
    x: torch.Tensor,
    input_spec: InputSpec,
    spec: RefineSpec,
    generator: torch.Generator,
    student: nn.Module | None = None,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """`spec.steps` signed-gradient steps on float [0, 1] NCHW images; each stays within `spec.radius` (L-inf) of
    where it started and within [0, 1]. The teacher labels the result afterwards, as it labels any batch."""
    modes = [(m, m.training) for m in (teacher, student) if m is not None]
    for model, _ in modes:
        model.eval()  # no BatchNorm statistics or dropout change while searching
    with torch.no_grad():
        logits = teacher(standardize(x, input_spec))
    targets = choose_targets(spec, logits, generator, class_weights).to(x.device)
    bn = BatchNormStatistics(teacher) if spec.bn_prior else None
    start, moved = x.detach(), x.detach().clone()
    try:
        for _ in range(spec.steps):
            moved.requires_grad_(True)
            inputs = standardize(moved, input_spec)
            teacher_logits = teacher(inputs)
            if spec.target == "disagreement" and student is not None:
                soft = F.softmax(teacher_logits, 1)
                # ascend the teacher-student KL while keeping the teacher's class: descend its negative
                loss = -F.kl_div(F.log_softmax(student(inputs), 1), soft, reduction="sum") + F.cross_entropy(
                    teacher_logits, targets, reduction="sum"
                )
            else:
                loss = F.cross_entropy(teacher_logits, targets, reduction="sum")
            if bn is not None:
                loss = loss + spec.bn_prior * len(x) * bn.take()
            if spec.tv_prior:
                loss = loss + spec.tv_prior * len(x) * total_variation(moved)
            (grad,) = torch.autograd.grad(loss, moved)
            with torch.no_grad():
                moved = moved - spec.step_size * grad.sign()
                moved = torch.min(torch.max(moved, start - spec.radius), start + spec.radius).clamp_(0, 1)
    finally:
        if bn is not None:
            bn.remove()
        for model, mode in modes:
            model.train(mode)
    return moved.detach()
