"""The one ONNX reader: what edgedistill needs of a model file (image input, outputs, opset, metadata, Q/DQ nodes,
size and digest), read once per file and remembered until the file changes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import BadInput

FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx to say so
INTEGERS = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 12: "uint32", 13: "uint64"}  # TensorProto
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
PROBABILITY_OPS = ("Softmax", "LogSoftmax")
SHAPE_OPS = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze")  # move no values between elements


@dataclass(frozen=True)
class OnnxInfo:
    path: Path
    inputs: tuple[str, ...]  # fed at run time (initializers left out)
    input_dims: tuple[int | None, ...]  # of the first input; None where dynamic
    input_elem_type: int
    outputs: tuple[tuple[str, tuple[int | None, ...]], ...]
    opset: int
    metadata: dict  # metadata_props; edgedistill's mean/std/class_names JSON-decoded
    quantized: bool  # holds Q/DQ nodes
    files: tuple[Path, ...]  # the model and its external-data files
    scores_before_softmax: dict = field(default_factory=dict)  # output -> the tensor its (Log)Softmax reads
    _digest: list = field(default_factory=list, compare=False, repr=False)

    @property
    def input_name(self) -> str:
        return self.inputs[0]

    @property
    def batch(self) -> int | None:
        """The fixed batch size, or None for a dynamic batch axis."""
        return self.input_dims[0] if self.input_dims else None

    @property
    def item_shape(self) -> tuple[int | None, ...]:
        return self.input_dims[1:]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.is_file())

    def digest(self) -> str:
        """sha256 of the model file and its external-data files, so re-exported weights miss an engine cache."""
        if not self._digest:
            h = hashlib.sha256()
            for file in self.files:
                with open(file, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
            self._digest.append(h.hexdigest())
        return self._digest[0]

    @property
    def layout(self) -> str:
        """NHWC or NCHW: the metadata's input_layout where it says, else the shape: a last axis of 1 or 3 after two
        equal sides is channels-last (TensorFlow's and many vendor exporters' habit), anything else channels-first."""
        said = str(self.metadata.get("input_layout", "")).upper()
        if said in ("NCHW", "NHWC"):
            return said
        d = self.input_dims
        return "NHWC" if len(d) == 4 and d[3] in (1, 3) and d[1] == d[2] and d[1] not in (1, 3) else "NCHW"

    @property
    def image_dims(self) -> tuple[int | None, int | None, int | None]:
        """(channels, height, width) of a rank-4 input in either layout; dynamic sizes are None."""
        d = self.input_dims
        return (d[3], d[1], d[2]) if self.layout == "NHWC" else (d[1], d[2], d[3])

    @property
    def integer_input(self) -> str | None:
        """The integer type (uint8, ...) of an input that takes raw pixels, None for a float input."""
        return INTEGERS.get(self.input_elem_type)

    def output_dims(self, name: str) -> tuple[int | None, ...]:
        return dict(self.outputs)[name]

    def one_input(self, what: str) -> OnnxInfo:
        if len(self.inputs) != 1:
            raise BadInput(f"{self.path}: {what} needs a model with one input, it has {len(self.inputs)} ({', '.join(self.inputs)})")
        return self

    def fixed_item(self, what: str) -> tuple[int, ...]:
        """The input's sizes after the batch axis, which must all be fixed."""
        item = self.one_input(what).item_shape
        if not item or any(d is None for d in item):
            raise BadInput(f"{self.path}: input {self.input_name} needs fixed sizes after the batch axis, got {item}")
        return item  # type: ignore[return-value]

    def image_input(self, what: str) -> tuple[int | None, int | None, int | None]:
        """(channels, height, width) of a single float NCHW image input; dynamic sizes are None."""
        self.one_input(what)
        if self.input_elem_type != FLOAT:
            import onnx

            kind = onnx.TensorProto.DataType.Name(self.input_elem_type) if self.input_elem_type else "not a tensor"
            raise BadInput(f"{self.path} input {self.input_name!r} is {kind}; {what} needs a float32 image input")
        if len(self.input_dims) != 4:
            raise BadInput(f"{self.path} input {self.input_name!r} has rank {len(self.input_dims)}; expected an image input (N, C, H, W)")
        if self.layout == "NHWC":
            raise BadInput(
                f"{self.path} input {self.input_name!r} is channels-last (N, H, W, C) {list(self.input_dims)}; "
                f"{what} needs (N, C, H, W): re-export it channels-first"
            )
        return self.input_dims[1], self.input_dims[2], self.input_dims[3]

    def num_classes(self) -> int | None:
        """The class count of a (N, classes) first output, None when it is not that."""
        dims = self.outputs[0][1] if self.outputs else ()
        return dims[1] if len(dims) == 2 and dims[1] else None


def load_model(path: Path | str, external_data: bool = True) -> Any:
    """The whole ModelProto, weights included, for the callers that run or rewrite the graph (read through onnx_info
    first, so a missing external-data file or a file that is not ONNX is already one line)."""
    import onnx

    info = onnx_info(path)
    try:
        return onnx.load(str(info.path), load_external_data=external_data)
    except Exception as exc:  # protobuf's DecodeError, a truncated external-data file
        raise BadInput(f"{info.path} is not a readable ONNX model ({type(exc).__name__}); pass an .onnx file") from None


def onnx_info(path: Path | str) -> OnnxInfo:
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"ONNX model {path} does not exist")
    stat = path.stat()
    return _read(path, stat.st_size, stat.st_mtime_ns)


def _dims(value_info) -> tuple[int | None, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value_info.type.tensor_type.shape.dim)


@lru_cache(maxsize=64)
def _read(path: Path, size: int, mtime_ns: int) -> OnnxInfo:
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BadInput(f"{path} is not a readable ONNX model ({type(exc).__name__}); pass an .onnx file") from None
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]  # old exporters list initializers as inputs too
    if not graph.node or not inputs:
        raise BadInput(f"{path} is not an ONNX model (no graph nodes or inputs); pass an .onnx file")
    metadata = {p.key: p.value for p in proto.metadata_props}
    for key in ("mean", "std", "class_names"):
        if key in metadata:
            try:
                metadata[key] = json.loads(metadata[key])
            except json.JSONDecodeError:
                del metadata[key]
    external = sorted(
        {path.parent / e.value for t in graph.initializer if uses_external_data(t) for e in t.external_data if e.key == "location"}
    )
    missing = [f for f in external if not f.is_file()]
    if missing:
        raise BadInput(
            f"{path}: its weights are in the external-data file {missing[0].name}, which is missing from {path.parent}; "
            f"keep it beside {path.name} (copy or move the two together)"
        )
    return OnnxInfo(
        path=path,
        inputs=tuple(i.name for i in inputs),
        input_dims=_dims(inputs[0]),
        input_elem_type=inputs[0].type.tensor_type.elem_type,
        outputs=tuple((o.name, _dims(o)) for o in graph.output),
        opset=max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0),
        metadata=metadata,
        quantized=any(n.op_type in QDQ_OPS for n in graph.node),
        files=(path, *external),
        scores_before_softmax=_scores_before_softmax(graph),
    )


def _scores_before_softmax(graph: Any) -> dict[str, str]:
    """For each output made by Softmax or LogSoftmax through shape-only ops, the tensor the (Log)Softmax reads: the
    class scores, holding the same values in the same order, so reading it flat gives the logits."""
    producer = {out: node for node in graph.node for out in node.output}
    found = {}
    for output in graph.output:
        node = producer.get(output.name)
        for _ in range(8):
            if node is None or node.op_type not in SHAPE_OPS:
                break
            node = producer.get(node.input[0])
        if node is not None and node.op_type in PROBABILITY_OPS:
            found[output.name] = node.input[0]
    return found
