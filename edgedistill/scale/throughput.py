"""The ceilings a stage's throughput is judged against: the bare teacher forward and the bare distillation step
of the same models, at the same batch, on the same device and precision, from a batch already in memory."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .compute import Compute


def _rate(step: Callable[[], None], images_per_step: int, device: torch.device, seconds: float, warmup: int) -> float:
    """Images/s of `step`, repeated for about `seconds` after `warmup` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    steps, start = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and steps >= 3:
            return steps * images_per_step / elapsed


def bare_forward_rate(teacher: nn.Module, batch: torch.Tensor, compute: Compute, seconds: float = 2.0, warmup: int = 2) -> float:
    """Teacher forward passes on one normalized batch, nothing else: the ceiling of pool scoring."""
    x = compute.input(batch)

    def step() -> None:
        with torch.inference_mode(), compute.autocast():
            teacher(x)

    return _rate(step, len(x), compute.device, seconds, warmup)


def bare_step_rate(
    teacher: nn.Module,
    student: nn.Module,
    batch: torch.Tensor,
    compute: Compute,
    lr: float = 1e-3,
    seconds: float = 2.0,
    warmup: int = 2,
    with_teacher: bool = True,
) -> float:
    """The least a distillation step can do: teacher forward (unless its outputs are stored), student forward,
    KL on logits, backward, AdamW step. A copy of the student trains, so the caller's weights stay as they are."""
    student = copy.deepcopy(student).train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    x = compute.input(batch)
    with torch.no_grad(), compute.autocast():
        stored = teacher(x).float()

    def step() -> None:
        with compute.autocast():
            if with_teacher:
                with torch.no_grad():
                    target = teacher(x).float()
            else:
                target = stored
            loss = F.kl_div(F.log_softmax(student(x).float(), 1), F.softmax(target, 1), reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _rate(step, len(x), compute.device, seconds, warmup)
