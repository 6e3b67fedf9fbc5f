"""The recipe's `compute` section resolved against this machine: device, autocast precision, memory format."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..config.schema import ComputeSpec


@dataclass(frozen=True)
class Compute:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: full precision
    channels_last: bool
    compile: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"


def resolve_compute(spec: ComputeSpec, device: torch.device) -> Compute:
    """`auto` precision: bf16 where the GPU has it, fp16 on older GPUs, full precision on CPU (where autocast
    pays off only with bf16 matrix units; ask for `bf16` explicitly there)."""
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if spec.precision == "auto":
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if device.type == "cuda" else None
    else:
        dtype = dtypes[spec.precision]
    channels_last = device.type == "cuda" if spec.channels_last is None else spec.channels_last
    return Compute(device, dtype, channels_last, spec.compile)
