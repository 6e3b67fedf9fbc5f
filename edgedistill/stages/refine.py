"""Refine: move pool images a few signed-gradient steps toward the teacher's classes, staying within an L-inf radius
of the real image they started from (model inversion initialised from pool images, not from noise).

The open-world pool holds few images the teacher reads confidently as some classes; a small step toward a class
turns a pool image into one that sits near the teacher's decision boundary for it, which is where the student
learns most. Targets (`distill.refine.target`: a RefineTarget in REFINE_TARGETS; a plugin adds its own the same
way): a random class (spreads images over all boundaries), the teacher's own class or second choice, the class the
selection holds fewest of, or the student's disagreement with the teacher (the adversarial samples of data-free KD,
searched within the radius). Optional priors keep the images natural: total variation, and, for teachers with
BatchNorm, matching the batch statistics each BN layer saw in training (DeepInversion).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config.schema import InputSpec, RefineSpec
from ..inputs.images import standardize
from ..registry import Registry


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


class RefineTarget:
    """A `distill.refine.target`: the class each image moves toward (`choose`) and what the signed-gradient steps
    descend (`loss`, summed over the batch)."""

    uses_student = False  # `loss` gets the student's logits (None where no student is training: refine `once`)
    needs_class_weights = False  # `choose` gets how rare each class is in the training set (distill.class_weights)

    def choose(self, teacher_logits: torch.Tensor, generator: torch.Generator, class_weights: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(teacher_logits, targets, reduction="sum")


REFINE_TARGETS: Registry[type[RefineTarget]] = Registry("distill.refine.target")


@REFINE_TARGETS.register("random")
class RandomClass(RefineTarget):
    """Any class, drawn uniformly: spreads images over all the teacher's boundaries."""

    def choose(self, teacher_logits: torch.Tensor, generator: torch.Generator, class_weights: torch.Tensor | None) -> torch.Tensor:
        n, k = teacher_logits.shape
        return torch.randint(0, k, (n,), generator=generator)


@REFINE_TARGETS.register("argmax")
class TeacherClass(RefineTarget):
    """The teacher's own class."""

    def choose(self, teacher_logits: torch.Tensor, generator: torch.Generator, class_weights: torch.Tensor | None) -> torch.Tensor:
        return teacher_logits.argmax(1)


@REFINE_TARGETS.register("second")
class SecondChoice(RefineTarget):
    """The teacher's second choice."""

    def choose(self, teacher_logits: torch.Tensor, generator: torch.Generator, class_weights: torch.Tensor | None) -> torch.Tensor:
        return teacher_logits.topk(2, 1).indices[:, 1]


@REFINE_TARGETS.register("rare")
class RareClass(TeacherClass):
    """Classes drawn by how few training images the teacher puts in each (its own class without the weights)."""

    needs_class_weights = True

    def choose(self, teacher_logits: torch.Tensor, generator: torch.Generator, class_weights: torch.Tensor | None) -> torch.Tensor:
        if class_weights is None:
            return super().choose(teacher_logits, generator, class_weights)
        return torch.multinomial(class_weights.float(), len(teacher_logits), replacement=True, generator=generator)


@REFINE_TARGETS.register("disagreement")
class Disagreement(TeacherClass):
    """Away from the student while keeping the teacher's class: the adversarial samples of data-free KD, searched
    within the radius (the teacher's class alone where no student trains)."""

    uses_student = True

    def loss(self, teacher_logits: torch.Tensor, targets: torch.Tensor, student_logits: torch.Tensor | None) -> torch.Tensor:
        keep = super().loss(teacher_logits, targets, student_logits)
        if student_logits is None:
            return keep
        # ascend the teacher-student KL while keeping the teacher's class: descend its negative
        return -F.kl_div(F.log_softmax(student_logits, 1), F.softmax(teacher_logits, 1), reduction="sum") + keep


def refine_target(spec: RefineSpec) -> RefineTarget:
    """The recipe's refine target (edgedistill.extensions has checked its name)."""
    return REFINE_TARGETS.get(spec.target, "distill.refine")()


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
    target = refine_target(spec)
    targets = target.choose(logits, generator, class_weights).to(x.device)
    bn = BatchNormStatistics(teacher) if spec.bn_prior else None
    start, moved = x.detach(), x.detach().clone()
    try:
        for _ in range(spec.steps):
            moved.requires_grad_(True)
            inputs = standardize(moved, input_spec)
            teacher_logits = teacher(inputs)
            student_logits = student(inputs) if target.uses_student and student is not None else None
            loss = target.loss(teacher_logits, targets, student_logits)
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
