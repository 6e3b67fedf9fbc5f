"""Teachers built from architecture code (built-in, torchvision:NAME, timm:NAME, module.path:callable) with a
state dict file, or torchvision/timm's published weights (`pretrained`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ...errors import BadInput, did_you_mean
from ..checkpoint import load_weights
from ..factory import create_model, import_timm
from .base import SourceFacts, TeacherFormat, check_output

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec


def _torchvision_weights(name: str, tag: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        known = torchvision.models.list_models(module=torchvision.models)
        raise BadInput(f"teacher.pretrained: unknown torchvision model {name!r}{did_you_mean(name, known)}") from None
    try:
        return enum[tag]
    except KeyError:
        raise BadInput(f"teacher.pretrained: torchvision:{name} has weights {', '.join(enum.__members__)}, not {tag!r}") from None


def _timm_name(name: str, tag: str) -> str:
    return name if tag.lower() == "default" else f"{name}.{tag}"


def pretrained_facts(arch: str, tag: str) -> SourceFacts:
    """Input and classes of published weights, read from their metadata without downloading them."""
    library, name = arch.split(":", 1)
    if library == "torchvision":
        weights = _torchvision_weights(name, tag)
        transform = weights.transforms()
        crop = getattr(transform, "crop_size", None)
        categories = weights.meta.get("categories")
        return SourceFacts(
            f"torchvision {weights}",
            channels=3,
            size=crop[0] if crop else None,
            mean=list(getattr(transform, "mean", [])) or None,
            std=list(getattr(transform, "std", [])) or None,
            num_classes=len(categories) if categories else None,
            class_names=list(categories) if categories else None,
        )
    timm = import_timm()
    full = _timm_name(name, tag)
    try:
        cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=False)
    except Exception as exc:  # timm raises RuntimeError for unknown tags
        raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r} ({exc})") from None
    if cfg is None:
        raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r}")
    channels, height, width = cfg.input_size
    return SourceFacts(
        f"timm pretrained_cfg of {full}",
        channels=channels,
        size=height if height == width else None,
        mean=list(cfg.mean),
        std=list(cfg.std),
        num_classes=cfg.num_classes or None,
        class_names=_timm_class_names(timm, cfg),
    )


def _timm_class_names(timm: Any, cfg: Any) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg)
        return ImageNetInfo(subset).label_descriptions() if subset else None
    except Exception:  # older timm releases have no label info
        return None


def pretrained_model(arch: str, tag: str) -> nn.Module:
    library, name = arch.split(":", 1)
    try:
        if library == "torchvision":
            import torchvision

            return torchvision.models.get_model(name, weights=_torchvision_weights(name, tag))
        return import_timm().create_model(_timm_name(name, tag), pretrained=True)
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
        if spec.pretrained is not None and not spec.arch.startswith(("torchvision:", "timm:")):
            raise BadInput("teacher.pretrained applies to torchvision:NAME and timm:NAME teachers")
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
