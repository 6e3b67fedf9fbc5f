"""ONNX teachers, run by ONNX Runtime: input and classes read from the graph and its metadata, and the tensor the
feature loss needs exposed as an extra output."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import BadInput, did_you_mean
from ..checkpoint import sniff_file
from ..features import ExternalModel
from .base import FORMATS, SourceFacts, TeacherFormat

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec

log = logging.getLogger("edgedistill")

PROBABILITY_OPS = ("Softmax", "LogSoftmax")

CLASSIFIER_OPS = ("Gemm", "MatMul", "Conv")

PASS_THROUGH_OPS = (
    "Add",
    "Identity",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "GlobalAveragePool",
    "ReduceMean",
    "Relu",
    "Dropout",
    "Cast",
)


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
            raise BadInput(
                f"teacher.feature_layer: {self.path.name} has no tensor {layer!r}"
                f"{did_you_mean(layer, self.graph.tensor_names) or '; tensors include ' + ', '.join(self.graph.tensor_names[-4:])}"
            )
        if name != self.feature_name:
            self.feature_name, self._session = name, None

    def parameter_count(self) -> int:
        return sum(math.prod(init.dims) for init in self._proto.graph.initializer)

    def feature_description(self) -> str:
        return f"ONNX tensor {self.feature_name}" if self.feature_name else "logits (no classifier input found)"

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
            chunk = batch[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([out[:n] for out in session.run(names, {self.graph.input.name: chunk})])
        outputs = [torch.from_numpy(np.concatenate(column)).float().to(x.device) for column in zip(*parts)]
        logits = outputs[0]
        if self.feature_sink is not None:
            self.feature_sink(outputs[1] if len(outputs) > 1 else logits)
        return logits


@FORMATS.register("onnx")
class OnnxFormat(TeacherFormat):
    description = "an ONNX model file"

    def facts(self, spec: TeacherSpec, weights: Path | None) -> SourceFacts:
        if sniff_file(weights) != "onnx":
            raise BadInput(f"{weights}: arch onnx, but this is not an ONNX model (it looks like {sniff_file(weights)})")
        return OnnxGraph(_load_onnx(weights, external_data=False), weights).facts()

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        return OnnxTeacher(weights, spec.feature_layer)
