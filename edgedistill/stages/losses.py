"""Loss parts of the distiller: explicit knowledge (logits, features) and implicit relations between samples.

Each part is one class registered in LOSSES under the name `distill.loss` uses; its `Params` are the recipe's
parameters for it (besides `weight`), and `compute` takes what the Distiller hands every part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from torch import nn

from ..config.schema import Strict
from ..errors import BadInput
from ..registry import Registry


@dataclass
class LossInputs:
    """What a loss part may compare, for one batch."""

    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    student_features: torch.Tensor
    teacher_features: torch.Tensor
    soft_labels: Callable[[float], torch.Tensor]  # the teacher's class-dropped soft labels at a temperature


class LossPart(nn.Module):
    """A term of the distillation loss; the Distiller multiplies `compute` by the recipe's weight."""

    class Params(Strict):
        weight: Annotated[float, Field(ge=0)] = 1.0

    @classmethod
    def params(cls, entry: Any, where: str) -> LossPart.Params:
        """The recipe's entry (a weight, or a mapping with weight and parameters) as this part's Params."""
        try:
            return cls.Params.model_validate({"weight": entry} if isinstance(entry, (int, float)) else entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            problem = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            known = ", ".join(cls.Params.model_fields)
            raise BadInput(f"{where}{'.' + field if field else ''}: {problem} (parameters: {known})") from None

    @classmethod
    def build(cls, params: LossPart.Params, student_dim: int, teacher_dim: int) -> LossPart:
        return cls(**params.model_dump(exclude={"weight"}))

    def compute(self, x: LossInputs) -> torch.Tensor:
        raise NotImplementedError


LOSSES: Registry[type[LossPart]] = Registry("distill.loss")


@LOSSES.register("kd")
class KDLoss(LossPart):
    """Hinton KD: KL(teacher soft labels || student at temperature T), scaled by T^2 so gradients keep their size."""

    class Params(LossPart.Params):
        temperature: Annotated[float, Field(gt=0)] = Field(
            1.0,
            description="softmax temperature; on out-of-domain pools, temperatures above 1 amplify the teacher's "
            "noisy low-probability classes (docs/method.md)",
        )

    def __init__(self, temperature: float = Params.model_fields["temperature"].default):  # one default: the recipe's
        super().__init__()
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(student_logits / self.temperature, dim=1)
        kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(1)
        return kl.mean() * self.temperature**2

    def compute(self, x: LossInputs) -> torch.Tensor:
        return self(x.student_logits, x.soft_labels(self.temperature))


@LOSSES.register("feature")
class FeatureLoss(LossPart):
    """MSE between adapted student features and teacher features, relative to the teacher features' energy.

    Dividing by the energy makes the loss weight mean the same for any teacher's feature scale.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.adapter = nn.Linear(student_dim, teacher_dim)

    @classmethod
    def build(cls, params: LossPart.Params, student_dim: int, teacher_dim: int) -> FeatureLoss:
        return cls(student_dim, teacher_dim)

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        target = teacher_features.flatten(1)
        return F.mse_loss(self.adapter(student_features.flatten(1)), target) / target.pow(2).mean().clamp_min(1e-8)

    def compute(self, x: LossInputs) -> torch.Tensor:
        return self(x.student_features, x.teacher_features)


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances from the Gram matrix: B^2 memory instead of the B^2 x D of explicit differences."""
    squared = x.pow(2).sum(1)
    d = (squared.unsqueeze(0) + squared.unsqueeze(1) - 2 * x @ x.T).clamp_min(1e-12).sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _angles(x: torch.Tensor) -> torch.Tensor:
    """RKD's cosines <x_j - x_i, x_k - x_i> / (|x_j - x_i| |x_k - x_i|) for every (i, j, k), from the B x B Gram matrix:
    O(B^2 D + B^3) instead of the O(B^3 D) of explicit differences, which took 11-22% of a B3-like step
    (docs/throughput.md). A difference of ~0 (j == i, or a duplicate image) gives 0, as normalizing a zero vector
    does. Centring first changes no difference and keeps the Gram matrix's cancellation small."""
    x = x - x.mean(0, keepdim=True)
    g = x @ x.T
    d = g.diagonal()
    dots = g.unsqueeze(0) - g.unsqueeze(1) - g.unsqueeze(2) + d.view(-1, 1, 1)  # [i, j, k] = <x_j - x_i, x_k - x_i>
    squared = (d.unsqueeze(0) + d.unsqueeze(1) - 2 * g).clamp_min(0)  # [i, j] = |x_j - x_i|^2
    apart = squared > 1e-6 * (d.unsqueeze(0) + d.unsqueeze(1)).clamp_min(1e-12)
    inv = torch.where(apart, squared.clamp_min(1e-24).rsqrt(), torch.zeros_like(squared))
    return (dots * inv.unsqueeze(2) * inv.unsqueeze(1)).flatten()


@LOSSES.register("relation")
class RelationLoss(LossPart):
    """Implicit structured knowledge: how the samples of a batch relate to each other, teacher vs student.

    `distance` and `angle` are RKD's (Park et al. 2019), `similarity` is the batch similarity matrix of
    SP (Tung & Mori 2019). All are means over pairs, so the loss does not depend on the batch order
    (angles: for batches up to `angle_samples`).
    """

    class Params(LossPart.Params):
        distance: Annotated[float, Field(ge=0)] = 1.0
        angle: Annotated[float, Field(ge=0)] = 2.0
        similarity: Annotated[float, Field(ge=0)] = 0.0

    def __init__(self, distance: float = 1.0, angle: float = 2.0, similarity: float = 0.0, angle_samples: int = 64):
        super().__init__()
        self.weights = {"distance": distance, "angle": angle, "similarity": similarity}
        self.angle_samples = angle_samples

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        s, t = student.flatten(1), teacher.flatten(1).detach()
        loss = s.new_zeros(())
        if self.weights["distance"]:
            ds, dt = _pairwise_distances(s), _pairwise_distances(t)
            ds = ds / ds[ds > 0].mean().clamp_min(1e-8)
            dt = dt / dt[dt > 0].mean().clamp_min(1e-8)
            loss = loss + self.weights["distance"] * F.smooth_l1_loss(ds, dt)
        if self.weights["angle"]:
            k = self.angle_samples  # angles cost O(B^3): a shuffled batch's first k samples are a fair subset
            loss = loss + self.weights["angle"] * F.smooth_l1_loss(_angles(s[:k]), _angles(t[:k]))
        if self.weights["similarity"]:
            gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
            loss = loss + self.weights["similarity"] * (gs - gt).pow(2).sum() / len(s) ** 2
        return loss

    def compute(self, x: LossInputs) -> torch.Tensor:
        return self(x.student_features, x.teacher_features)
