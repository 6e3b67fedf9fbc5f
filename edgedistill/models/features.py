"""The layer whose output the feature and relation losses compare, and how it is captured: a hook on a PyTorch
module, an FX graph node for functional ops, or the features an ExternalModel (ONNX, TorchScript) hands over."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import BadInput, did_you_mean


class ExternalModel(nn.Module):
    """A frozen model PyTorch cannot hook into (ONNX, TorchScript): it hands its own features to `feature_sink`."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_sink: Callable[[torch.Tensor], None] | None = None

    def select_features(self, layer: str | None) -> None:
        if layer is not None:
            raise BadInput(f"feature_layer {layer!r}: a {type(self).__name__} exposes no named layers; leave feature_layer unset")

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def feature_description(self) -> str:
        """What this model hands to feature_sink, in words for the run log: by default its logits."""
        return "logits (no named layers)"


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The stem: the first nn.Conv2d in registration order, which is the first applied in every common backbone."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def classifier_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last nn.Linear, or for all-convolutional heads (SqueezeNet) the last Conv2d."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    found = found or [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not found:
        raise BadInput(f"{type(model).__name__} has no nn.Linear classifier; name a feature_layer explicitly")
    return found[-1]


FEATURE_LAYER_ATTR = "_edgedistill_feature_layer"


def set_feature_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """Records which layer the feature loss taps, for the Distiller to pick up."""
    object.__setattr__(model, FEATURE_LAYER_ATTR, layer)
    return model


def feature_layer_of(model: nn.Module) -> str | None:
    return getattr(model, FEATURE_LAYER_ATTR, None)


def describe_feature_layer(model: nn.Module) -> str:
    """The layer the feature loss taps on `model` (FeatureTap's choice), named for the run log and student.json."""
    if isinstance(model, ExternalModel):
        return model.feature_description()
    layer = feature_layer_of(model)
    return layer if layer is not None else f"{classifier_layer(model)[0]} (its input)"


_NODE_NAMES: weakref.WeakKeyDictionary[nn.Module, tuple[list[str], list[str]] | None] = weakref.WeakKeyDictionary()


def _graph_node_names(model: nn.Module) -> tuple[list[str], list[str]] | None:
    """Train- and eval-mode node names, remembered per model: tracing a large network takes seconds."""
    from torchvision.models.feature_extraction import get_graph_node_names

    if model not in _NODE_NAMES:
        try:
            _NODE_NAMES[model] = get_graph_node_names(model)
        except Exception:  # not FX-traceable (data-dependent control flow): module names remain
            _NODE_NAMES[model] = None
    return _NODE_NAMES[model]


def resolve_feature_layer(model: nn.Module, layer: str, what: str = "feature_layer") -> str:
    """`module` for a module name (hooked), `node` for a torchvision feature-extraction node name (FX)."""
    if isinstance(model, ExternalModel):
        model.select_features(layer)
        return "external"
    modules = [n for n, _ in model.named_modules() if n]
    if layer in modules:
        return "module"
    nodes = _graph_node_names(model)
    if nodes and layer in nodes[0] and layer in nodes[1]:
        return "node"
    candidates = modules + (nodes[1] if nodes else [])
    hint = did_you_mean(layer, candidates) or f"; layers include {', '.join(candidates[-4:])}"
    raise BadInput(f"{what}: {type(model).__name__} has no layer {layer!r}{hint}")


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise BadInput(f"a feature layer must output a tensor, got {type(out).__name__}")


def tap_features(model: nn.Module, layer: str | None, sink: Callable[[torch.Tensor], None]) -> Callable[[], None]:
    """Sends `layer`'s output (default: the classifier's input) to `sink` on every forward; returns the undo."""
    if isinstance(model, ExternalModel):
        model.select_features(layer)
        model.feature_sink = sink
        return lambda: setattr(model, "feature_sink", None)
    if layer is None:
        head = classifier_layer(model)[1]
        handle = head.register_forward_pre_hook(lambda _m, args: sink(args[0]))
        return handle.remove
    if resolve_feature_layer(model, layer) == "module":
        handle = model.get_submodule(layer).register_forward_hook(lambda _m, _a, out: sink(_first_tensor(out)))
        return handle.remove
    return _tap_graph_node(model, layer, sink)


def _tap_graph_node(model: nn.Module, layer: str, sink: Callable[[torch.Tensor], None]) -> Callable[[], None]:
    """A functional node (`flatten`, `add_3`) has no module to hook: the model runs as an FX graph returning it too.

    The graph shares the model's parameters, so training the graph trains the model."""
    from torchvision.models.feature_extraction import create_feature_extractor

    train_nodes, eval_nodes = _graph_node_names(model)
    extractor = create_feature_extractor(
        model,
        train_return_nodes={layer: "features", train_nodes[-1]: "logits"},
        eval_return_nodes={layer: "features", eval_nodes[-1]: "logits"},
    )

    def forward(x: torch.Tensor) -> torch.Tensor:
        extractor.train(model.training)
        out = extractor(x)
        sink(out["features"])
        return out["logits"]

    object.__setattr__(model, "forward", forward)
    return lambda: object.__delattr__(model, "forward")


class FeatureTap:
    """Captures the features the explicit losses compare: `layer`, else the layer recorded on the model
    (recipe feature_layer), else the penultimate features (the input of the model's classifier).

    Conv maps (N, C, H, W) are global-average-pooled and token maps (N, L, C) averaged over tokens, so the
    adapter stays C_student x C_teacher and teacher and student maps need not share a resolution.
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        self.features: torch.Tensor | None = None
        self._remove = tap_features(model, layer if layer is not None else feature_layer_of(model), self._capture)

    def _capture(self, output: torch.Tensor) -> None:
        if output.ndim == 4:
            output = output.mean((2, 3))
        elif output.ndim == 3:
            output = output.mean(1)
        self.features = output

    def remove(self) -> None:
        self._remove()
