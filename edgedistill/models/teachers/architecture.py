"""Teachers built from architecture code (built-in, torchvision:NAME, timm:NAME, a plugin's PREFIX:NAME,
module.path:callable: models.factory.ARCH_SOURCES) with a state dict file, or the published weights of a source that
has them (`pretrained`: torchvision's, timm's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ...errors import BadInput
from ..checkpoint import load_weights
from ..factory import arch_source, create_model, prefixes
from .base import SourceFacts, TeacherFormat, check_output

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec


def pretrained_facts(arch: str, tag: str) -> SourceFacts:
    """Input and classes of published weights, read from their metadata without downloading them."""
    source, name = arch_source(arch)
    return SourceFacts(**source.pretrained_facts(name, tag))


def pretrained_model(arch: str, tag: str) -> nn.Module:
    source, name = arch_source(arch)
    try:
        return source.pretrained_model(name, tag)
    except BadInput:
        raise
    except Exception as exc:  # download failures come as URLError, HTTPError, OSError, ...
        raise BadInput(
            f"teacher.pretrained: cannot fetch {arch} {tag} weights "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "download them where there is network and give weights: FILE"
        ) from None


class ArchitectureFormat(TeacherFormat):
    """Any `teacher.arch` that is not a registered whole-model format."""

    whole_model = False

    def check(self, spec: TeacherSpec, weights: Path | None) -> None:
        if spec.pretrained is not None and not arch_source(spec.arch)[0].publishes_weights:
            raise BadInput(f"teacher.pretrained applies to {' and '.join(f'{p}:NAME' for p in prefixes(weights=True))} teachers")
        if spec.pretrained is not None and weights is not None:
            raise BadInput("teacher: give weights or pretrained, not both")
        check_output(self, spec)

    def facts(self, spec: TeacherSpec, weights: Path | None) -> SourceFacts:
        if spec.pretrained is not None:
            return pretrained_facts(spec.arch, spec.pretrained)
        return SourceFacts("a state dict")

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        if spec.pretrained is not None:
            return pretrained_model(spec.arch, spec.pretrained)
        if weights is None:
            raise BadInput(
                "teacher.weights: a teacher needs its trained weights: a .safetensors or .pth state dict "
                "(or pretrained: NAME for torchvision/timm)"
            )
        model = create_model(spec.arch, spec.num_classes, spec.input.channels, spec.input.size, search_path)
        return load_weights(model, weights, spec.trust_checkpoint)
