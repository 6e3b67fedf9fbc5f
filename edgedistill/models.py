"""Model registry: built-in small networks, torchvision, timm and the user's own code behind one `create_model`;
state dicts from safetensors or PyTorch checkpoints; the layers a feature loss can tap."""
from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import struct
import sys
import weakref
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import BadInput

log = logging.getLogger("edgedistill")

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


class LeNet5(nn.Module):
    """LeNet-5 as used by the data-free KD literature (DAFL): conv 6-16, fc 120-84; `width` scales every layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, f1, f2 = (max(1, round(n * width)) for n in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 25, f1), nn.ReLU(inplace=True), nn.Linear(f1, f2), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.features(x)))


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels, 1.0)


@register_model
def lenet5_half(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels, 0.5)


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


def did_you_mean(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


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
                raise BadInput(f"{type(model).__name__}: the stem {name} is a grouped conv; it cannot be adapted to {in_channels} channel(s)")
            new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                            1, conv.bias is not None, conv.padding_mode)
            _set_module(model, name, new)
    if num_classes is not None:
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not found:
            raise BadInput(f"{type(model).__name__} has no nn.Linear classifier to resize to {num_classes} classes; "
                           "let its builder take num_classes")
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


def create_model(arch: str, num_classes: int, in_channels: int, image_size: int | None = None,
                 search_path: Path | None = None) -> nn.Module:
    """`lenet5`, `lenet5_half`, ... (built-in), `torchvision:resnet18`, `timm:resnet18` or `mypkg.nets:build`:
    random init, with the classifier and stem sized to the task."""
    if arch.startswith("torchvision:"):
        return _torchvision_model(arch.split(":", 1)[1], num_classes, in_channels, image_size)
    if arch.startswith("timm:"):
        return _timm_model(arch.split(":", 1)[1], num_classes, in_channels, image_size)
    if ":" in arch:
        return _user_model(arch, num_classes, in_channels, search_path)
    if arch not in _REGISTRY:
        raise BadInput(f"unknown architecture {arch!r}{did_you_mean(arch, list_models())}; built-in: {', '.join(list_models())}, "
                       "or torchvision:NAME, timm:NAME, module.path:callable")
    return _REGISTRY[arch](num_classes=num_classes, in_channels=in_channels)


# ---- weight files ----------------------------------------------------------------------------------------


def sniff_file(path: Path) -> str:
    """What a model file holds, judged by its bytes: safetensors, torchscript, torch (a torch.save pickle), onnx or unknown."""
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < size and head[8:9] == b"{":
            return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else "unknown"
    if head[:1] == b"\x80":
        return "torch"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        try:
            import onnx

            onnx.load_model(str(path), load_external_data=False)
            return "onnx"
        except Exception:  # protobuf raises DecodeError or plain exceptions by version
            return "unknown"
    return "unknown"


def refusal(path: Path, what: str = "holds pickled Python objects, not just tensors") -> str:
    return (f"{path} {what}; unpickling runs arbitrary code from the file, so it is refused. Convert it once where you trust it "
            f"(m = torch.load('{path.name}', weights_only=False); safetensors.torch.save_file(m.state_dict(), 'weights.safetensors')) "
            "and give that as weights with the architecture, or set teacher.trust_checkpoint: true")


def torch_load(path: Path, trust_checkpoint: bool) -> Any:
    """`torch.load(weights_only=True)`; full unpickling only with the recipe's trust_checkpoint, and logged."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for foreign globals; RuntimeError and others for damaged files
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc):
            raise BadInput(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not trust_checkpoint:
        raise BadInput(refusal(path))
    log.warning("%s: unpickling with weights_only=False because the recipe sets trust_checkpoint: true; "
                "this runs whatever code the file carries", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise BadInput(f"{path} pickles classes that cannot be imported here ({exc}); install the code that defined the model") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: nested under state_dict / model / ... keys, or a whole nn.Module's."""
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, dict) or _is_tensor_dict(obj):
            break
        key = next((k for k in STATE_DICT_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
        if key is None:
            break
        obj = obj[key]
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise BadInput(f"{path} holds no state dict (found {keys}); expected tensors, possibly under one of {list(STATE_DICT_KEYS)}")
    return tensors


def read_state_dict(path: Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Tensors from safetensors or a .pth/.pt/.bin/.ckpt checkpoint, whatever the suffix says."""
    if not path.is_file():
        raise BadInput(f"weights file {path} does not exist")
    kind = sniff_file(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise BadInput(f"{path} is not a readable safetensors file ({exc})") from None
    if kind == "torch":
        return unwrap_state_dict(torch_load(path, trust_checkpoint), path)
    if kind == "torchscript":
        raise BadInput(f"{path} is a TorchScript archive, not a state dict; use arch: torchscript")
    if kind == "onnx":
        raise BadInput(f"{path} is an ONNX model, not a state dict; use arch: onnx")
    raise BadInput(f"{path}: unsupported file; weights are safetensors or a torch.save state dict (.pth/.pt), "
                   "or set arch: onnx / torchscript / pickle for a whole model")


def _strip_wrappers(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drops `module.` (DDP), `_orig_mod.` (torch.compile), `model.` (Lightning) prefixes when that makes keys fit."""
    for _ in range(3):
        best, best_hits = state, len(expected & state.keys())
        prefixes = set(WRAPPER_PREFIXES)
        heads = {k.split(".", 1)[0] for k in state}
        if len(heads) == 1 and all("." in k for k in state):
            prefixes.add(next(iter(heads)) + ".")
        for prefix in prefixes:
            candidate = {k.removeprefix(prefix): v for k, v in state.items()}
            hits = len(expected & candidate.keys())
            if hits > best_hits:
                best, best_hits = candidate, hits
        if best is state:
            return state
        state = best
    return state


def _few(keys: list[str], n: int = 3) -> str:
    return f"{keys[:n]}" + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Loads `state` strictly, explaining a class-count or channel mismatch in the user's terms."""
    own = model.state_dict()
    state = _strip_wrappers(state, set(own))
    shape_errors = [k for k in state.keys() & own.keys() if state[k].shape != own[k].shape]
    if shape_errors:
        head = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if head and f"{head[-1][0]}.weight" in shape_errors:
            name = head[-1][0]
            raise BadInput(f"{path}: class-count mismatch: its classifier {name} has {state[name + '.weight'].shape[0]} outputs "
                           f"but num_classes is {own[name + '.weight'].shape[0]}")
        stem = first_conv(model)
        if stem and f"{stem[0]}.weight" in shape_errors:
            key = f"{stem[0]}.weight"
            raise BadInput(f"{path}: input-channel mismatch: its first conv {stem[0]} takes {state[key].shape[1]} channel(s) "
                           f"but input.channels is {own[key].shape[1]}")
        k = sorted(shape_errors)[0]
        raise BadInput(f"{path} does not fit the architecture: {len(shape_errors)} shape mismatch(es), e.g. {k} is "
                       f"{list(state[k].shape)} in the file but {list(own[k].shape)} in the model")
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    problems = []
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_few(unexpected)}")
    if problems:
        raise BadInput(f"{path} does not fit the architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)


def load_weights(model: nn.Module, path: Path, trust_checkpoint: bool = False) -> nn.Module:
    """Load safetensors or .pth weights strictly; a mismatch lists a few of the offending keys."""
    fit_state_dict(model, read_state_dict(Path(path), trust_checkpoint), Path(path))
    return model


def count_parameters(model: nn.Module) -> int:
    if isinstance(model, ExternalModel):
        return model.parameter_count()
    return sum(p.numel() for p in model.parameters())


# ---- feature layers --------------------------------------------------------------------------------------

FEATURE_LAYER_ATTR = "_edgedistill_feature_layer"


def set_feature_layer(model: nn.Module, layer: str | None) -> nn.Module:
    """Records which layer the feature loss taps, for the Distiller to pick up."""
    object.__setattr__(model, FEATURE_LAYER_ATTR, layer)
    return model


def feature_layer_of(model: nn.Module) -> str | None:
    return getattr(model, FEATURE_LAYER_ATTR, None)


_NODE_NAMES: "weakref.WeakKeyDictionary[nn.Module, tuple[list[str], list[str]] | None]" = weakref.WeakKeyDictionary()


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
    extractor = create_feature_extractor(model, train_return_nodes={layer: "features", train_nodes[-1]: "logits"},
                                         eval_return_nodes={layer: "features", eval_nodes[-1]: "logits"})

    def forward(x: torch.Tensor) -> torch.Tensor:
        extractor.train(model.training)
        out = extractor(x)
        sink(out["features"])
        return out["logits"]

    object.__setattr__(model, "forward", forward)
    return lambda: object.__delattr__(model, "forward")


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


def build_student_model(arch: str, num_classes: int, input_spec: Any, feature_layer: str | None = None,
                        search_path: Path | None = None) -> nn.Module:
    """A fresh student sized to the teacher's task, its feature layer checked, proven to run on the input."""
    model = create_model(arch, num_classes, input_spec.channels, input_spec.size, search_path)
    if feature_layer is not None:
        resolve_feature_layer(model, feature_layer, "student.feature_layer")
    return check_model_runs(set_feature_layer(model, feature_layer), input_spec, num_classes, "student")
