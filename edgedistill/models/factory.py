"""One `create_model` for every architecture a recipe can name: built-in (zoo.py), torchvision, timm or the
user's own `module.path:callable`, randomly initialised, with the stem and classifier sized to the task."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInput, did_you_mean
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


def _torchvision_model(name: str, num_classes: int, in_channels: int, image_size: int | None) -> nn.Module:
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


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise BadInput("timm:NAME models need timm: pip install timm") from None
    return timm


def _timm_model(name: str, num_classes: int, in_channels: int, image_size: int | None) -> nn.Module:
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


def _timm_fixed_size(timm: Any, name: str) -> bool:
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # older timm releases lack get_pretrained_cfg or raise for untagged names
        return False
    return bool(getattr(cfg, "fixed_input_size", False))


def import_callable(ref: str, search_path: Path | None = None) -> Callable[..., Any]:
    """`package.module:callable` (or `module:Class.method`); the recipe's directory is searched after sys.path."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise BadInput(f"arch {ref!r}: expected module.path:callable, e.g. mypkg.nets:build")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if search_path is None or str(search_path) in sys.path or exc.name != module_name.split(".")[0]:
            raise BadInput(f"arch {ref!r}: cannot import {module_name} ({exc})") from None
        sys.path.append(str(search_path))
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as again:
            raise BadInput(f"arch {ref!r}: cannot import {module_name} ({again}); it is neither installed nor in {search_path}") from None
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise BadInput(f"arch {ref!r}: {module_name} has no {attr}{did_you_mean(part, names)}")
        target = getattr(target, part)
    if not callable(target):
        raise BadInput(f"arch {ref!r}: {attr} is not callable")
    return target


def _user_model(ref: str, num_classes: int, in_channels: int, search_path: Path | None) -> nn.Module:
    build = import_callable(ref, search_path)
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
        raise BadInput(f"arch {ref!r}: calling it with {kwargs} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"arch {ref!r} returned {type(model).__name__}, not a torch.nn.Module")
    return adapt_model(model, None if "num_classes" in kwargs else num_classes, None if channel_key else in_channels)


def create_model(
    arch: str, num_classes: int, in_channels: int, image_size: int | None = None, search_path: Path | None = None
) -> nn.Module:
    """`lenet5`, `lenet5_half`, ... (built-in), `torchvision:resnet18`, `timm:resnet18` or `mypkg.nets:build`:
    random init, with the classifier and stem sized to the task."""
    if arch.startswith("torchvision:"):
        return _torchvision_model(arch.split(":", 1)[1], num_classes, in_channels, image_size)
    if arch.startswith("timm:"):
        return _timm_model(arch.split(":", 1)[1], num_classes, in_channels, image_size)
    if ":" in arch:
        return _user_model(arch, num_classes, in_channels, search_path)
    if arch not in ZOO:
        raise BadInput(
            f"unknown architecture {arch!r}{did_you_mean(arch, ZOO.names())}; built-in: {', '.join(ZOO.names())}, "
            "or torchvision:NAME, timm:NAME, module.path:callable"
        )
    return ZOO.get(arch)(num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    if isinstance(model, ExternalModel):
        return model.parameter_count()
    return sum(p.numel() for p in model.parameters())


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
