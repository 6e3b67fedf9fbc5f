"""TorchScript teachers: a compiled graph whose layers cannot be hooked, so its logits stand in for features."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ...errors import BadInput
from ..checkpoint import sniff_file
from ..features import ExternalModel
from .base import FORMATS, TeacherFormat

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec


def _logits_of(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        out = out.get("logits", next(iter(out.values())))
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out


class TorchScriptTeacher(ExternalModel):
    """A TorchScript classifier. Python hooks do not fire inside compiled code, so its logits stand in for features."""

    def __init__(self, path: Path):
        super().__init__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # torch.jit raises RuntimeError with multi-line details
            raise BadInput(f"{path}: not a loadable TorchScript file ({str(exc).splitlines()[0]})") from None

    def select_features(self, layer: str | None) -> None:
        if layer is not None:
            raise BadInput(
                f"teacher.feature_layer {layer!r}: a TorchScript teacher runs as one compiled graph whose layers cannot be "
                "tapped; leave feature_layer unset (its logits are used) or give the teacher as ONNX and name a tensor"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _logits_of(self.module(x))
        if self.feature_sink is not None:
            self.feature_sink(logits)
        return logits


@FORMATS.register("torchscript")
class TorchScriptFormat(TeacherFormat):
    description = "a TorchScript file"
    runtime = "pytorch (TorchScript)"

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        if sniff_file(weights) != "torchscript":
            raise BadInput(f"{weights}: arch torchscript, but this is not a TorchScript archive (it looks like {sniff_file(weights)})")
        return TorchScriptTeacher(weights)
