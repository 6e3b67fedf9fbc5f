"""Whole pickled models (torch.save(model)): unpickling runs code from the file, so only when the recipe trusts it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...errors import BadInput
from ..checkpoint import refusal, sniff_file, torch_load
from .base import FORMATS, TeacherFormat

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec

PICKLE_REFUSAL = "is a whole pickled model (arch: pickle)"


def load_pickled_model(path: Path, trust_checkpoint: bool) -> nn.Module:
    """A whole model saved with torch.save(model): only when the recipe trusts it, because unpickling runs code."""
    kind = sniff_file(path)
    if kind == "torchscript":
        raise BadInput(f"{path} is a TorchScript archive; use arch: torchscript (no trust needed)")
    if kind != "torch":
        raise BadInput(f"{path}: unsupported file for arch: pickle; expected a torch.save(model) file")
    if not trust_checkpoint:
        raise BadInput(refusal(path, PICKLE_REFUSAL))
    obj = torch_load(path, trust_checkpoint=True)
    if isinstance(obj, dict):
        obj = next((obj[k] for k in ("model", "ema", "module", "net") if isinstance(obj.get(k), nn.Module)), obj)
    if not isinstance(obj, nn.Module):
        raise BadInput(
            f"{path} holds a {type(obj).__name__}, not a model; for a state dict use arch: <its architecture> "
            "(torchvision:NAME, timm:NAME, module.path:callable) with weights: this file"
        )
    return obj.float()


@FORMATS.register("pickle")
class PickleFormat(TeacherFormat):
    description = "a pickled model"

    def check(self, spec: TeacherSpec, weights: Path | None) -> None:
        super().check(spec, weights)
        if not spec.trust_checkpoint:
            raise BadInput(refusal(weights, PICKLE_REFUSAL))

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        return load_pickled_model(weights, spec.trust_checkpoint)
