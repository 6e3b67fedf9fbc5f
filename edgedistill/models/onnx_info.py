"""The one ONNX reader: what edgedistill needs of a model file (image input, outputs, opset, metadata, Q/DQ nodes,
size and digest), read once per file and remembered until the file changes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import BadInput

FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx to say so
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


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
        return self.input_dims[1], self.input_dims[2], self.input_dims[3]

    def num_classes(self) -> int | None:
        """The class count of a (N, classes) first output, None when it is not that."""
        dims = self.outputs[0][1] if self.outputs else ()
        return dims[1] if len(dims) == 2 and dims[1] else None


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
    )
