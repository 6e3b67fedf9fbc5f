"""Teachers from every source the recipe can name, and what each source says about its own input and classes.

`teacher.arch` picks the source:
  lenet5 | torchvision:NAME | timm:NAME | module.path:callable   architecture code + `weights` (state dict) or `pretrained`
  onnx | torchscript | pickle                                     `weights` is the whole model
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .errors import BadInput
from .models import (ExternalModel, did_you_mean, check_model_runs, create_model, import_timm, load_weights,
                     refusal, resolve_feature_layer, set_feature_layer, sniff_file, torch_load)

if TYPE_CHECKING:
    from .recipe import Recipe, TeacherSpec

log = logging.getLogger("edgedistill")

WHOLE_MODEL_FORMATS = ("onnx", "torchscript", "pickle")
PICKLE_REFUSAL = "is a whole pickled model (arch: pickle)"
PROBABILITY_OPS = ("Softmax", "LogSoftmax")
CLASSIFIER_OPS = ("Gemm", "MatMul", "Conv")
PASS_THROUGH_OPS = ("Add", "Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "GlobalAveragePool", "ReduceMean",
                    "Relu", "Dropout", "Cast")


@dataclass
class SourceFacts:
    """What the model itself says; None where it is silent."""

    origin: str
    channels: int | None = None
    size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    num_classes: int | None = None
    class_names: list[str] | None = None


# ---- ONNX ------------------------------------------------------------------------------------------------


def _dims(value_info: Any) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _json_list(text: str | None) -> list | None:
    import json

    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) and value else None


class OnnxGraph:
    """The parts of an ONNX classifier edgedistill uses: image input, logits tensor, penultimate tensor, metadata."""

    def __init__(self, proto: Any, path: Path):
        graph = proto.graph
        self.path = path
        initializers = {i.name for i in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in initializers]
        if len(self.inputs) != 1:
            raise BadInput(f"{path}: an ONNX teacher needs exactly one image input, it has {[i.name for i in self.inputs]}")
        if not graph.output:
            raise BadInput(f"{path}: the ONNX graph has no outputs")
        self.input = self.inputs[0]
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = initializers
        self.tensor_names = [out for node in graph.node for out in node.output if out]
        self.node_outputs = {node.name: node.output[0] for node in graph.node if node.name and node.output}
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        output = next((o for o in graph.output if o.name == "logits"), graph.output[0])
        self.output_dims = _dims(output)
        self.logits = output.name
        node = self.producer.get(self.logits)
        if node is not None and node.op_type in PROBABILITY_OPS:
            log.info("%s ends in %s: distilling from its input, the logits", path.name, node.op_type)
            self.logits = node.input[0]
        self.penultimate = self._penultimate()

    def _data_input(self, node: Any) -> str | None:
        return next((i for i in node.input if i and i not in self.initializers), None)

    def _penultimate(self) -> str | None:
        """The classifier's input, found by walking back from the logits through bias adds and reshapes."""
        name: str | None = self.logits
        for _ in range(8):
            node = self.producer.get(name) if name else None
            if node is None:
                return None
            if node.op_type in CLASSIFIER_OPS:
                return self._data_input(node)
            if node.op_type not in PASS_THROUGH_OPS:
                return None
            name = self._data_input(node)
        return None

    def facts(self) -> SourceFacts:
        dims = _dims(self.input)
        facts = SourceFacts(f"{self.path.name} (its input shape and metadata)")
        if len(dims) == 4:
            facts.channels = dims[1]
            if dims[2] and dims[3]:
                if dims[2] != dims[3]:
                    raise BadInput(f"{self.path}: input is {dims[2]}x{dims[3]}; edgedistill supports square inputs only")
                facts.size = dims[2]
        elif dims:
            raise BadInput(f"{self.path}: input {self.input.name!r} has shape {dims}; an image classifier takes NCHW")
        scale = self.metadata.get("input_scale")
        if scale is not None and scale != "1/255":
            raise BadInput(f"{self.path}: metadata input_scale is {scale!r}; edgedistill feeds pixels scaled by 1/255")
        facts.mean, facts.std = _json_list(self.metadata.get("mean")), _json_list(self.metadata.get("std"))
        facts.class_names = _json_list(self.metadata.get("class_names"))
        if self.output_dims and self.output_dims[-1]:
            facts.num_classes = self.output_dims[-1]
        return facts


def _load_onnx(path: Path, external_data: bool = True) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInput(f"{path}: unsupported file, not a readable ONNX model ({type(exc).__name__})") from None


def onnx_np_dtype(elem_type: int | None) -> np.dtype:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type or onnx.TensorProto.FLOAT)


class OnnxTeacher(ExternalModel):
    """An ONNX classifier run by ONNX Runtime; the tensor the feature loss needs becomes an extra graph output."""

    def __init__(self, path: Path, feature_layer: str | None = None):
        super().__init__()
        self.path = Path(path)
        self._proto = _load_onnx(self.path)
        self.graph = OnnxGraph(self._proto, self.path)
        self._types = self._tensor_types()
        dims = _dims(self.graph.input)
        self.fixed_batch = dims[0] if dims and dims[0] else None
        self.input_dtype = onnx_np_dtype(self._types.get(self.graph.input.name))
        self.feature_name: str | None = None
        self._session: Any = None
        self.select_features(feature_layer)

    def _tensor_types(self) -> dict[str, int]:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(self._proto)
        except Exception:  # custom ops or >2 GB models: unknown types default to float
            inferred = self._proto
        g = inferred.graph
        return {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.output, *g.input]}

    def select_features(self, layer: str | None) -> None:
        if layer is None:
            name = self.graph.penultimate
            if name is None:
                log.info("%s: no classifier input found; the feature and relation losses use its logits", self.path.name)
        elif layer in self.graph.tensor_names:
            name = layer
        elif layer in self.graph.node_outputs:
            name = self.graph.node_outputs[layer]
        else:
            raise BadInput(f"teacher.feature_layer: {self.path.name} has no tensor {layer!r}"
                           f"{did_you_mean(layer, self.graph.tensor_names) or '; tensors include ' + ', '.join(self.graph.tensor_names[-4:])}")
        if name != self.feature_name:
            self.feature_name, self._session = name, None

    def parameter_count(self) -> int:
        return sum(math.prod(init.dims) for init in self._proto.graph.initializer)

    def _output_names(self) -> list[str]:
        names = [self.graph.logits]
        if self.feature_name and self.feature_name != self.graph.logits:
            names.append(self.feature_name)
        return names

    def session(self) -> Any:
        """Built on first use from a copy of the graph with the logits and feature tensors as outputs."""
        if self._session is None:
            import onnx
            import onnxruntime as ort

            proto = onnx.ModelProto()
            proto.CopyFrom(self._proto)
            present = {o.name for o in proto.graph.output}
            for name in self._output_names():
                if name not in present:
                    elem = self._types.get(name) or onnx.TensorProto.FLOAT
                    proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
            try:
                self._session = ort.InferenceSession(proto.SerializeToString(), options, providers=providers)
            except Exception as exc:  # ORT's own error types
                raise BadInput(f"{self.path}: ONNX Runtime cannot load it ({str(exc).splitlines()[0]})") from None
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session()
        batch = x.detach().to("cpu", torch.float32).contiguous().numpy().astype(self.input_dtype, copy=False)
        names = self._output_names()
        step = self.fixed_batch or max(1, len(batch))
        parts = []
        for start in range(0, max(1, len(batch)), step):
            chunk = batch[start:start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([out[:n] for out in session.run(names, {self.graph.input.name: chunk})])
        outputs = [torch.from_numpy(np.concatenate(column)).float().to(x.device) for column in zip(*parts)]
        logits = outputs[0]
        if self.feature_sink is not None:
            self.feature_sink(outputs[1] if len(outputs) > 1 else logits)
        return logits


# ---- TorchScript and pickles -----------------------------------------------------------------------------


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
            raise BadInput(f"teacher.feature_layer {layer!r}: a TorchScript teacher runs as one compiled graph whose layers cannot be "
                           "tapped; leave feature_layer unset (its logits are used) or give the teacher as ONNX and name a tensor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = _logits_of(self.module(x))
        if self.feature_sink is not None:
            self.feature_sink(logits)
        return logits


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
        raise BadInput(f"{path} holds a {type(obj).__name__}, not a model; for a state dict use arch: <its architecture> "
                       "(torchvision:NAME, timm:NAME, module.path:callable) with weights: this file")
    return obj.float()


# ---- published weights -----------------------------------------------------------------------------------


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
        return SourceFacts(f"torchvision {weights}", channels=3, size=crop[0] if crop else None,
                           mean=list(getattr(transform, "mean", [])) or None, std=list(getattr(transform, "std", [])) or None,
                           num_classes=len(categories) if categories else None, class_names=list(categories) if categories else None)
    timm = import_timm()
    full = _timm_name(name, tag)
    try:
        cfg = timm.models.get_pretrained_cfg(full, allow_unregistered=False)
    except Exception as exc:  # timm raises RuntimeError for unknown tags
        raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r} ({exc})") from None
    if cfg is None:
        raise BadInput(f"teacher.pretrained: timm has no pretrained config {full!r}")
    channels, height, width = cfg.input_size
    return SourceFacts(f"timm pretrained_cfg of {full}", channels=channels, size=height if height == width else None,
                       mean=list(cfg.mean), std=list(cfg.std), num_classes=cfg.num_classes or None,
                       class_names=_timm_class_names(timm, cfg))


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
        raise BadInput(f"teacher.pretrained: cannot fetch {arch} {tag} weights ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                       "download them where there is network and give weights: FILE") from None


# ---- recipe completion -----------------------------------------------------------------------------------


def source_facts(spec: "TeacherSpec", weights: Path | None) -> SourceFacts:
    if spec.arch == "onnx" and weights is not None:
        if sniff_file(weights) != "onnx":
            raise BadInput(f"{weights}: arch onnx, but this is not an ONNX model (it looks like {sniff_file(weights)})")
        return OnnxGraph(_load_onnx(weights, external_data=False), weights).facts()
    if spec.pretrained is not None:
        return pretrained_facts(spec.arch, spec.pretrained)
    if spec.arch == "pickle" and weights is not None and not spec.trust_checkpoint:
        raise BadInput(refusal(weights, PICKLE_REFUSAL))
    return SourceFacts({"torchscript": "a TorchScript file", "pickle": "a pickled model"}.get(spec.arch, "a state dict"))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(abs(x - y) <= 1e-4 for x, y in zip(a, b))
    return a == b


def complete_teacher_spec(spec: "TeacherSpec", weights: Path | None, where: str) -> None:
    """Fills teacher.input, num_classes and class_names from the model where the recipe leaves them out;
    where both speak and disagree, the recipe is wrong (a BadInput), never silently overridden."""
    from pydantic import ValidationError

    from .recipe import InputSpec

    try:
        facts = source_facts(spec, weights)
    except BadInput as exc:
        raise BadInput(f"{where}: teacher: {exc}") from None
    said = {key: getattr(facts, key) for key in ("channels", "size", "mean", "std")}
    if spec.input is None:
        missing = [k for k, v in said.items() if v is None]
        if missing:
            raise BadInput(f"{where}: teacher.input: required key is missing; {facts.origin} does not say its {', '.join(missing)}")
        try:
            spec.input = InputSpec(**said)
        except ValidationError as exc:
            raise BadInput(f"{where}: teacher.input from {facts.origin}: {exc.errors()[0]['msg']}") from None
    else:
        for key, value in said.items():
            if value is not None and not _same(getattr(spec.input, key), value):
                raise BadInput(f"{where}: teacher.input.{key} is {getattr(spec.input, key)} but {facts.origin} says {value}; "
                               "fix the recipe" + (" or drop teacher.input to use the model's" if None not in said.values() else ""))
    if facts.num_classes is None and facts.class_names:
        facts.num_classes = len(facts.class_names)
    if facts.num_classes is not None:
        if spec.num_classes is None:
            spec.num_classes = facts.num_classes
        elif spec.num_classes != facts.num_classes:
            raise BadInput(f"{where}: teacher.num_classes: class-count mismatch: the recipe says {spec.num_classes} "
                           f"but {facts.origin} has {facts.num_classes}")
    if spec.num_classes is None:
        raise BadInput(f"{where}: teacher.num_classes: required key is missing; {facts.origin} does not say how many classes "
                       "(give num_classes or class_names)")
    if facts.class_names:
        if len(facts.class_names) != spec.num_classes:
            raise BadInput(f"{where}: {facts.origin} names {len(facts.class_names)} classes but the model has {spec.num_classes}")
        if spec.class_names is None:
            spec.class_names = [str(c) for c in facts.class_names]
        elif spec.class_names != [str(c) for c in facts.class_names]:
            i = next(i for i, (a, b) in enumerate(zip(spec.class_names, facts.class_names)) if a != str(b))
            raise BadInput(f"{where}: teacher.class_names differ from {facts.origin}: class {i} is {spec.class_names[i]!r} "
                           f"in the recipe but {facts.class_names[i]!r} in the model")


def complete_teacher(recipe: "Recipe", where: str) -> None:
    t = recipe.teacher
    complete_teacher_spec(t, recipe.resolve(t.weights) if t.weights is not None else None, where)


# ---- loading ---------------------------------------------------------------------------------------------


def load_teacher_model(spec: "TeacherSpec", weights: Path | None, search_path: Path | None = None) -> nn.Module:
    """The frozen teacher in eval mode, checked to map the recipe's input to num_classes logits."""
    if spec.input is None or spec.num_classes is None:
        complete_teacher_spec(spec, weights, "teacher")
    if spec.arch == "onnx":
        model: nn.Module = OnnxTeacher(weights, spec.feature_layer)
    elif spec.arch == "torchscript":
        if sniff_file(weights) != "torchscript":
            raise BadInput(f"{weights}: arch torchscript, but this is not a TorchScript archive (it looks like {sniff_file(weights)})")
        model = TorchScriptTeacher(weights)
    elif spec.arch == "pickle":
        model = load_pickled_model(weights, spec.trust_checkpoint)
    elif spec.pretrained is not None:
        model = pretrained_model(spec.arch, spec.pretrained)
    else:
        if weights is None:
            raise BadInput("teacher.weights: a teacher needs its trained weights: a .safetensors or .pth state dict "
                           "(or pretrained: NAME for torchvision/timm)")
        model = create_model(spec.arch, spec.num_classes, spec.input.channels, spec.input.size, search_path)
        load_weights(model, weights, spec.trust_checkpoint)
    model.eval()
    if spec.feature_layer is not None:
        resolve_feature_layer(model, spec.feature_layer, "teacher.feature_layer")
    set_feature_layer(model, spec.feature_layer)
    return check_model_runs(model, spec.input, spec.num_classes, "teacher")
