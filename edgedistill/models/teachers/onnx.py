"""ONNX teachers, run by ONNX Runtime: input (layout, element type, shape), classes and the class-score output read
from the file through onnx_info, the tensor the feature loss needs exposed as an extra output, and the model fed what
its vendor meant (raw integer pixels, channels-last) while the rest of edgedistill feeds normalized float NCHW."""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ...errors import BadInput, did_you_mean
from ..checkpoint import sniff_file
from ..features import ExternalModel
from ..onnx_info import OnnxInfo, load_model, onnx_info
from .base import FORMATS, SourceFacts, TeacherFormat

if TYPE_CHECKING:
    from ...config.schema import TeacherSpec

log = logging.getLogger("edgedistill")

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

SCORE_NAMES = ("logit", "score", "prob", "pred", "class", "output")  # output names that say "class scores"


def _dims(value_info: Any) -> list[int | None]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]


def _listed(value: Any) -> list | None:
    return value if isinstance(value, list) and value else None


def _shape(dims: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("N" if i == 0 and d is None else str(d or "?") for i, d in enumerate(dims)) + "]"


@lru_cache(maxsize=1)
def ort_max_opset() -> int | None:
    """The newest ai.onnx opset this onnxruntime knows: its newest operator schema's version."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

        return max(s.since_version for s in ort_c.get_all_operator_schema() if s.domain in ("", "ai.onnx"))
    except Exception:  # a build without schemas: say nothing rather than guess
        return None


def _runtime_says(info: OnnxInfo, operator: str | None = None, max_opset: int | None = None) -> str:
    """One line for a model this onnxruntime cannot run: the model, its opset, what the runtime supports, the fix."""
    import onnxruntime as ort

    max_opset = max_opset or ort_max_opset()
    supports = f"supports ONNX opsets up to {max_opset}" if max_opset else "cannot run it"
    lower = f"opset_version={max_opset} or lower" if max_opset else "a lower opset"
    what = f" and uses operator {operator}, which this onnxruntime {ort.__version__} cannot run (it {supports})" if operator else ""
    what = what or f", but this onnxruntime {ort.__version__} {supports}"
    fix = f"re-export it with standard operators ({lower})" if operator else f"re-export the model with {lower}"
    return f"{info.path.name} declares ONNX opset {info.opset}{what}; {fix}, or upgrade onnxruntime (pip install -U onnxruntime)"


def choose_output(info: OnnxInfo, spec: TeacherSpec) -> tuple[str, str | None]:
    """The output holding the class scores and, where there were several to choose from, a line saying which.

    teacher.output names it; otherwise the first (batch, classes) output, preferring one whose class count the recipe
    gives, then one made by a Softmax, then one named like scores (a feature vector often comes first)."""
    names = [name for name, _ in info.outputs]
    listing = ", ".join(f"{name} {_shape(dims)}" for name, dims in info.outputs)
    if spec.output is not None:
        if spec.output not in names:
            raise BadInput(
                f"teacher.output: {info.path.name} has no output {spec.output!r}; its outputs: {listing}{did_you_mean(spec.output, names)}"
            )
        return spec.output, None
    if len(names) == 1:
        return names[0], None
    scores = [name for name, dims in info.outputs if len(dims) == 2 and dims[1] != 1] or names
    count = spec.num_classes or (len(spec.class_names) if spec.class_names else None)
    count = count or (len(info.metadata["class_names"]) if _listed(info.metadata.get("class_names")) else None)
    preferences = (
        [n for n in scores if count and info.output_dims(n)[1:] == (count,)],
        [n for n in scores if n in info.scores_before_softmax],
        [n for n in scores if any(word in n.lower() for word in SCORE_NAMES)],
        scores,
    )
    name = next(group[0] for group in preferences if group)
    note = f"{info.path.name}: took output {name!r} as the class scores, of {listing}; set teacher.output to choose another"
    return name, note


class OnnxGraph:
    """The parts of an ONNX classifier edgedistill uses: image input, class-score tensor, penultimate tensor."""

    def __init__(self, proto: Any, info: OnnxInfo, output: str):
        graph = proto.graph
        self.path = info.path
        initializers = {i.name for i in graph.initializer}
        self.inputs = [i for i in graph.input if i.name not in initializers]
        if len(self.inputs) != 1:
            raise BadInput(f"{self.path}: an ONNX teacher needs exactly one image input, it has {[i.name for i in self.inputs]}")
        self.input = self.inputs[0]
        self.producer = {out: node for node in graph.node for out in node.output}
        self.initializers = initializers
        self.tensor_names = [out for node in graph.node for out in node.output if out]
        self.node_outputs = {node.name: node.output[0] for node in graph.node if node.name and node.output}
        self.output = output
        self.logits = info.scores_before_softmax.get(output, output)
        if self.logits != output:
            log.info("%s: output %s is made by a Softmax; distilling from the scores it reads, the logits", self.path.name, output)
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


def onnx_facts(info: OnnxInfo, spec: TeacherSpec) -> SourceFacts:
    """What the file says of its input (shape, layout, element type, mean/std metadata) and of its classes."""
    output, note = choose_output(info, spec)
    names = [name for name, _ in info.outputs]
    several = len(names) > 1
    facts = SourceFacts(f"{info.path.name}{f' output {output!r}' if several else ''} (its input shape and metadata)")
    facts.notes = [note] if note else []
    if several:
        facts.output_hint = f"; set teacher.output to one of {', '.join(names)}"
    info.one_input("an ONNX teacher")
    dims = info.input_dims
    if len(dims) != 4:
        raise BadInput(f"{info.path}: input {info.input_name!r} has shape {list(dims)}; an image classifier takes NCHW or NHWC")
    facts.layout = info.layout
    facts.channels, height, width = info.image_dims
    if height and width:
        if height != width:
            raise BadInput(f"{info.path}: input is {height}x{width} ({facts.layout}); edgedistill supports square inputs only")
        facts.size = height
    if facts.layout == "NHWC":
        facts.notes.append(f"{info.path.name}: input {info.input_name} is channels-last {_shape(dims)}; the teacher transposes NCHW to it")
    scale = info.metadata.get("input_scale")
    if info.integer_input:
        facts.defaults = {"mean": [0.0] * (facts.channels or 1), "std": [1.0] * (facts.channels or 1)}
        facts.notes.append(
            f"{info.path.name}: input {info.input_name} is {info.integer_input}: the model takes raw integer pixels "
            "(0-255), so normalization is skipped for the teacher; teacher.input mean/std apply to the student only"
        )
    elif scale is not None and scale != "1/255":
        raise BadInput(f"{info.path}: metadata input_scale is {scale!r}; edgedistill feeds pixels scaled by 1/255")
    facts.mean, facts.std = _listed(info.metadata.get("mean")), _listed(info.metadata.get("std"))
    facts.class_names = _listed(info.metadata.get("class_names"))
    out_dims = info.output_dims(output)
    if out_dims and out_dims[-1]:
        facts.num_classes = out_dims[-1]
    max_opset = ort_max_opset() if info.opset else None
    if max_opset and info.opset > max_opset:
        raise BadInput(_runtime_says(info, None, max_opset))
    return facts


def onnx_np_dtype(elem_type: int | None) -> np.dtype:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type or onnx.TensorProto.FLOAT)


class OnnxTeacher(ExternalModel):
    """An ONNX classifier run by ONNX Runtime; the tensor the feature loss needs becomes an extra graph output.

    edgedistill feeds every teacher normalized float NCHW; this wrapper turns that into what the file takes: raw
    integer pixels for an integer input, channels-last for an NHWC input, and log-probabilities for a model whose
    output turns out to be probabilities (so softmax at any temperature and argmax downstream stay right)."""

    def __init__(
        self,
        path: Path,
        feature_layer: str | None = None,
        output: str | None = None,
        normalization: tuple[list[float], list[float]] | None = None,
    ):
        super().__init__()
        self.path = Path(path)
        self.info = onnx_info(self.path)
        self._proto = load_model(self.path)
        self.graph = OnnxGraph(self._proto, self.info, output or self.info.outputs[0][0])
        self._types = self._tensor_types()
        self.fixed_batch = self.info.batch
        self.input_dtype = onnx_np_dtype(self.info.input_elem_type)
        self.channels_last = self.info.layout == "NHWC"
        self.raw_pixels = self.info.integer_input is not None
        mean, std = normalization or ([0.0], [1.0])
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.probabilities: bool | None = False if self.graph.logits != self.graph.output else None  # None: first batch says
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
                raise BadInput(self._cannot_load(str(exc))) from None
        return self._session

    def _cannot_load(self, error: str) -> str:
        """ORT's long error as one line: an opset or operator it lacks says what it supports and how to fix it."""
        newest = re.search(r"is till opset (\d+)", error)
        if newest or re.search(r"[Oo]pset \d+ is under development", error):
            return _runtime_says(self.info, None, int(newest.group(1)) if newest else None)
        op = re.search(r"No Op registered for (\w+)|Could not find an implementation for (\w+)", error)
        if op:
            return _runtime_says(self.info, op.group(1) or op.group(2))
        first = (error.strip().splitlines() or [""])[0]
        return f"{self.path}: ONNX Runtime cannot load it (opset {self.info.opset}: {first})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session()
        device, x = x.device, x.detach().to("cpu", torch.float32)
        if self.raw_pixels:  # undo edgedistill's normalization: the model takes the pixels themselves
            x = ((x * self._std + self._mean) * 255).round().clamp(0, 255) - (128 if self.input_dtype == np.int8 else 0)
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        batch = x.contiguous().numpy().astype(self.input_dtype, copy=False)
        names = self._output_names()
        step = self.fixed_batch or max(1, len(batch))
        parts = []
        for start in range(0, max(1, len(batch)), step):
            chunk = batch[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append([out[:n] for out in session.run(names, {self.graph.input.name: chunk})])
        outputs = [torch.from_numpy(np.concatenate(column)).float().to(device) for column in zip(*parts)]
        logits = self._as_logits(outputs[0])
        if self.feature_sink is not None:
            self.feature_sink(outputs[1] if len(outputs) > 1 else logits)
        return logits

    def _as_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores read before a Softmax come flat; probabilities (told by the first batch: non-negative rows summing
        to 1) become log-probabilities, which softmax maps back to the same probabilities."""
        if self.graph.logits != self.graph.output and scores.ndim > 2:
            scores = scores.reshape(len(scores), -1)
        if self.probabilities is None and len(scores) and scores.ndim == 2:
            self.probabilities = bool((scores >= 0).all() and ((scores.sum(1) - 1).abs() <= 1e-3).all())
            if self.probabilities:
                log.info(
                    "%s: output %s holds probabilities; the teacher returns their logarithm as logits", self.path.name, self.graph.output
                )
        return scores.clamp_min(1e-12).log() if self.probabilities else scores


@FORMATS.register("onnx")
class OnnxFormat(TeacherFormat):
    description = "an ONNX model file"
    named_outputs = True
    runtime = "onnxruntime"

    def files(self, weights: Path) -> tuple[Path, ...]:
        return tuple(onnx_info(weights).files)  # with its external data

    def onnx_file(self, weights: Path | None) -> Path | None:
        return weights

    def facts(self, spec: TeacherSpec, weights: Path | None) -> SourceFacts:
        if sniff_file(weights) != "onnx":
            raise BadInput(f"{weights}: arch onnx, but this is not an ONNX model (it looks like {sniff_file(weights)})")
        return onnx_facts(onnx_info(weights), spec)

    def load(self, spec: TeacherSpec, weights: Path | None, search_path: Path | None) -> nn.Module:
        info = onnx_info(weights)
        for note in onnx_facts(info, spec).notes:  # told once, when the teacher is loaded into a run
            log.info("%s", note)
        output, _ = choose_output(info, spec)
        normalization = (spec.input.mean, spec.input.std) if info.integer_input and spec.input and spec.input.mean else None
        return OnnxTeacher(weights, spec.feature_layer, output, normalization)
