"""DAFL (Chen et al., ICCV 2019), the generator-based data-free baseline, for benchmarks/method.py only.

A generator maps noise to images the teacher classifies confidently (one-hot loss), that excite the
teacher's features (activation loss) and that cover all classes evenly (information-entropy loss); the
student learns the teacher's soft labels (KD) on the generated images. Generator and student steps
alternate, as in the paper's Algorithm 1. Runs for a wall-clock budget and records (seconds, accuracy).
Loss weights follow the paper's MNIST setting (one-hot 1, activation 0.1, information entropy 5).
The paper's generator (width 128, batch 512) costs seconds per step on one CPU thread; the benchmark runs
it at width 64 and batch 128 (about 8x cheaper per step) so that it gets thousands of steps of its budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgedistill.models.features import FeatureTap


class Generator(nn.Module):
    """DAFL's MNIST generator: fc -> 128x7x7 -> (upsample, conv, BN, LeakyReLU) x2 -> conv -> tanh -> BN."""

    def __init__(self, latent: int = 100, channels: int = 1, size: int = 28, width: int = 128):
        super().__init__()
        self.init, self.width = size // 4, width
        self.fc = nn.Linear(latent, width * self.init**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2, 0.8),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(width // 2, channels, 3, padding=1),
            nn.Tanh(),
            nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.fc(z).view(len(z), self.width, self.init, self.init))


def run_dafl(
    teacher: nn.Module,
    student: nn.Module,
    budget_s: float,
    evaluate: Callable[[nn.Module], float],
    seed: int,
    eval_every_s: float = 10.0,
    batch: int = 128,
    latent: int = 100,
    width: int = 64,
    lr_g: float = 1e-3,
    lr_s: float = 2e-3,
    weights: tuple[float, float, float] = (1.0, 0.1, 5.0),
    temperature: float = 1.0,
) -> dict:
    """Trains `student` in place for `budget_s` seconds; returns the curve [(seconds, accuracy)] and step counts.

    The generator's output is used as the teacher's (already standardized) input, as in DAFL.
    """
    torch.manual_seed(seed)
    teacher.eval().requires_grad_(False)
    tap = FeatureTap(teacher)
    gen = Generator(latent, width=width)
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr_g)
    opt_s = torch.optim.Adam(student.parameters(), lr=lr_s)
    w_oh, w_act, w_ie = weights
    curve: list[tuple[float, float]] = []
    started = time.perf_counter()
    next_eval, steps = eval_every_s, 0
    try:
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= next_eval or elapsed >= budget_s:
                student.eval()
                tick = time.perf_counter()
                curve.append((elapsed, evaluate(student)))
                started += time.perf_counter() - tick  # evaluation time does not count against the budget
                next_eval = elapsed + eval_every_s
                if elapsed >= budget_s:
                    break
            gen.train(), student.train()
            z = torch.randn(batch, latent)
            images = gen(z)
            logits = teacher(images)
            features = tap.features
            pseudo = logits.argmax(1)
            loss_oh = F.cross_entropy(logits, pseudo)
            loss_act = -features.abs().mean()
            mean_p = F.softmax(logits, 1).mean(0)
            loss_ie = (mean_p * torch.log10(mean_p.clamp_min(1e-12))).sum()  # minus the entropy of the batch's class mix
            s_logits = student(images.detach())
            soft = F.softmax(logits.detach() / temperature, 1)
            loss_kd = F.kl_div(F.log_softmax(s_logits / temperature, 1), soft, reduction="batchmean") * temperature**2
            loss_g = w_oh * loss_oh + w_act * loss_act + w_ie * loss_ie
            opt_g.zero_grad(set_to_none=True), opt_s.zero_grad(set_to_none=True)
            loss_g.backward()  # the teacher is frozen; only the generator's parameters get these gradients
            opt_s.zero_grad(set_to_none=True)
            loss_kd.backward()
            opt_g.step(), opt_s.step()
            steps += 1
    finally:
        tap.remove()
    student.eval()
    return {"curve": curve, "steps": steps, "images_seen": steps * batch}
