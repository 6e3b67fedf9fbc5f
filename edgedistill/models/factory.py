"""One `create_model` for every architecture a recipe can name, from its source in ARCH_SOURCES: built-in (zoo.py),
torchvision, timm, a plugin's `PREFIX:NAME` or the user's own `module.path:callable`, randomly initialised, with the
stem and classifier sized to the task."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInput, did_you_mean
from ..registry import Registry
from .features import ExternalModel, first_conv, resolve_feature_layer, set_feature_layer
from .zoo import ZOO


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def adapt_model(model: nn.Module, num_classes: int | None, in_channels: int | None) -> nn.Module:
    """Resize the stem to `in_channels` and the classifier to `num_classes` when the builder could not."""
    if in_channels is not None:
        stem = first_conv(model)
        if stem is None:
            if in_channels != 3:
                raise BadInput(f"{type(model).__name__} has no Conv2d stem to adapt to {in_channels} input channel(s)")
        elif stem[1].in_channels != in_channels:
            name, conv = stem
            if conv.groups != 1:
                raise BadInput(
                    f"{type(model).__name__}: the stem {name} is a grouped conv; it cannot be adapted to {in_channels} channel(s)"
                )
            new = nn.Conv2d(
                in_channels,
                conv.out_channels,
                conv.kernel_size,
                conv.stride,
                conv.padding,
                conv.dilation,
                1,
                conv.bias is not None,
                conv.padding_mode,
            )
            _set_module(model, name, new)
    if num_classes is not None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not found:
            raise BadInput(
                f"{type(model).__name__} has no nn.Linear classifier to resize to {num_classes} classes; let its builder take num_classes"
            )
        name, last = found[-1]
        if last.out_features != num_classes:
            _set_module(model, name, nn.Linear(last.in_features, num_classes, bias=last.bias is not None))
    return model


class ArchSource:
    """Where the architectures a recipe names come from (`student.arch`, `student.candidates`, `teacher.arch`), keyed
    in ARCH_SOURCES by the prefix written before the name: `torchvision:resnet18`; a plugin registers its own
    (`myzoo:NAME`). Two entries are not prefixes (`prefixed = False`): `builtin`, the zoo's names (a name without a
    colon), and `module`, the user's `module.path:callable` (any other prefix)."""

    prefixed = True  # names are written PREFIX:NAME
    example = ""  # a name `edgedistill recipe-schema` offers editors; default PREFIX:NAME
    publishes_weights = False  # `teacher.pretrained: TAG` fetches the source's own trained weights

    def build(self, name: str, num_classes: int, in_channels: int, image_size: int | None, search_path: Path | None) -> nn.Module:
        """`name` (after the prefix) randomly initialised, with the classifier and stem sized to the task."""
        raise NotImplementedError

    def pretrained_facts(self, name: str, tag: str) -> dict[str, Any]:
        """What the published weights `tag` say of their input and classes, read without downloading them: the fields
        of models.teachers.base.SourceFacts (origin, channels, size, mean, std, num_classes, class_names)."""
        raise NotImplementedError

    def pretrained_model(self, name: str, tag: str) -> nn.Module:
        raise NotImplementedError


ARCH_SOURCES: Registry[type[ArchSource]] = Registry("architecture source")


def arch_source(arch: str) -> tuple[ArchSource, str]:
    """The source of a recipe's `arch` and the name it has there."""
    prefix, colon, name = arch.partition(":")
    if not colon:
        return ARCH_SOURCES.get("builtin")(), arch
    if prefix in ARCH_SOURCES and ARCH_SOURCES.get(prefix).prefixed:
        return ARCH_SOURCES.get(prefix)(), name
    return ARCH_SOURCES.get("module")(), arch


def prefixes(weights: bool = False) -> list[str]:
    """The prefixes of ARCH_SOURCES (torchvision, timm, a plugin's), or of those that publish weights."""
    return [p for p, s in ARCH_SOURCES.items() if s.prefixed and (s.publishes_weights or not weights)]


@ARCH_SOURCES.register("builtin")
class BuiltinSource(ArchSource):
    """The zoo (zoo.py): lenet5, resnet8_w16, mobilenetv3_small_w0.5, ..."""

    prefixed = False
    example = "lenet5"

    def build(self, name: str, num_classes: int, in_channels: int, image_size: int | None, search_path: Path | None) -> nn.Module:
        if name not in ZOO:
            raise BadInput(
                f"unknown architecture {name!r}{did_you_mean(name, ZOO.names())}; built-in: {', '.join(ZOO.names())}, "
                f"or {', '.join(f'{p}:NAME' for p in prefixes())}, module.path:callable"
            )
        return ZOO.get(name)(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


@ARCH_SOURCES.register("torchvision")
class TorchvisionSource(ArchSource):
    """torchvision.models by name: torchvision:resnet18, torchvision:mobilenet_v3_small, ..."""

    example = "torchvision:resnet18"
    publishes_weights = True

    def build(self, name: str, num_classes: int, in_channels: int, image_size: int | None, search_path: Path | None) -> nn.Module:
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise BadInput(f"unknown torchvision model {name!r}{did_you_mean(name, known)}; see torchvision.models.list_models()")
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        if name in ("googlenet", "inception_v3"):
            kwargs.update(aux_logits=False, init_weights=True)
        if name.startswith("vit_") and image_size is not None:
            kwargs["image_size"] = image_size
        try:
            model = torchvision.models.get_model(name, weights=None, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise BadInput(f"torchvision:{name} cannot be built for {num_classes} classes at size {image_size}: {exc}") from None
        return adapt_model(model, None, in_channels)

    @staticmethod
    def weights(name: str, tag: str) -> Any:
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

    def pretrained_facts(self, name: str, tag: str) -> dict[str, Any]:
        weights = self.weights(name, tag)
        transform = weights.transforms()
        crop = getattr(transform, "crop_size", None)
        categories = weights.meta.get("categories")
        return {
            "origin": f"torchvision {weights}",
            "channels": 3,
            "size": crop[0] if crop else None,
            "mean": list(getattr(transform, "mean", [])) or None,
            "std": list(getattr(transform, "std", [])) or None,
            "num_classes": len(categories) if categories else None,
            "class_names": list(categories) if categories else None,
        }

    def pretrained_model(self, name: str, tag: str) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=self.weights(name, tag))


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise BadInput("timm:NAME models need timm: pip install timm") from None
    return timm


@ARCH_SOURCES.register("timm")
class TimmSource(ArchSource):
    """timm's models by name (pip install timm): timm:resnet18, timm:efficientnet_b0, ..."""

    example = "timm:resnet18"
    publishes_weights = True

    def build(self, name: str, num_classes: int, in_channels: int, image_size: int | None, search_path: Path | None) -> nn.Module:
        timm = import_timm()
        if not timm.is_model(name):
            raise BadInput(f"unknown timm model {name!r}{did_you_mean(name, timm.list_models())}; see timm.list_models()")
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
        if image_size is not None and _timm_fixed_size(timm, name):
            kwargs["img_size"] = image_size
        try:
            return timm.create_model(name, **kwargs)
        except (TypeError, ValueError, AssertionError) as exc:
            raise BadInput(f"timm:{name} cannot be built for {num_classes} classes, {in_channels} channel(s): {exc}") from None

    @staticmethod
    def full_name(name: str, tag: str) -> str:
        return name if tag.lower() == "default" else f"{name}.{tag}"

    def pretrained_facts(self, name: str, tag: str) -> dict[str, Any]:
        timm = import_timm()
        full = self.full_name(name, tag)
        try:
            cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=False)
        except Exception as exc:  # timm raises RuntimeError for unknown tags
            raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r} ({exc})") from None
        if cfg is None:
            raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r}")
        channels, height, width = cfg.input_size
        return {
            "origin": f"timm pretrained_cfg of {full}",
            "channels": channels,
            "size": height if height == width else None,
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "num_classes": cfg.num_classes or None,
            "class_names": _timm_class_names(cfg),
        }

    def pretrained_model(self, name: str, tag: str) -> nn.Module:
        return import_timm().create_model(self.full_name(name, tag), pretrained=True)


def _timm_fixed_size(timm: Any, name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # older timm releases lack get_pretrained_cfg or raise for untagged names
        return False
    return bool(getattr(cfg, "fixed_input_size", False))


def _timm_class_names(cfg: Any) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(cfg)
        return ImageNetInfo(subset).label_descriptions() if subset else None
    except Exception:  # older timm releases have no label info
        return None


def import_callable(ref: str, search_path: Path | None = None) -> Callable[..., Any]:
    """`package.module:callable` (or `module:Class.method`); the recipe's directory is searched after sys.path."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise BadInput(f"arch {ref!r}: expected module.path:callable, e.g. mypkg.nets:build")
    # a mistyped source prefix (torchvison:resnet18) reaches here as a module that does not exist
    typo = did_you_mean(module_name, prefixes()) if "." not in module_name else ""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if search_path is None or str(search_path) in sys.path or exc.name != module_name.split(".")[0]:
            raise BadInput(f"arch {ref!r}: cannot import {module_name} ({exc}){typo}") from None
        sys.path.append(str(search_path))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            raise BadInput(
                f"arch {ref!r}: cannot import {module_name} ({again}); it is neither installed nor in {search_path}{typo}"
            ) from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise BadInput(f"arch {ref!r}: {module_name} has no {attr}{did_you_mean(part, names)}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInput(f"arch {ref!r}: {attr} is not callable")
    return target


@ARCH_SOURCES.register("module")
class ModuleSource(ArchSource):
    """The user's own builder, `module.path:callable`, imported from sys.path or the recipe's directory; it gets
    num_classes and in_channels (or in_chans) where it takes them, and the rest is adapted."""

    prefixed = False
    example = "mypkg.nets:build"

    def build(self, name: str, num_classes: int, in_channels: int, image_size: int | None, search_path: Path | None) -> nn.Module:
        build = import_callable(name, search_path)
        try:
            params = inspect.signature(build).parameters
        except (TypeError, ValueError):
            params = {}
        kwargs: dict[str, Any] = {}
        if "num_classes" in params:
            kwargs["num_classes"] = num_classes
        channel_key = next((k for k in ("in_channels", "in_chans") if k in params), None)
        if channel_key:
            kwargs[channel_key] = in_channels
        try:
            model = build(**kwargs)
        except Exception as exc:  # the user's code: any failure is theirs to fix, reported in one line
            raise BadInput(f"arch {name!r}: calling it with {kwargs} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise BadInput(f"arch {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return adapt_model(model, None if "num_classes" in kwargs else num_classes, None if channel_key else in_channels)


def create_model(
    arch: str, num_classes: int, in_channels: int, image_size: int | None = None, search_path: Path | None = None
) -> nn.Module:
    """`lenet5`, `lenet5_half`, ... (built-in), `torchvision:resnet18`, `timm:resnet18`, a plugin's `PREFIX:NAME` or
    `mypkg.nets:build` (ARCH_SOURCES): random init, with the classifier and stem sized to the task."""
    source, name = arch_source(arch)
    return source.build(name, num_classes, in_channels, image_size, search_path)


def count_parameters(model: nn.Module) -> int:
    if isinstance(model, ExternalModel):
        return model.parameter_count()
    return sum(p.numel() for p in model.parameters())


def model_structure(model: nn.Module) -> str:
    """A digest of a network's layers (their printed configuration) and parameter shapes: what a name builds, so a
    cached timing or a distilled student is not reused after the name comes to build another network (a zoo or plugin
    change under the same name)."""
    shapes = [(name, tuple(p.shape)) for name, p in model.state_dict().items()]
    return hashlib.sha256(f"{model!r}{shapes}".encode()).hexdigest()[:16]


def check_model_runs(model: nn.Module, input_spec: Any, num_classes: int, who: str) -> nn.Module:
    """One forward on zeros: a wrong input size, channel count or class count fails here, in one line, not mid-run."""
    size, channels = input_spec.size, input_spec.channels
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, channels, size, size))
    except BadInput:
        raise
    except Exception as exc:  # any layer may be the one that rejects the shape
        first = (str(exc).strip().splitlines() or [""])[0]
        hint = "check teacher.input size and channels" if who == "teacher" else "pick an architecture that accepts this input"
        raise BadInput(f"{who} does not run on a {channels}x{size}x{size} input ({type(exc).__name__}: {first}); {hint}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise BadInput(f"{who} returns {type(out).__name__}, not a logits tensor; wrap it so forward returns the logits")
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise BadInput(f"{who}: class-count mismatch: it outputs shape {list(out.shape)} but num_classes is {num_classes}")
    return model


def build_student_model(
    arch: str, num_classes: int, input_spec: Any, feature_layer: str | None = None, search_path: Path | None = None
) -> nn.Module:
    """A fresh student sized to the teacher's task, its feature layer checked, proven to run on the input."""
    model = create_model(arch, num_classes, input_spec.channels, input_spec.size, search_path)
    if feature_layer is not None:
        resolve_feature_layer(model, feature_layer, "student.feature_layer")
    return check_model_runs(set_feature_layer(model, feature_layer), input_spec, num_classes, "student")


def student_candidates(student: Any, channels: int, size: int) -> list[tuple[str, str | None]]:
    """(arch, feature_layer) of every student a StudentSpec asks to choose from: its `candidates` in order, or, for
    `arch: auto`, the zoo's ladder for the teacher's input (zoo.auto_ladder); one (arch, feature_layer) otherwise."""
    from .zoo import auto_ladder

    if student.candidates is not None:
        found = [(c, None) if isinstance(c, str) else (c.arch, c.feature_layer) for c in student.candidates]
        seen = [arch for arch, _ in found]
        twice = sorted({a for a in seen if seen.count(a) > 1})
        if twice:
            raise BadInput(f"student.candidates lists {', '.join(twice)} more than once")
        return found
    if student.arch == "auto":
        return [(name, None) for name in auto_ladder(channels, size)]
    return [(student.arch, student.feature_layer)]
